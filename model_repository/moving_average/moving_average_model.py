"""Triton models for moving_average: version 1 is a simple moving average, version 2 is SES."""

from __future__ import annotations

from typing import Any

import numpy as np
from forecast_backend import BatchForecaster, FloatArray
from smoothing import exponential_smoothing, simple_moving_average


class SimpleMovingAverageModel(BatchForecaster):
    """Each forecast step is the mean of the whole window the request sent."""

    def predict(self, windows: FloatArray, horizon: int) -> np.ndarray[Any, Any]:
        return simple_moving_average(windows, horizon)


class ExponentialSmoothingModel(BatchForecaster):
    """Simple exponential smoothing over the window; the forecast is flat at the final level."""

    def setup(self, args: dict[str, str]) -> None:
        self.alpha = float(self.parameter("alpha", "0.3") or "0.3")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError(f"parameter 'alpha' must be in (0, 1], got {self.alpha}")

    def predict(self, windows: FloatArray, horizon: int) -> np.ndarray[Any, Any]:
        return exponential_smoothing(windows, horizon, self.alpha)
