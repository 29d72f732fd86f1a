"""A request's time: its fields as given, the grid it lands on, the fill it asked for.

`on_grid` turns a series with time into a regular series: `timestamps`
with gaps become NaN at the missing grid points, so every later stage
(validation, the window, normalization) sees one point per grid step.
Requests without time pass through untouched.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np

from forecast_gateway.numerics import FloatArray
from forecast_gateway.timegrid import (
    OUT_OF_RANGE,
    RANGE,
    Instants,
    TimeError,
    check_range,
    format_instant,
    lay_on_grid,
    parse_frequency,
)


class Fill(enum.Enum):
    """How missing points are filled (NONE: a missing point in the window is an error)."""

    NONE = "none"
    LINEAR = "linear"
    PREVIOUS = "previous"
    ZERO = "zero"


@dataclass(frozen=True)
class TimeInput:
    """The time fields of a request, as given (instants in ns, UTC)."""

    start: int | None = None
    frequency: str = ""
    timestamps: Instants | None = None


@dataclass(frozen=True)
class Axis:
    """The grid a series lies on: the instant of its point 0 and the frequency."""

    start: int | None
    """None when the request gave a frequency but no time."""
    frequency: str

    def forecast_times(self, points: int, horizon: int) -> Instants | None:
        """The instants of `horizon` steps after a series of `points` grid points."""
        if self.start is None:
            return None
        frequency = parse_frequency(self.frequency)
        return frequency.points(frequency.shift(self.start, points), horizon)


def on_grid(history: FloatArray, time: TimeInput, max_length: int) -> tuple[FloatArray, Axis]:
    """The history on its grid (NaN at missing grid points) and the grid; TimeError if wrong."""
    if time.start is not None and time.timestamps is not None:
        raise TimeError("timestamps", "set start or timestamps, not both")
    if time.timestamps is None:
        return history, _from_start(time)
    stamps = time.timestamps
    if stamps.shape[0] != history.shape[0]:
        raise TimeError(
            "timestamps",
            f"{stamps.shape[0]} timestamps for {history.shape[0]} history points; "
            "send one per point",
        )
    if stamps.shape[0] == 0:
        return history, Axis(None, time.frequency)
    check_range("timestamps", stamps)
    grid = lay_on_grid(stamps, time.frequency, max_length)
    axis = Axis(grid.start_ns, grid.frequency)
    if grid.length == history.shape[0]:
        return history, axis
    laid = np.full(grid.length, np.nan)
    laid[grid.positions] = history
    return laid, axis


def _from_start(time: TimeInput) -> Axis:
    """The grid of a regular series: its start (if any) on the frequency's grid."""
    if time.frequency:
        parse_frequency(time.frequency)
    if time.start is None:
        return Axis(None, time.frequency)
    if not time.frequency:
        raise TimeError("frequency", "frequency is required with start, e.g. 'D' or 'MS'")
    if time.start == OUT_OF_RANGE:
        raise TimeError("start", f"start is outside the supported range ({RANGE})")
    if not parse_frequency(time.frequency).on_grid(time.start):
        raise TimeError(
            "start",
            f"start {format_instant(time.start)} is not on the grid of frequency "
            f"{time.frequency!r} (e.g. 'MS' starts on the 1st, 'W-SUN' on Sundays)",
        )
    return Axis(time.start, time.frequency)
