"""The time of a series: Python's, numpy's and pandas' times in, protobuf Timestamps out, and back.

A time (`start=`, each of `timestamps=`) may be:

- a `datetime`: naive is taken as UTC, aware is converted to UTC;
- a `date`: midnight UTC;
- a `numpy.datetime64`: UTC (numpy has no time zones);
- a `pandas.Timestamp`: as a datetime, nanoseconds kept;
- an ISO 8601 string: "2024-01-31", "2024-01-31T12:00", "2024-01-31T12:00:00+02:00", "...Z".

`timestamps=` may also be a numpy datetime64 array, a pandas DatetimeIndex or
a pandas Series of datetimes (converted without a Python loop). A history
that is a pandas Series with a DatetimeIndex carries its own times: the
index becomes `timestamps` and its frequency, if set, `frequency` (see
`series_fields`). Forecast timestamps come back as timezone-aware UTC
`datetime`s (microsecond precision).

numpy and pandas are never imported here: their values are recognized when
their module is already loaded (it must be, for the value to exist), so
the client works without them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from forecast.v1 import forecast_pb2

__all__ = [
    "FILL_METHODS",
    "TimeLike",
    "datetime_index",
    "fill_method",
    "from_timestamp",
    "history_values",
    "parse_time",
    "series_fields",
    "to_timestamp",
    "to_timestamps",
]

TimeLike = object
"""A datetime, date, numpy.datetime64, pandas.Timestamp or ISO 8601 string (see the module)."""

FILL_METHODS = {
    "linear": forecast_pb2.FILL_METHOD_LINEAR,
    "previous": forecast_pb2.FILL_METHOD_PREVIOUS,
    "zero": forecast_pb2.FILL_METHOD_ZERO,
}
"""The fill names the client takes, and the FillMethod each one is."""

_NS = 10**9
_EPOCH = datetime(1970, 1, 1)  # naive: times are made naive UTC before subtracting
_EPOCH_UTC = _EPOCH.replace(tzinfo=UTC)
_FINE_UNITS = frozenset({"ns", "ps", "fs", "as"})  # datetime64 units finer than a microsecond


def to_timestamp(value: TimeLike, field: str = "start") -> Timestamp:
    """Return `value` (see the module for the accepted types) as a protobuf Timestamp.

    Naive datetimes, numpy datetime64 and strings without an offset are UTC.
    Raises TypeError for another type, ValueError for NaT or an unreadable
    string; both messages start with `field`.
    """
    return _timestamp(_nanos(value, field))


def to_timestamps(values: Iterable[TimeLike], field: str = "timestamps") -> list[Timestamp]:
    """Return each time of `values` as a Timestamp, in order (errors name `field[i]`)."""
    vectorized = _vectorized_nanos(values, field)
    if vectorized is not None:
        return [_timestamp(n) for n in vectorized]
    return [_timestamp(_nanos(value, f"{field}[{i}]")) for i, value in enumerate(values)]


def from_timestamp(timestamp: Timestamp) -> datetime:
    """Return a Timestamp as a timezone-aware UTC datetime (nanoseconds cut to microseconds)."""
    return _EPOCH_UTC + timedelta(seconds=timestamp.seconds, microseconds=timestamp.nanos // 1000)


def parse_time(text: str, field: str = "start") -> datetime:
    """Parse an ISO 8601 date or date-time (no offset: UTC); a ValueError names `field`."""
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{field}: {text!r} is not an ISO 8601 date or time "
            "(e.g. 2024-01-31, 2024-01-31T12:00, 2024-01-31T12:00:00+02:00)"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def fill_method(value: str | int | None) -> int:
    """Return the FillMethod of "linear", "previous" or "zero" (any case), or of an enum value.

    None and "" are FILL_METHOD_UNSPECIFIED (no filling); the enum's full
    names ("FILL_METHOD_LINEAR") are accepted too. Raises ValueError listing
    the accepted names otherwise.
    """
    if value is None:
        return forecast_pb2.FILL_METHOD_UNSPECIFIED
    if isinstance(value, int) and not isinstance(value, bool):
        if value in forecast_pb2.FillMethod.values():
            return value
    elif isinstance(value, str):
        name = value.strip().lower().removeprefix("fill_method_")
        if name in ("", "unspecified"):
            return forecast_pb2.FILL_METHOD_UNSPECIFIED
        if name in FILL_METHODS:
            return FILL_METHODS[name]
    accepted = ", ".join(repr(name) for name in FILL_METHODS)
    raise ValueError(f"fill: {value!r} is not a fill method; use {accepted} or a FillMethod value")


def history_values(history: Iterable[float | None]) -> list[float]:
    """The history as floats; None (and pandas' NA) is NaN, a missing value."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(history, pandas.Series | pandas.Index):
        values: list[float] = history.to_numpy(dtype=float, na_value=math.nan).tolist()
        return values
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(history, numpy.ndarray):
        array: list[float] = history.astype(float).tolist()
        return array
    return [math.nan if value is None else float(value) for value in history]


def series_fields(
    history: Iterable[float | None],
    *,
    start: TimeLike | None = None,
    frequency: str | object = "",
    timestamps: Iterable[TimeLike] | None = None,
    fill: str | int | None = None,
) -> dict[str, Any]:
    """The history and time fields of a request message (ForecastRequest, Series, ...).

    A history that is a pandas Series with a DatetimeIndex gives its index as
    `timestamps` when neither `start` nor `timestamps` is given, and its
    index's frequency (e.g. "D", "W-SUN", "MS") when `frequency` is not.
    `frequency` is a pandas offset alias, or an offset object (its
    `freqstr` is sent). A request without time gets `history` only, as
    before time existed.
    """
    fields: dict[str, Any] = {"history": history_values(history)}
    index, index_frequency = datetime_index(history)
    if start is None and timestamps is None and index is not None:
        timestamps = index
    if not frequency and index_frequency:
        frequency = index_frequency
    if start is not None:
        fields["start"] = to_timestamp(start, "start")
    if timestamps is not None:
        fields["timestamps"] = to_timestamps(timestamps)
    if frequency:
        fields["frequency"] = _alias(frequency)
    if fill is not None:
        fields["fill"] = fill_method(fill)
    return fields


def datetime_index(history: object) -> tuple[Any, str]:
    """The DatetimeIndex of a pandas Series history and its frequency alias ("" if unset)."""
    pandas = sys.modules.get("pandas")
    if pandas is None or not isinstance(history, pandas.Series):
        return None, ""
    index = history.index
    if not isinstance(index, pandas.DatetimeIndex):
        return None, ""
    return index, index.freqstr or ""


def _alias(frequency: object) -> str:
    if isinstance(frequency, str):
        return frequency
    alias = getattr(frequency, "freqstr", None)  # a pandas offset, e.g. pd.offsets.MonthBegin()
    if not isinstance(alias, str):
        raise TypeError(f"frequency: expected a pandas offset alias such as 'D', got {frequency!r}")
    return alias


def _timestamp(nanos: int) -> Timestamp:
    return Timestamp(seconds=nanos // _NS, nanos=nanos % _NS)


def _nanos(value: object, field: str) -> int:
    """Nanoseconds since the Unix epoch (UTC) of one time."""
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.datetime64):
        if numpy.isnat(value):
            raise ValueError(f"{field}: NaT is not a time")
        return _datetime64_nanos(numpy.asarray([value]), field)[0]
    if isinstance(value, str):
        value = parse_time(value, field)
    if isinstance(value, datetime):
        return _datetime_nanos(value, field)
    if isinstance(value, date):
        return (value - _EPOCH.date()).days * 86_400 * _NS
    raise TypeError(
        f"{field}: expected a datetime, date, numpy.datetime64, pandas.Timestamp or "
        f"ISO 8601 string, got {type(value).__name__}"
    )


def _datetime_nanos(value: datetime, field: str) -> int:
    """A datetime (or pandas.Timestamp, with its nanoseconds) as UTC nanoseconds; naive = UTC."""
    if value != value:  # pandas.NaT, a datetime that equals nothing
        raise ValueError(f"{field}: NaT is not a time")
    extra = int(getattr(value, "nanosecond", 0))
    to_pydatetime = getattr(value, "to_pydatetime", None)
    if to_pydatetime is not None:
        value = to_pydatetime(warn=False)
    if value.utcoffset() is not None:
        value = value.astimezone(UTC)
    delta = value.replace(tzinfo=None) - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * _NS + delta.microseconds * 1000 + extra


def _vectorized_nanos(values: object, field: str) -> list[int] | None:
    """UTC nanoseconds of a numpy datetime64 array or pandas index/Series; None for others."""
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(values, pandas.Series | pandas.Index):
        try:
            index = pandas.DatetimeIndex(values)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{field}: not datetimes ({error})") from None
        if index.tz is not None:
            index = index.tz_convert("UTC").tz_localize(None)
        return _datetime64_nanos(index.to_numpy(), field)
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(values, numpy.ndarray) and values.dtype.kind == "M":
        return _datetime64_nanos(values, field)
    return None


def _datetime64_nanos(array: Any, field: str) -> list[int]:
    """Nanoseconds of a datetime64 array, exact for any unit (no int64 overflow for coarse ones)."""
    numpy = sys.modules["numpy"]
    missing = numpy.isnat(array)
    if missing.any():
        raise ValueError(f"{field}: NaT at position {int(missing.argmax())} is not a time")
    unit, _ = numpy.datetime_data(array.dtype)
    if unit in _FINE_UNITS:
        nanos: list[int] = array.astype("datetime64[ns]").astype(numpy.int64).tolist()
        return nanos
    micros: list[int] = array.astype("datetime64[us]").astype(numpy.int64).tolist()
    return [m * 1000 for m in micros]
