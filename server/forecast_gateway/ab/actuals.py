"""Checks of reported actuals: what can be rejected before and after reading the forecast."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forecast_gateway import timegrid
from forecast_gateway.errors import FieldViolation, InvalidArgument, NotFound
from forecast_gateway.numerics import FloatArray


def checked_actuals(
    forecast_id: str, actuals: Sequence[float], offset: int, start_ns: int | None = None
) -> FloatArray:
    """The actuals as float64, or InvalidArgument for what can be checked without the store.

    `start_ns`: the time of actuals[0] (ns since the epoch, UTC), in place of `offset`.
    """
    violations: list[FieldViolation] = []
    if start_ns is not None and offset != 0:
        violations.append(
            FieldViolation("start", f"give start or offset, not both (offset is {offset})")
        )
    if not forecast_id:
        violations.append(FieldViolation("forecast_id", "required"))
    values = np.asarray(actuals, dtype=np.float64).ravel()
    if values.size == 0:
        violations.append(FieldViolation("actuals", "must not be empty"))
    elif not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        violations.append(
            FieldViolation("actuals", f"must be finite; actuals[{bad}] is {values[bad]}")
        )
    if offset < 0:
        violations.append(FieldViolation("offset", f"must be >= 0, got {offset}"))
    if violations:
        raise InvalidArgument.of(violations)
    return values


def check_fit(count: int, offset: int, horizon: int) -> None:
    """InvalidArgument unless `count` actuals at `offset` lie within the forecast's horizon."""
    if offset >= horizon:
        raise InvalidArgument.of(
            [FieldViolation("offset", f"must be < the horizon ({horizon} steps), got {offset}")]
        )
    if offset + count > horizon:
        raise InvalidArgument.of(
            [
                FieldViolation(
                    "actuals",
                    f"{count} values at offset {offset} run past the horizon of {horizon} "
                    f"steps; at most {horizon - offset} fit",
                )
            ]
        )


def step_at(start_ns: int, first_ns: int | None, frequency: str, horizon: int) -> int:
    """The horizon step whose time is `start_ns`, or InvalidArgument naming `start`."""
    if first_ns is None or not frequency:
        raise InvalidArgument.of(
            [FieldViolation("start", "the forecast had no time: report by offset")]
        )
    times = timegrid.step_times(int(first_ns), frequency, horizon)
    [steps] = np.nonzero(times == start_ns)
    if steps.size == 0:
        first, last = (timegrid.format_instant(int(t)) for t in (times[0], times[-1]))
        given = (
            timegrid.format_instant(start_ns)
            if start_ns != timegrid.OUT_OF_RANGE
            else f"a time outside {timegrid.RANGE}"
        )
        raise InvalidArgument.of(
            [
                FieldViolation(
                    "start",
                    f"{given} is not one of the forecast's step "
                    f"times ({horizon} steps of {frequency} from {first} to {last})",
                )
            ]
        )
    return int(steps[0])


def merge(stored: FloatArray | None, horizon: int, actuals: FloatArray, offset: int) -> FloatArray:
    """The forecast's actuals after this report: later reports overwrite the same steps."""
    check_fit(actuals.size, offset, horizon)
    merged = np.full(horizon, np.nan) if stored is None else stored.copy()
    merged[offset : offset + actuals.size] = actuals
    return merged


def not_found(forecast_id: str) -> NotFound:
    """The error for an id the store does not hold (never recorded, pruned or expired)."""
    return NotFound(
        f"forecast {forecast_id!r} is unknown or has expired",
        reason="FORECAST_NOT_FOUND",
        metadata={"forecast_id": forecast_id},
    )
