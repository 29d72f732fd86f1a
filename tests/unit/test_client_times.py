"""forecast_client.times: Python, numpy and pandas times to protobuf Timestamps, and back."""

from __future__ import annotations

import math
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import numpy as np
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from forecast.v1 import forecast_pb2
from forecast_client.times import (
    fill_method,
    from_timestamp,
    history_values,
    parse_time,
    series_fields,
    to_timestamp,
    to_timestamps,
)

JAN_1 = 1_704_067_200  # 2024-01-01T00:00:00Z in Unix seconds
DAY = 86_400


def stamp(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (datetime(2024, 1, 1), stamp(JAN_1)),  # naive: UTC
        (datetime(2024, 1, 1, tzinfo=UTC), stamp(JAN_1)),
        (datetime(2024, 1, 1, 2, tzinfo=timezone(timedelta(hours=2))), stamp(JAN_1)),
        (datetime(2024, 1, 1, 0, 0, 0, 250_000), stamp(JAN_1, 250_000_000)),
        (date(2024, 1, 2), stamp(JAN_1 + DAY)),
        (np.datetime64("2024-01-01"), stamp(JAN_1)),
        (np.datetime64("2024-01"), stamp(JAN_1)),
        (np.datetime64("2024-01-01T00:00:00.000000001"), stamp(JAN_1, 1)),
        (np.datetime64("1969-12-31T23:59:59.5"), stamp(-1, 500_000_000)),
        (pd.Timestamp("2024-01-01"), stamp(JAN_1)),
        (pd.Timestamp("2024-01-01 00:00:00.000000007"), stamp(JAN_1, 7)),
        (pd.Timestamp("2024-01-01 09:00", tz="Asia/Tokyo"), stamp(JAN_1)),
        ("2024-01-01", stamp(JAN_1)),
        ("2024-01-01T00:00Z", stamp(JAN_1)),
        ("2024-01-01 03:00:00+03:00", stamp(JAN_1)),
    ],
    ids=lambda v: repr(v) if not isinstance(v, Timestamp) else "",
)
def test_one_time_to_a_timestamp(value: object, expected: Timestamp) -> None:
    assert to_timestamp(value) == expected


@pytest.mark.parametrize(
    ("value", "error", "fragment"),
    [
        (pd.NaT, ValueError, "start: NaT"),
        (np.datetime64("NaT"), ValueError, "start: NaT"),
        ("31/01/2024", ValueError, "start: '31/01/2024' is not an ISO 8601 date"),
        (1_704_067_200, TypeError, "start: expected a datetime"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_what_is_not_a_time(value: object, error: type[Exception], fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        to_timestamp(value)


def test_many_times_from_lists_arrays_and_pandas() -> None:
    days = [stamp(JAN_1 + i * DAY) for i in range(3)]
    utc = pd.date_range("2024-01-01", periods=3, freq="D", tz="UTC")
    assert to_timestamps([datetime(2024, 1, 1), "2024-01-02", date(2024, 1, 3)]) == days
    assert to_timestamps(np.array(["2024-01-01", "2024-01-02", "2024-01-03"], "M8[D]")) == days
    assert to_timestamps(pd.date_range("2024-01-01", periods=3, freq="D")) == days
    assert to_timestamps(utc.tz_convert("America/New_York")) == days
    assert to_timestamps(pd.Series(utc)) == days  # a column of datetimes
    assert to_timestamps(pd.Series(["2024-01-01", "2024-01-02", "2024-01-03"])) == days
    # Coarse units far from the epoch do not overflow int64 nanoseconds on the way.
    assert to_timestamps(np.array(["9999-12-31"], "M8[D]")) == [stamp(253_402_214_400)]


@pytest.mark.parametrize(
    "values",
    [
        [datetime(2024, 1, 1), None],
        np.array(["2024-01-01", "NaT"], "M8[s]"),
        pd.DatetimeIndex(["2024-01-01", None]),
    ],
    ids=["list", "numpy", "pandas"],
)
def test_a_missing_time_is_named_by_its_position(values: Any) -> None:
    with pytest.raises((TypeError, ValueError), match=r"timestamps(\[1\]|: NaT at position 1)"):
        to_timestamps(values)


def test_timestamps_come_back_as_aware_utc_datetimes() -> None:
    back = from_timestamp(stamp(JAN_1 + 90, 123_456_789))
    assert back == datetime(2024, 1, 1, 0, 1, 30, 123_456, tzinfo=UTC)
    assert back.tzinfo is UTC
    assert from_timestamp(stamp(-1, 500_000_000)) == datetime(
        1969, 12, 31, 23, 59, 59, 500_000, tzinfo=UTC
    )


@given(
    st.datetimes(
        min_value=datetime(1700, 1, 1),
        max_value=datetime(2250, 1, 1),
        timezones=st.one_of(st.none(), st.timezones()),
        allow_imaginary=False,
    )
)
def test_round_trip_keeps_the_instant(value: datetime) -> None:
    back = from_timestamp(to_timestamp(value))
    # astimezone: an ambiguous local time is never == across zones (PEP 495), even to itself.
    expected = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    assert back == expected
    assert to_timestamp(pd.Timestamp(value)) == to_timestamp(value)


def test_parse_time_is_utc_without_an_offset() -> None:
    assert parse_time("2024-03-01") == datetime(2024, 3, 1, tzinfo=UTC)
    assert parse_time(" 2024-03-01T10:30:00-05:00 ") == datetime(2024, 3, 1, 15, 30, tzinfo=UTC)
    with pytest.raises(ValueError, match="--date-column"):
        parse_time("yesterday", "--date-column")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, forecast_pb2.FILL_METHOD_UNSPECIFIED),
        ("", forecast_pb2.FILL_METHOD_UNSPECIFIED),
        ("linear", forecast_pb2.FILL_METHOD_LINEAR),
        ("Previous", forecast_pb2.FILL_METHOD_PREVIOUS),
        ("ZERO", forecast_pb2.FILL_METHOD_ZERO),
        ("FILL_METHOD_LINEAR", forecast_pb2.FILL_METHOD_LINEAR),
        (forecast_pb2.FILL_METHOD_ZERO, forecast_pb2.FILL_METHOD_ZERO),
    ],
)
def test_fill_names_and_enum_values(value: str | int | None, expected: int) -> None:
    assert fill_method(value) == expected


@pytest.mark.parametrize("value", ["ffill", "mean", 7, True])
def test_an_unknown_fill_lists_the_names(value: str | int) -> None:
    with pytest.raises(ValueError, match="'linear', 'previous', 'zero'"):
        fill_method(value)


def test_history_values_take_none_and_pandas_na_as_missing() -> None:
    values = history_values([1, None, 3.5])
    assert values[0] == 1.0 and math.isnan(values[1]) and values[2] == 3.5
    nullable = pd.Series([1.0, None, 2.0], dtype="Float64")
    assert history_values(nullable) == pytest.approx([1.0, math.nan, 2.0], nan_ok=True)
    assert history_values(np.array([1, 2])) == [1.0, 2.0]


def test_a_request_without_time_is_the_history_only() -> None:
    assert series_fields([1.0, 2.0]) == {"history": [1.0, 2.0]}
    assert series_fields(pd.Series([1.0, 2.0])) == {"history": [1.0, 2.0]}  # RangeIndex


def test_start_frequency_and_fill_fields() -> None:
    fields = series_fields([1.0, math.nan], start=date(2024, 1, 1), frequency="D", fill="linear")
    assert fields["start"] == stamp(JAN_1)
    assert fields["frequency"] == "D"
    assert fields["fill"] == forecast_pb2.FILL_METHOD_LINEAR
    assert "timestamps" not in fields
    assert series_fields([1.0], start="2024-01-01", frequency=pd.offsets.MonthBegin())[
        "frequency"
    ] == ("MS")
    with pytest.raises(TypeError, match="frequency"):
        series_fields([1.0], frequency=3)


def test_a_pandas_series_brings_its_index_and_frequency() -> None:
    weekly = pd.Series([1.0, None, 3.0], index=pd.date_range("2024-01-07", periods=3, freq="W-SUN"))
    fields = series_fields(weekly)
    assert fields["timestamps"] == [stamp(JAN_1 + (6 + 7 * i) * DAY) for i in range(3)]
    assert fields["frequency"] == "W-SUN"
    assert fields["history"] == pytest.approx([1.0, math.nan, 3.0], nan_ok=True)
    # A gappy index has no frequency: the gateway infers it or is told it.
    gappy = weekly.drop(weekly.index[1])
    assert "frequency" not in series_fields(gappy)
    assert series_fields(gappy, frequency="W")["frequency"] == "W"
    # Explicit time arguments win over the index.
    started = series_fields(weekly, start="2024-01-01", frequency="D")
    assert "timestamps" not in started and started["frequency"] == "D"


def test_the_client_imports_neither_numpy_nor_pandas() -> None:
    check = "import sys, forecast_client; print('numpy' in sys.modules, 'pandas' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
