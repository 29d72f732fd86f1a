"""Rolling-origin evaluation: MAE and MASE of a forecaster against naive baselines.

Every origin ``t`` of the test part is a forecast from the points before ``t``
of the ``h`` points from ``t`` on; MAE averages over all origins and steps.
MASE divides by the in-sample MAE of the seasonal-naive forecast on the
training part. Tests reuse `Backtest` and `z_forecaster` to score a model
served by Triton exactly as training scores it in-process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from forecast_gateway.core.normalization import denormalize, normalize
from training.data import SEASON

Series = npt.NDArray[np.float64]
# Forecasts `horizon` steps for each row of raw windows [N, window]: [N, horizon].
WindowForecaster = Callable[[Series, int], npt.NDArray[np.floating[Any]]]
# The same in z units: what a served model computes from normalized windows.
ZForecaster = Callable[[npt.NDArray[np.float32], int], npt.NDArray[np.floating[Any]]]


def z_forecaster(predict: ZForecaster) -> WindowForecaster:
    """Wrap a z-unit model: normalize each window as the gateway does, forecast, map back."""

    def forecast(windows: Series, horizon: int) -> Series:
        z, scaling = normalize(windows)
        return denormalize(predict(z, horizon), scaling)

    return forecast


def naive_forecast(windows: Series, horizon: int) -> Series:
    """Repeat each window's last value."""
    return np.repeat(windows[:, -1:], horizon, axis=1)


def seasonal_naive_scale(train: Series, season: int = SEASON) -> float:
    """In-sample MAE of the seasonal-naive forecast on the training part (the MASE scale)."""
    return float(np.mean(np.abs(train[season:] - train[:-season])))


@dataclass(frozen=True)
class Backtest:
    """The rolling origins of one horizon: histories before each origin, actuals after it."""

    series: Series
    origins: npt.NDArray[np.int64]
    horizon: int

    @classmethod
    def over_test_part(
        cls, series: Series, train_size: int, horizon: int, min_history: int = SEASON
    ) -> Backtest:
        """Every origin from the end of the training part on that has `horizon` actuals."""
        first = max(train_size, min_history)
        origins = np.arange(first, series.shape[0] - horizon + 1, dtype=np.int64)
        return cls(series=series, origins=origins, horizon=horizon)

    def subsample(self, every: int) -> Backtest:
        """Every `every`-th origin (faster checks)."""
        return Backtest(self.series, self.origins[::every], self.horizon)

    def windows(self, window: int) -> Series:
        """The `window` points before each origin: ``[origins, window]``."""
        if int(self.origins.min()) < window:
            raise ValueError(f"an origin has fewer than {window} points of history")
        return self.series[self.origins[:, None] + np.arange(-window, 0)]

    def actuals(self) -> Series:
        """The `horizon` points from each origin on: ``[origins, horizon]``."""
        return self.series[self.origins[:, None] + np.arange(self.horizon)]

    def mae(self, forecast: npt.ArrayLike) -> float:
        """Mean absolute error of a forecast ``[origins, horizon]`` over all origins and steps."""
        values = np.asarray(forecast, dtype=np.float64)
        if values.shape != (self.origins.shape[0], self.horizon):
            raise ValueError(f"forecast shape {values.shape} does not match the backtest")
        return float(np.mean(np.abs(values - self.actuals())))

    def score(self, forecaster: WindowForecaster, window: int) -> float:
        """MAE of `forecaster` fed the last `window` points before each origin."""
        return self.mae(forecaster(self.windows(window), self.horizon))

    def naive(self) -> Series:
        """The naive forecast (last value) at each origin."""
        return naive_forecast(self.windows(1), self.horizon)

    def seasonal_naive(self, season: int = SEASON) -> Series:
        """The seasonal-naive forecast: the value one season before each target."""
        if self.horizon > season:
            raise ValueError("seasonal naive needs horizon <= season")
        return self.windows(season)[:, : self.horizon]
