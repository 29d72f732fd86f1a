"""Time grids of series: frequencies, laying timestamps on a grid, stepping forecasts.

A series with time is a regular grid: its first point's instant and a
frequency (a pandas offset alias). Instants are int64 nanoseconds since the
Unix epoch, UTC. Fixed frequencies (minutes, hours, days) step by integer
arithmetic; calendar ones (business days, weeks, months, quarters, years)
step with pandas offsets, never with hand-written month logic. Errors are
`TimeError`s naming the request field at fault; the core turns them into
field violations. docs/time.md states the rules.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.tseries.frequencies import to_offset

Instants = npt.NDArray[np.int64]
"""Nanoseconds since the Unix epoch, UTC."""

ACCEPTED_FORMS = (
    '"min", "15min", "h", "2h", "D", "B", "W" (= "W-SUN") to "W-SAT", "MS", "ME", '
    '"QS", "QE", "YS", "YE", quarters and years anchored on a month ("QS-OCT", "YE-JUN"), '
    'and multiples ("2h", "3D", "2MS")'
)

WEEK_NS = 7 * 86_400 * 10**9
"""An anchored week (W-SUN...W-SAT) steps 7 days exactly: pandas' calendar arithmetic for
it costs ~4x a fixed step per request, for the same instants (tests/unit/test_timegrid.py)."""
_FIXED = (pd.offsets.Minute, pd.offsets.Hour, pd.offsets.Day, pd.offsets.Second)
_CALENDAR = (
    pd.offsets.BusinessDay,
    pd.offsets.Week,
    pd.offsets.MonthBegin,
    pd.offsets.MonthEnd,
    pd.offsets.QuarterBegin,
    pd.offsets.QuarterEnd,
    pd.offsets.YearBegin,
    pd.offsets.YearEnd,
)
_DAY_NS = 86_400 * 10**9
# A lower bound of each calendar step, for bounding a grid before building it.
_SHORTEST_NS = {
    pd.offsets.BusinessDay: _DAY_NS,
    pd.offsets.Week: 7 * _DAY_NS,
    pd.offsets.MonthBegin: 28 * _DAY_NS,
    pd.offsets.MonthEnd: 28 * _DAY_NS,
    pd.offsets.QuarterBegin: 89 * _DAY_NS,
    pd.offsets.QuarterEnd: 89 * _DAY_NS,
    pd.offsets.YearBegin: 365 * _DAY_NS,
    pd.offsets.YearEnd: 365 * _DAY_NS,
}
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
_WEEKDAYS = ("MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN")
_LIMIT_S = 9_000_000_000
"""Instants are taken within +-9e9 s of the epoch (years 1684 to 2255): int64 nanoseconds."""
OUT_OF_RANGE = int(np.iinfo(np.int64).min)
"""What `instants` gives a time outside that range (every check rejects it)."""
RANGE = "years 1684 to 2255"


def instants(seconds: npt.ArrayLike, nanos: npt.ArrayLike) -> Instants:
    """Nanosecond instants of (seconds, nanos) pairs; OUT_OF_RANGE where they do not fit."""
    s = np.asarray(seconds, dtype=np.int64)
    inside = np.abs(s) <= _LIMIT_S
    ns = np.where(inside, s, 0) * 10**9 + np.asarray(nanos, dtype=np.int64)
    return np.where(inside, ns, OUT_OF_RANGE).astype(np.int64)


def instant(seconds: int, nanos: int) -> int:
    """One (seconds, nanos) pair as `instants` reads it, without numpy (a request's start)."""
    return seconds * 10**9 + nanos if abs(seconds) <= _LIMIT_S else OUT_OF_RANGE


def check_range(field: str, values: Instants) -> None:
    """TimeError on `field` naming the first instant out of the supported range."""
    bad = np.flatnonzero(values == OUT_OF_RANGE)
    if bad.size:
        at = f"{field}[{int(bad[0])}]" if values.shape[0] > 1 or field == "timestamps" else field
        raise TimeError(at, f"{at} is outside the supported range ({RANGE})")


class TimeError(ValueError):
    """A request's time fields are wrong; `field` names the one to fix."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Frequency:
    """A parsed frequency alias: fixed steps of `step_ns`, or a calendar offset."""

    alias: str
    offset: pd.DateOffset
    step_ns: int | None
    """The step in nanoseconds for fixed frequencies; None for calendar ones."""

    def on_grid(self, instant: int) -> bool:
        """Whether a calendar frequency can start at `instant` (every instant can a fixed one)."""
        if self.step_ns is not None and not isinstance(self.offset, pd.offsets.Week):
            return True
        return bool(self.offset.is_on_offset(_stamp(instant)))

    def shift(self, instant: int, steps: int) -> int:
        """The grid point `steps` steps after the grid point `instant`."""
        if self.step_ns is not None:
            return instant + steps * self.step_ns
        return int((_stamp(instant) + self.offset * steps).value)

    def points(self, first: int, count: int) -> Instants:
        """`count` consecutive grid points from the grid point `first`."""
        if self.step_ns is not None:
            return first + self.step_ns * np.arange(count, dtype=np.int64)
        index = pd.date_range(_stamp(first), periods=count, freq=self.offset)
        return np.asarray(index.as_unit("ns").asi8, dtype=np.int64)

    def shortest_step_ns(self) -> int:
        """A lower bound of one step (exact for fixed frequencies)."""
        if self.step_ns is not None:
            return self.step_ns
        return int(_SHORTEST_NS[type(self.offset)] * self.offset.n)


@functools.lru_cache(maxsize=256)
def parse_frequency(alias: str) -> Frequency:
    """The frequency an alias names; TimeError on `frequency` listing the accepted forms."""
    text = alias.strip()
    try:
        offset = to_offset(text) if text else None
    except ValueError:
        offset = None
    if offset is None or not isinstance(offset, _FIXED + _CALENDAR) or offset.n < 1:
        raise TimeError(
            "frequency",
            f"unknown frequency {alias[:40]!r}; use a pandas offset alias: {ACCEPTED_FORMS}",
        )
    if isinstance(offset, pd.offsets.Week) and offset.weekday is None:
        raise TimeError("frequency", f"weekly frequency {alias!r} needs a weekday, e.g. 'W-SUN'")
    step = int(offset.nanos) if isinstance(offset, _FIXED) else None
    if isinstance(offset, pd.offsets.Week):  # anchored: a fixed 7-day step from an anchor day
        step = offset.n * WEEK_NS
    return Frequency(text, offset, step)


def step_times(first_ns: int, frequency: str, count: int) -> Instants:
    """The instants of `count` grid points of `frequency` from the grid point `first_ns`."""
    return parse_frequency(frequency).points(first_ns, count)


@dataclass(frozen=True)
class Grid:
    """Where given timestamps fall on a regular grid."""

    start_ns: int
    frequency: str
    positions: npt.NDArray[np.int64]
    """The grid index of each given timestamp (strictly increasing, first 0)."""
    length: int
    """Grid points from the first timestamp to the last."""


def lay_on_grid(timestamps: Instants, alias: str, max_length: int) -> Grid:
    """Place strictly increasing timestamps on `alias`'s grid (inferred when empty).

    Off-grid timestamps are an error, not snapped; so are duplicates and
    timestamps out of order. A grid longer than `max_length` is refused
    before it is built.
    """
    _check_order(timestamps)
    frequency = parse_frequency(alias) if alias else parse_frequency(infer_frequency(timestamps))
    first, last = int(timestamps[0]), int(timestamps[-1])
    if not frequency.on_grid(first):
        raise TimeError(
            "timestamps",
            f"timestamps[0] {format_instant(first)} is not on the grid of frequency "
            f"{frequency.alias!r}",
        )
    if (last - first) // frequency.shortest_step_ns() + 1 > 2 * max_length:
        raise TimeError("timestamps", _too_long(frequency.alias, max_length))
    if frequency.step_ns is not None:
        offsets = timestamps - first
        positions = offsets // frequency.step_ns
        off = np.flatnonzero(offsets % frequency.step_ns)
    else:
        grid = frequency.points(first, _calendar_count(frequency, first, last))
        positions = np.searchsorted(grid, timestamps).astype(np.int64)
        landed = grid[np.minimum(positions, grid.shape[0] - 1)]
        off = np.flatnonzero((positions >= grid.shape[0]) | (landed != timestamps))
    if off.size:
        shown = ", ".join(f"[{i}] {format_instant(int(timestamps[i]))}" for i in off[:3])
        raise TimeError(
            "timestamps",
            f"{off.size} timestamp(s) off the grid of frequency {frequency.alias!r} "
            f"starting at {format_instant(first)}: {shown}; timestamps are not snapped",
        )
    length = int(positions[-1]) + 1
    if length > max_length:
        raise TimeError("timestamps", _too_long(frequency.alias, max_length, length))
    return Grid(first, frequency.alias, positions, length)


def _too_long(alias: str, most: int, length: int | None = None) -> str:
    spanned = f"{length} points" if length is not None else "more points than allowed"
    return (
        f"the timestamps span {spanned} of frequency {alias!r} (gaps included), the maximum "
        f"is {most}; send only the most recent points"
    )


def _calendar_count(frequency: Frequency, first: int, last: int) -> int:
    """Grid points from `first` to at least `last` (a calendar grid, bounded by the caller)."""
    count = int((last - first) // frequency.shortest_step_ns()) + 2
    return max(count, 1)


def _check_order(timestamps: Instants) -> None:
    """Strictly increasing: duplicates and out-of-order points name their first index."""
    if timestamps.shape[0] < 2:
        return
    steps = np.diff(timestamps)
    bad = np.flatnonzero(steps <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        what = "repeats" if steps[i - 1] == 0 else "is before"
        raise TimeError(
            f"timestamps[{i}]",
            f"timestamps must be strictly increasing: timestamps[{i}] "
            f"{format_instant(int(timestamps[i]))} {what} timestamps[{i - 1}] "
            f"{format_instant(int(timestamps[i - 1]))} ({bad.size} such point(s))",
        )


def infer_frequency(timestamps: Instants) -> str:
    """The frequency of timestamps when it is unambiguous, else TimeError on `frequency`.

    Regular timestamps: pandas' own inference. With gaps: calendar months,
    quarters and years when every point is a month start (or end) at one
    time of day; else the greatest common step, refused when it would leave
    more grid points missing than given, or could be business days as well
    as days.
    """
    if timestamps.shape[0] < 3:
        raise TimeError(
            "frequency", "cannot infer the frequency from fewer than 3 timestamps; set frequency"
        )
    index = pd.DatetimeIndex(timestamps.astype("datetime64[ns]"))
    regular = pd.infer_freq(index)
    if regular is not None:
        return _canonical(str(regular))
    monthly = _monthly(index)
    if monthly is not None:
        return monthly
    step = functools.reduce(math.gcd, (int(d) for d in np.diff(timestamps)))
    count = int((timestamps[-1] - timestamps[0]) // step) + 1
    if count > 2 * timestamps.shape[0]:
        raise TimeError(
            "frequency",
            f"cannot infer the frequency: the common step {pd.Timedelta(step)} would make "
            f"{count - timestamps.shape[0]} of {count} points missing; set frequency",
        )
    if step % (7 * _DAY_NS) == 0:
        weeks = step // (7 * _DAY_NS)
        return f"{weeks if weeks > 1 else ''}W-{_WEEKDAYS[index[0].weekday()]}"
    if step == _DAY_NS and bool((index.weekday < 5).all()):
        raise TimeError(
            "frequency",
            "cannot infer the frequency: every timestamp is a weekday, so the series may be "
            "daily ('D') with gaps or business days ('B'); set frequency",
        )
    if step % _DAY_NS == 0:
        return f"{_count(step // _DAY_NS)}D"
    return str(to_offset(pd.Timedelta(step)).freqstr)


def _canonical(alias: str) -> str:
    """One name per quarterly grid: QS anchored on JAN-MAR, QE on OCT-DEC (as pandas' QE-DEC)."""
    offset = to_offset(alias)
    if isinstance(offset, pd.offsets.QuarterBegin | pd.offsets.QuarterEnd):
        base = 1 if isinstance(offset, pd.offsets.QuarterBegin) else 10
        month = (offset.startingMonth - 1) % 3 + base
        kind = "S" if base == 1 else "E"
        return f"{_count(offset.n)}Q{kind}-{_MONTHS[month - 1]}"
    return alias


def _monthly(index: pd.DatetimeIndex) -> str | None:
    """Month/quarter/year starts or ends at one time of day, by the months' common step."""
    times = index - index.normalize()
    if (times != times[0]).any():
        return None
    if bool((index.day == 1).all()):
        kind = "S"
    elif bool(index.is_month_end.all()):
        kind = "E"
    else:
        return None
    months = np.asarray(index.year * 12 + index.month - 1, dtype=np.int64)
    step = functools.reduce(math.gcd, (int(d) for d in np.diff(months)))
    if (months[-1] - months[0]) // step + 1 > 2 * months.shape[0]:
        return None
    first = int(index[0].month)
    if step % 12 == 0:
        return f"{_count(step // 12)}Y{kind}-{_MONTHS[first - 1]}"
    if step % 3 == 0:
        anchor = (first - 1) % 3 if kind == "S" else (first - 1) % 3 + 9
        return f"{_count(step // 3)}Q{kind}-{_MONTHS[anchor]}"
    return f"{_count(step)}M{kind}"


def _count(n: int) -> str:
    return str(n) if n > 1 else ""


def format_instant(instant: int) -> str:
    """An instant as ISO 8601 UTC with a Z, for messages."""
    text = str(_stamp(instant).isoformat())
    return text.replace("+00:00", "Z")


def _stamp(instant: int) -> pd.Timestamp:
    return pd.Timestamp(instant, unit="ns", tz="UTC")
