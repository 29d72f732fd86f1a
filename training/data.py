"""The co2 series (statsmodels, weekly 1958-2001, shipped in the wheel: offline) and its split."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

SEASON = 52  # weeks per year: the seasonal period of co2
TRAIN_FRACTION = 0.8


@cache
def _co2_frame() -> Any:
    from statsmodels.datasets import co2

    frame = co2.load_pandas().data
    return frame["co2"].interpolate()


def load_co2() -> npt.NDArray[np.float64]:
    """Weekly Mauna Loa CO2 (ppm), 2,284 points oldest first; the 59 gaps linearly interpolated."""
    values = np.asarray(_co2_frame().to_numpy(), dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("co2 still has NaN after interpolation")
    return values


def load_co2_dates() -> npt.NDArray[np.datetime64]:
    """The week (a date) of each point of `load_co2`."""
    return np.asarray(_co2_frame().index.to_numpy(), dtype="datetime64[D]")


def train_size(length: int, fraction: float = TRAIN_FRACTION) -> int:
    """Number of points in the training part of a series of `length` points."""
    return int(length * fraction)


def train_test_split(
    series: npt.NDArray[np.float64], fraction: float = TRAIN_FRACTION
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Split chronologically: the first `fraction` of the points to train on, the rest to test."""
    cut = train_size(series.shape[0], fraction)
    return series[:cut], series[cut:]
