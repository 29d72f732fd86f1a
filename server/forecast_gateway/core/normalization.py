"""Per-series normalization: the one rule shared by the gateway and model training.

Each series is cut to the model's window (its most recent `window` points) and
z-scored with the mean and standard deviation of that window; the model
forecasts in z units and the gateway maps the forecast back to the series'
units. The LSTM weights are trained on windows normalized by this very module
(`training/`), so serving and training cannot drift apart.

Rows are independent: every function takes a 2-D array of shape
(series, points) so a batch is normalized in one vectorized call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecast_gateway.numerics import CONSTANT_RELATIVE_STD, FloatArray


@dataclass(frozen=True)
class Scaling:
    """The mean and standard deviation used for each row; needed to denormalize."""

    mean: FloatArray
    std: FloatArray


def fit_window(history: FloatArray, window: int) -> FloatArray:
    """Return the last `window` points of a 1-D history (oldest first).

    Older points are dropped so that every request for a model version has the
    same shape and Triton's dynamic batcher can group them. A history shorter
    than the window is the caller's error: validation rejects it before this.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if history.shape[0] < window:
        raise ValueError(f"history has {history.shape[0]} points, the window needs {window}")
    return history[-window:]


def normalize(windows: FloatArray) -> tuple[npt.NDArray[np.float32], Scaling]:
    """Z-score each row of `windows` (shape: series x points) by its own mean and std.

    Returns float32 values (the models' input type) and the scaling to undo it.
    A constant row maps to zeros and keeps a tiny std (a relative floor), so
    nothing divides by zero and whatever the model answers in z units maps
    back to (almost exactly) the constant: a flat series has no scale from
    which a model could invent movement.
    """
    rows = np.asarray(windows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[1] == 0:
        raise ValueError(f"expected a non-empty 2-D array, got shape {rows.shape}")
    # The ufuncs that rows.mean() and rows.std() run, called directly: the
    # same values to the bit, without their Python wrappers (most of the
    # cost for one short window; docs/benchmarks.md).
    count = rows.shape[1]
    mean = np.add.reduce(rows, axis=1) / count
    centered = rows - mean[:, None]
    std = np.sqrt(np.add.reduce(centered * centered, axis=1) / count)
    floor = CONSTANT_RELATIVE_STD * np.maximum(1.0, np.abs(mean))
    constant = std <= floor
    std = np.maximum(std, floor)
    z = centered / std[:, None]
    if constant.any():
        z[constant] = 0.0
    return z.astype(np.float32), Scaling(mean=mean, std=std)


def denormalize(values: npt.ArrayLike, scaling: Scaling) -> FloatArray:
    """Map model outputs (z units) back to each series' units.

    Outputs are series x steps, or series x steps x levels (quantile models).
    """
    z = np.asarray(values, dtype=np.float64)
    if z.ndim not in (2, 3) or z.shape[0] != scaling.mean.shape[0]:
        raise ValueError(f"expected {scaling.mean.shape[0]} rows, got shape {z.shape}")
    if z.ndim == 3:
        return z * scaling.std[:, None, None] + scaling.mean[:, None, None]  # type: ignore[no-any-return]
    result: FloatArray = z * scaling.std[:, None] + scaling.mean[:, None]
    return result
