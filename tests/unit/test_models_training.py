"""Unit tests of training/: the co2 data, the training samples and the rolling-origin metrics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast_gateway.core.normalization import normalize

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.data import load_co2, train_size, train_test_split  # noqa: E402
from training.evaluate import (  # noqa: E402
    Backtest,
    naive_forecast,
    seasonal_naive_scale,
    z_forecaster,
)
from training.train_lstm import training_samples  # noqa: E402


def test_co2_is_complete_and_split_chronologically() -> None:
    series = load_co2()
    assert series.shape == (2284,)
    assert np.all(np.isfinite(series))
    train, test = train_test_split(series)
    assert train.shape[0] == train_size(series.shape[0]) == 1827
    np.testing.assert_array_equal(np.concatenate([train, test]), series)


def test_training_windows_use_the_gateway_normalization() -> None:
    series = np.cumsum(np.random.default_rng(0).normal(size=200)) + 100
    samples = training_samples(series, window=10, continuation=3)
    assert samples.shape == (200 - 13, 14)
    z, scaling = normalize(series[None, 5:15])
    np.testing.assert_allclose(samples[5, :10], z[0], rtol=1e-6)
    expected_next = (series[15:19] - scaling.mean[0]) / scaling.std[0]
    np.testing.assert_allclose(samples[5, 10:], expected_next, rtol=1e-5)


def test_backtest_origins_windows_and_actuals() -> None:
    series = np.arange(100, dtype=np.float64)
    backtest = Backtest.over_test_part(series, train_size=80, horizon=5, min_history=52)
    assert backtest.origins[0] == 80 and backtest.origins[-1] == 95
    np.testing.assert_array_equal(backtest.windows(3)[0], [77, 78, 79])
    np.testing.assert_array_equal(backtest.actuals()[-1], [95, 96, 97, 98, 99])
    np.testing.assert_array_equal(backtest.naive()[0], [79] * 5)
    np.testing.assert_array_equal(backtest.seasonal_naive(52)[0], [28, 29, 30, 31, 32])
    assert backtest.mae(backtest.actuals()) == 0
    assert backtest.score(naive_forecast, 1) == pytest.approx(3.0)  # mean of 1..5
    assert backtest.subsample(4).origins.tolist() == [80, 84, 88, 92]


def test_seasonal_naive_scale_of_a_pure_season_is_zero() -> None:
    season = np.tile(np.sin(np.arange(52)), 4)
    assert seasonal_naive_scale(season, 52) == pytest.approx(0.0, abs=1e-12)
    assert seasonal_naive_scale(np.arange(200.0), 52) == pytest.approx(52.0)


@given(st.floats(-1e3, 1e3), st.floats(0.1, 100), st.integers(1, 12))
def test_z_forecaster_maps_back_to_series_units(shift: float, scale: float, horizon: int) -> None:
    windows = np.array([[1.0, 3.0, 2.0, 4.0]]) * scale + shift
    forecast = z_forecaster(lambda z, h: np.repeat(z[:, -1:], h, axis=1))(windows, horizon)
    np.testing.assert_allclose(forecast, np.repeat(windows[:, -1:], horizon, axis=1), rtol=1e-5)


def test_co2_baselines_match_the_documented_numbers() -> None:
    """DATA.md: naive MAE 0.876 (h=5), seasonal naive 1.666 (h=12), MASE scale 1.227."""
    series = load_co2()
    cut = train_size(series.shape[0])
    assert seasonal_naive_scale(series[:cut]) == pytest.approx(1.227, abs=1e-3)
    h5 = Backtest.over_test_part(series, cut, 5)
    assert h5.mae(h5.naive()) == pytest.approx(0.876, abs=1e-3)
    h12 = Backtest.over_test_part(series, cut, 12)
    assert h12.mae(h12.seasonal_naive()) == pytest.approx(1.666, abs=1e-3)
