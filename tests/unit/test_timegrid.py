"""The calendar rules of series with time: frequencies, grids, inference, forecast steps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast_gateway.timegrid import (
    OUT_OF_RANGE,
    Instants,
    TimeError,
    check_range,
    format_instant,
    infer_frequency,
    instants,
    lay_on_grid,
    parse_frequency,
    step_times,
)


def ns(text: str) -> int:
    return int(pd.Timestamp(text, tz="UTC").value)


def iso(values: Instants) -> list[str]:
    return [format_instant(int(v)) for v in values]


# Every frequency the contract names, a start on its grid, and the next three points.
STEPS = [
    ("min", "2024-02-29T23:58:00", ["2024-02-29T23:59:00Z", "2024-03-01T00:00:00Z"]),
    ("15min", "2024-01-01T23:30:00", ["2024-01-01T23:45:00Z", "2024-01-02T00:00:00Z"]),
    ("h", "2023-12-31T23:00:00", ["2024-01-01T00:00:00Z", "2024-01-01T01:00:00Z"]),
    ("2h", "2024-01-01T22:00:00", ["2024-01-02T00:00:00Z", "2024-01-02T02:00:00Z"]),
    ("D", "2024-02-28", ["2024-02-29T00:00:00Z", "2024-03-01T00:00:00Z"]),  # leap day
    ("D", "2023-02-28", ["2023-03-01T00:00:00Z", "2023-03-02T00:00:00Z"]),  # no leap day
    ("3D", "2024-01-01", ["2024-01-04T00:00:00Z", "2024-01-07T00:00:00Z"]),
    ("B", "2024-03-08", ["2024-03-11T00:00:00Z", "2024-03-12T00:00:00Z"]),  # Fri -> Mon
    ("W", "2024-03-03", ["2024-03-10T00:00:00Z", "2024-03-17T00:00:00Z"]),  # Sundays
    ("W-SUN", "2024-03-03", ["2024-03-10T00:00:00Z", "2024-03-17T00:00:00Z"]),
    ("W-MON", "2024-03-04", ["2024-03-11T00:00:00Z", "2024-03-18T00:00:00Z"]),
    ("W-TUE", "2024-03-05", ["2024-03-12T00:00:00Z", "2024-03-19T00:00:00Z"]),
    ("W-WED", "2024-03-06", ["2024-03-13T00:00:00Z", "2024-03-20T00:00:00Z"]),
    ("W-THU", "2024-03-07", ["2024-03-14T00:00:00Z", "2024-03-21T00:00:00Z"]),
    ("W-FRI", "2024-03-08", ["2024-03-15T00:00:00Z", "2024-03-22T00:00:00Z"]),
    ("W-SAT", "2024-03-09", ["2024-03-16T00:00:00Z", "2024-03-23T00:00:00Z"]),
    ("MS", "2024-01-01", ["2024-02-01T00:00:00Z", "2024-03-01T00:00:00Z"]),
    ("2MS", "2024-11-01", ["2025-01-01T00:00:00Z", "2025-03-01T00:00:00Z"]),
    ("ME", "2024-01-31", ["2024-02-29T00:00:00Z", "2024-03-31T00:00:00Z"]),  # month ends
    ("ME", "2023-01-31", ["2023-02-28T00:00:00Z", "2023-03-31T00:00:00Z"]),
    ("QS", "2024-10-01", ["2025-01-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
    ("QS-OCT", "2024-10-01", ["2025-01-01T00:00:00Z", "2025-04-01T00:00:00Z"]),
    ("QE", "2024-12-31", ["2025-03-31T00:00:00Z", "2025-06-30T00:00:00Z"]),
    ("YS", "2023-01-01", ["2024-01-01T00:00:00Z", "2025-01-01T00:00:00Z"]),
    ("YE", "2023-12-31", ["2024-12-31T00:00:00Z", "2025-12-31T00:00:00Z"]),
    ("YE-JUN", "2023-06-30", ["2024-06-30T00:00:00Z", "2025-06-30T00:00:00Z"]),
]


@pytest.mark.parametrize(("alias", "start", "after"), STEPS)
def test_each_frequency_steps_as_the_calendar_does(
    alias: str, start: str, after: list[str]
) -> None:
    frequency = parse_frequency(alias)
    first = ns(start)
    assert frequency.on_grid(first)
    assert iso(step_times(first, alias, 3)) == [format_instant(first), *after]
    assert format_instant(frequency.shift(first, 2)) == after[1]


@pytest.mark.parametrize("alias", ["M", "H", "T", "Y", "Q", "A", "xyz", "", "0D", "-1D", "SME"])
def test_an_unknown_alias_lists_the_accepted_forms(alias: str) -> None:
    with pytest.raises(TimeError) as error:
        parse_frequency(alias)
    assert error.value.field == "frequency"
    assert "W-SUN" in error.value.message and "QS-OCT" in error.value.message


@pytest.mark.parametrize(
    ("alias", "instant"),
    [("MS", "2024-01-02"), ("ME", "2024-01-30"), ("B", "2024-03-09"), ("W-SUN", "2024-03-04")],
)
def test_calendar_frequencies_start_only_on_their_grid(alias: str, instant: str) -> None:
    assert not parse_frequency(alias).on_grid(ns(instant))


def test_gaps_are_found_on_a_daily_grid() -> None:
    days = pd.date_range("2024-01-01", periods=10, freq="D", tz="UTC").as_unit("ns").asi8
    given_days = np.delete(days, [3, 4])
    grid = lay_on_grid(given_days, "D", 100)
    assert grid.length == 10 and grid.start_ns == days[0]
    assert grid.positions.tolist() == [0, 1, 2, 5, 6, 7, 8, 9]


def test_business_days_skip_weekends_and_a_weekend_point_is_off_the_grid() -> None:
    days = pd.bdate_range("2024-03-07", periods=4).tz_localize("UTC").as_unit("ns").asi8
    assert lay_on_grid(days, "B", 100).positions.tolist() == [0, 1, 2, 3]  # Thu Fri Mon Tue
    with pytest.raises(TimeError, match="off the grid"):
        lay_on_grid(np.array([ns("2024-03-08"), ns("2024-03-09")]), "B", 100)


def test_off_grid_timestamps_are_an_error_not_snapped() -> None:
    stamps = np.array([ns("2024-01-01"), ns("2024-01-02"), ns("2024-01-03T06:00")])
    with pytest.raises(TimeError) as error:
        lay_on_grid(stamps, "D", 100)
    assert error.value.field == "timestamps"
    assert "[2] 2024-01-03T06:00:00Z" in error.value.message


@pytest.mark.parametrize(
    ("stamps", "field", "word"),
    [
        (["2024-01-01", "2024-01-02", "2024-01-02"], "timestamps[2]", "repeats"),
        (["2024-01-01", "2024-01-03", "2024-01-02"], "timestamps[2]", "is before"),
    ],
)
def test_duplicates_and_disorder_name_the_index(stamps: list[str], field: str, word: str) -> None:
    with pytest.raises(TimeError) as error:
        lay_on_grid(np.array([ns(s) for s in stamps]), "D", 100)
    assert error.value.field == field and word in error.value.message


def test_a_grid_longer_than_the_maximum_is_refused_before_it_is_built() -> None:
    with pytest.raises(TimeError, match="maximum is 100"):
        lay_on_grid(np.array([ns("2000-01-01"), ns("2024-01-01")]), "min", 100)
    with pytest.raises(TimeError, match="maximum is 10"):
        lay_on_grid(np.array([ns("2024-01-01"), ns("2024-01-12")]), "D", 10)


def test_a_monthly_grid_steps_calendar_months() -> None:
    stamps = np.array([ns("2024-01-31"), ns("2024-02-29"), ns("2024-04-30")])
    grid = lay_on_grid(stamps, "ME", 100)
    assert grid.positions.tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    ("alias", "start"),
    [
        ("D", "2024-01-01"),
        ("h", "2024-01-01T05:00"),
        ("15min", "2024-01-01"),
        ("B", "2024-01-02"),
        ("W-SUN", "2024-01-07"),
        ("W-WED", "2024-01-03"),
        ("MS", "2024-01-01"),
        ("ME", "2024-01-31"),
        ("QS-JAN", "2024-01-01"),
        ("QS-OCT", "2024-10-01"),
        ("QE-DEC", "2024-03-31"),
        ("YS-JAN", "2020-01-01"),
        ("YE-DEC", "2020-12-31"),
    ],
)
def test_regular_timestamps_infer_the_frequency_they_were_built_with(
    alias: str, start: str
) -> None:
    stamps = step_times(ns(start), alias, 12)
    inferred = infer_frequency(stamps)
    assert step_times(ns(start), inferred, 30).tolist() == step_times(ns(start), alias, 30).tolist()


@pytest.mark.parametrize(
    ("alias", "start", "expected"),
    [
        ("D", "2024-01-06", "D"),  # a Saturday: not only weekdays
        ("MS", "2024-01-01", "MS"),
        ("ME", "2024-01-31", "ME"),
        ("QS-OCT", "2024-10-01", "QS-JAN"),  # Oct, Jan, Apr, Jul: the same quarters
        ("YS-JAN", "2020-01-01", "YS-JAN"),
        ("W-WED", "2024-01-03", "W-WED"),
        ("h", "2024-01-01", "h"),
    ],
)
def test_gappy_timestamps_infer_their_frequency(alias: str, start: str, expected: str) -> None:
    stamps = np.delete(step_times(ns(start), alias, 12), [2, 3, 7])
    assert infer_frequency(stamps) == expected


def test_inference_says_when_it_cannot() -> None:
    with pytest.raises(TimeError, match="fewer than 3"):
        infer_frequency(np.array([ns("2024-01-01"), ns("2024-01-02")]))
    weekdays = np.delete(
        pd.bdate_range("2024-01-01", periods=15).tz_localize("UTC").as_unit("ns").asi8, [2, 8]
    )
    with pytest.raises(TimeError, match="business days"):
        infer_frequency(weekdays)
    sparse = np.array([ns("2024-01-01"), ns("2024-01-02"), ns("2024-03-01"), ns("2024-06-01")])
    with pytest.raises(TimeError, match="set frequency"):
        infer_frequency(sparse)


def test_out_of_range_times_are_caught_not_wrapped() -> None:
    values = instants([0, 10**11, -(10**11)], [5, 0, 0])
    assert values.tolist() == [5, OUT_OF_RANGE, OUT_OF_RANGE]
    with pytest.raises(TimeError) as error:
        check_range("timestamps", values)
    assert error.value.field == "timestamps[1]"


ALIASES = ["min", "15min", "h", "2h", "D", "B", "W-SUN", "W-FRI", "MS", "ME", "QS", "QE", "YS"]


@settings(max_examples=60, deadline=None)
@given(
    alias=st.sampled_from(ALIASES),
    length=st.integers(min_value=6, max_value=60),
    data=st.data(),
)
def test_removed_points_come_back_as_the_grid(alias: str, length: int, data: st.DataObject) -> None:
    frequency = parse_frequency(alias)
    first = int(frequency.offset.rollforward(pd.Timestamp("2021-03-02", tz="UTC")).value)
    assert frequency.on_grid(first)
    full = step_times(first, alias, length)
    inner = list(range(1, length - 1))
    removed = data.draw(st.lists(st.sampled_from(inner), unique=True, max_size=length // 3))
    kept = np.delete(full, removed)
    grid = lay_on_grid(kept, alias, 1000)
    assert grid.length == length
    rebuilt = step_times(grid.start_ns, alias, grid.length)
    assert rebuilt.tolist() == full.tolist()
    assert sorted(set(range(length)) - set(grid.positions.tolist())) == sorted(removed)
    if not removed:  # the same grid (QS-OCT and QS-JAN name one grid)
        inferred = infer_frequency(kept)
        assert (
            step_times(first, inferred, length + 5).tolist()
            == step_times(first, alias, length + 5).tolist()
        )


@pytest.mark.parametrize("alias", ["W-SAT", "W-WED", "2W-SUN", "3W-MON"])
@pytest.mark.parametrize("time_of_day", ["00:00", "13:45:07"])
def test_an_anchored_week_steps_exactly_as_pandas_does(alias: str, time_of_day: str) -> None:
    offset = pd.tseries.frequencies.to_offset(alias)
    first = pd.Timestamp(f"2024-02-26 {time_of_day}", tz="UTC")
    first = (
        first + pd.offsets.Week(weekday=offset.weekday) if not offset.is_on_offset(first) else first
    )
    frequency = parse_frequency(alias)
    assert frequency.step_ns is not None and frequency.on_grid(first.value)
    expected = pd.date_range(first, periods=60, freq=alias).as_unit("ns").asi8
    assert frequency.points(first.value, 60).tolist() == expected.tolist()
    assert frequency.shift(first.value, 59) == expected[-1]
    assert not frequency.on_grid((first + pd.Timedelta(days=1)).value)
