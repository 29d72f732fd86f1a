"""The exported quantile_mlp graph in onnxruntime: shapes, order, scaling, edge series."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest

from training.quantile_network import HORIZON, LEVELS, WINDOW

MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "quantile_mlp"
Run = Callable[[npt.ArrayLike], tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]]


@pytest.fixture(scope="module")
def run() -> Run:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    session = onnxruntime.InferenceSession(
        str(MODEL / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
    )

    def forecast(history: npt.ArrayLike) -> tuple[Any, Any]:
        rows = np.asarray(history, dtype=np.float32).reshape(-1, WINDOW)
        median, quantiles = session.run(["FORECAST", "QUANTILES"], {"HISTORY": rows})
        return median, quantiles

    return forecast


def weekly_sales(rows: int = 3, seed: int = 0) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW)
    pattern = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.0])[t % 7]
    return rng.poisson(300 * pattern, (rows, WINDOW)).astype(np.float64)


def test_graph_has_the_declared_tensors() -> None:
    session = onnxruntime.InferenceSession(str(MODEL / "1" / "model.onnx"))
    (history,) = session.get_inputs()
    assert history.name == "HISTORY" and history.shape[1:] == [WINDOW]
    outputs = {o.name: o.shape[1:] for o in session.get_outputs()}
    assert outputs == {"FORECAST": [HORIZON], "QUANTILES": [HORIZON, len(LEVELS)]}
    config = (MODEL / "config.pbtxt").read_text()
    assert f"dims: [ {WINDOW} ]" in config and f"dims: [ {HORIZON}, {len(LEVELS)} ]" in config
    assert ",".join(f"{level:g}" for level in LEVELS) in config


@pytest.mark.parametrize("rows", [1, 7, 256])
def test_output_shapes(run: Run, rows: int) -> None:
    median, quantiles = run(np.random.default_rng(rows).normal(50, 5, (rows, WINDOW)))
    assert median.shape == (rows, HORIZON) and median.dtype == np.float32
    assert quantiles.shape == (rows, HORIZON, len(LEVELS))
    np.testing.assert_array_equal(median, quantiles[:, :, LEVELS.index(0.5)])


def test_quantiles_are_sorted(run: Run) -> None:
    rng = np.random.default_rng(1)
    histories = np.concatenate(
        [
            rng.normal(0, 1, (20, WINDOW)),
            np.cumsum(rng.normal(0, 3, (20, WINDOW)), axis=1) - 40,
            rng.standard_cauchy((20, WINDOW)) * 100,
            weekly_sales(20),
        ]
    )
    _, quantiles = run(histories)
    assert np.all(np.diff(quantiles, axis=2) >= 0)


def test_ten_times_the_series_gives_ten_times_the_forecast(run: Run) -> None:
    rng = np.random.default_rng(2)
    histories = np.concatenate([weekly_sales(3), rng.normal(-20, 4, (3, WINDOW))])
    _, base = run(histories)
    _, scaled = run(10 * histories)
    np.testing.assert_allclose(scaled, 10 * base, rtol=1e-4, atol=1e-3)


def test_positive_daily_sales_stay_sane(run: Run) -> None:
    histories = weekly_sales(8, seed=3)
    median, quantiles = run(histories)
    assert np.all(quantiles >= 0)
    assert np.all((median > 150) & (median < 600))
    assert np.all(quantiles[:, :, -1] < 1000)


@pytest.mark.parametrize("value", [0.0, 1.0, 300.0, -5.0, 1e6])
def test_constant_series_forecast_the_constant(run: Run, value: float) -> None:
    median, quantiles = run(np.full((1, WINDOW), value))
    assert np.all(np.isfinite(quantiles))
    np.testing.assert_allclose(median, value, rtol=1e-3, atol=1e-3)


def test_series_with_zeros_are_finite_and_not_negative(run: Run) -> None:
    rng = np.random.default_rng(4)
    intermittent = rng.poisson(0.3, (5, WINDOW)).astype(np.float64)
    one_spike = np.zeros((1, WINDOW))
    one_spike[0, 20] = 5.0
    _, quantiles = run(np.concatenate([intermittent, one_spike]))
    assert np.all(np.isfinite(quantiles)) and np.all(quantiles >= 0)
