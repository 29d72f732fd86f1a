"""Missing values of a window: found, named and filled by the request's method.

The window is the last `window` grid points; fills may look further back
(a linear fill across the window's first point uses the observed point
before it), so they take the whole history.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from forecast_gateway.core.timeline import Axis, Fill
from forecast_gateway.numerics import FloatArray
from forecast_gateway.timegrid import format_instant, parse_frequency

SHOWN = 3
"""Missing points a message names."""


def window_of(history: FloatArray, window: int, fill: Fill) -> tuple[FloatArray, int]:
    """The last `window` points with the missing ones filled, and how many were filled.

    Validation has made sure a window with missing points has a fill method
    and the history at least one observed value.
    """
    tail = history[-window:]
    missing = np.isnan(tail)
    count = int(np.count_nonzero(missing))
    if count == 0:
        return tail, 0
    if fill is Fill.ZERO:
        return np.where(missing, 0.0, tail), count
    start = history.shape[0] - window
    observed = np.flatnonzero(~np.isnan(history))
    if fill is Fill.LINEAR:  # np.interp holds the edge values outside the observed range
        positions = np.arange(start, history.shape[0])
        return np.interp(positions, observed, history[observed]), count
    if fill is Fill.PREVIOUS:
        seen = np.where(np.isnan(history), -1, np.arange(history.shape[0]))
        last = np.maximum.accumulate(seen)[start:]
        return history[np.where(last < 0, observed[0], last)], count
    raise ValueError(f"a window with missing points needs a fill method, got {fill}")


def missing_in_window(history: FloatArray, window: int) -> npt.NDArray[np.intp]:
    """Indices (into the history) of the missing points of the last `window`."""
    start = history.shape[0] - window
    return np.flatnonzero(np.isnan(history[start:])) + start


def describe_missing(indices: npt.NDArray[np.intp], axis: Axis | None) -> str:
    """The first few missing points, by time when the series has time, else by index."""
    first = [int(i) for i in indices[:SHOWN]]
    more = ", ..." if indices.shape[0] > SHOWN else ""
    if axis is None or axis.start is None:
        return "at index " + ", ".join(str(i) for i in first) + more
    frequency = parse_frequency(axis.frequency)
    times = [format_instant(frequency.shift(axis.start, i)) for i in first]
    return "at " + ", ".join(f"{t} (index {i})" for t, i in zip(times, first, strict=True)) + more
