"""Moving-average forecasts, vectorized over a batch of windows ``[B, T]`` (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def simple_moving_average(windows: npt.ArrayLike, horizon: int) -> npt.NDArray[np.float64]:
    """Forecast every step as the mean of the window: ``[B, horizon]``."""
    rows = _as_rows(windows)
    level = rows.mean(axis=1)
    return np.repeat(level[:, None], horizon, axis=1)


def exponential_smoothing_weights(length: int, alpha: float) -> npt.NDArray[np.float64]:
    """Weights (oldest first, summing to 1) giving the final level of simple exponential smoothing.

    The level starts at the first value and is updated ``l = alpha * x + (1 - alpha) * l``,
    so the final level is ``sum_i w_i x_i`` with ``w_i = alpha (1 - alpha)^(T - 1 - i)``
    for ``i >= 1`` and ``w_0 = (1 - alpha)^(T - 1)``.
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    ages = np.arange(length - 1, -1, -1, dtype=np.float64)
    weights = alpha * (1.0 - alpha) ** ages
    weights[0] = (1.0 - alpha) ** (length - 1)
    return weights


def exponential_smoothing(
    windows: npt.ArrayLike, horizon: int, alpha: float
) -> npt.NDArray[np.float64]:
    """Simple exponential smoothing: every step is the final smoothed level, ``[B, horizon]``."""
    rows = _as_rows(windows)
    level = rows @ exponential_smoothing_weights(rows.shape[1], alpha)
    return np.repeat(level[:, None], horizon, axis=1)


def _as_rows(windows: npt.ArrayLike) -> npt.NDArray[Any]:
    rows = np.asarray(windows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"expected windows of shape [batch, length >= 1], got {rows.shape}")
    return rows
