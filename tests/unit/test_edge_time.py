"""Series with time through the in-process gateway: timestamps out, gaps found, fills applied."""

from __future__ import annotations

import math
from pathlib import Path

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from tests.edge import (
    MA,
    captured_logs,
    details,
    failure,
    forecast_request,
    one_request_line,
    sample,
    serving,
)

DAYS = pd.date_range("2024-01-01", periods=40, freq="D", tz="UTC")
VALUES = [10.0 + (i % 7) + 0.5 * i for i in range(40)]


def stamp(when: pd.Timestamp | str) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(pd.Timestamp(when).value))
    return out


def dates(stamps: object) -> list[str]:
    return [s.ToJsonString() for s in stamps]  # type: ignore[attr-defined]


def ma_request(**fields: object) -> pb.ForecastRequest:
    """moving_average version 1 (a 10-point window), pinned, 3 steps."""
    return forecast_request(model=MA, version="1", horizon=3, **fields)


async def test_start_and_frequency_give_the_next_days(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        response = await edge.stub.Forecast(
            ma_request(history=VALUES, start=stamp(DAYS[0]), frequency="D")
        )
        plain = await edge.stub.Forecast(ma_request(history=VALUES))
    assert dates(response.timestamps) == [
        "2024-02-10T00:00:00Z",
        "2024-02-11T00:00:00Z",
        "2024-02-12T00:00:00Z",
    ]
    assert response.frequency == "D" and response.filled_points == 0
    assert list(response.values) == list(plain.values)  # time changes nothing else
    assert not plain.timestamps and plain.frequency == ""


async def test_a_monthly_series_steps_calendar_months(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        response = await edge.stub.Forecast(
            ma_request(history=VALUES[:14], start=stamp("2023-01-31"), frequency="ME")
        )
    assert dates(response.timestamps) == [
        "2024-03-31T00:00:00Z",
        "2024-04-30T00:00:00Z",
        "2024-05-31T00:00:00Z",
    ]


def gappy(missing: list[int]) -> tuple[list[timestamp_pb2.Timestamp], list[float]]:
    kept = [i for i in range(len(DAYS)) if i not in missing]
    return [stamp(DAYS[i]) for i in kept], [VALUES[i] for i in kept]


async def test_two_missing_days_in_the_window_are_named_without_a_fill(tmp_path: Path) -> None:
    stamps, values = gappy([35, 36])
    async with serving(tmp_path) as edge:
        before = sample("forecast_gateway_missing_values_rejected_total", {"model": MA})
        error = await failure(edge.stub.Forecast(ma_request(history=values, timestamps=stamps)))
        after = sample("forecast_gateway_missing_values_rejected_total", {"model": MA})
        assert not edge.backend.calls
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found.info.reason == "MISSING_VALUES"
    assert found.fields == ["timestamps"]  # the gaps are absent timestamps, not NaN
    message = error.details() or ""
    assert "2 missing point(s) in the 10-point window" in message
    assert "2024-02-05T00:00:00Z (index 35), 2024-02-06T00:00:00Z (index 36)" in message
    assert after == before + 1


async def test_nan_sent_in_the_window_is_named_in_history(tmp_path: Path) -> None:
    stamps, values = gappy([])
    values[-2] = math.nan  # a point sent, as NaN: the caller fixes the value, not the times
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.Forecast(ma_request(history=values, timestamps=stamps)))
    found = details(error)
    assert (found.info.reason, found.fields) == ("MISSING_VALUES", ["history"])


async def test_a_linear_fill_forecasts_as_the_series_filled_by_hand(tmp_path: Path) -> None:
    stamps, values = gappy([35, 36])
    by_hand = list(VALUES)
    by_hand[35], by_hand[36] = np.interp([35, 36], [34, 37], [VALUES[34], VALUES[37]])
    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            filled = await edge.stub.Forecast(
                ma_request(
                    history=values,
                    timestamps=stamps,
                    frequency="D",
                    fill=forecast_pb2.FILL_METHOD_LINEAR,
                )
            )
            line = await one_request_line(logs, "Forecast")
        reference = await edge.stub.Forecast(ma_request(history=by_hand))
    assert filled.filled_points == 2
    assert list(filled.values) == pytest.approx(list(reference.values))
    assert dates(filled.timestamps)[0] == "2024-02-10T00:00:00Z"  # after the last point
    assert line["filled_points"] == 2


async def test_the_frequency_is_inferred_from_gappy_timestamps(tmp_path: Path) -> None:
    stamps, values = gappy([5, 20, 36])
    async with serving(tmp_path) as edge:
        response = await edge.stub.Forecast(
            ma_request(history=values, timestamps=stamps, fill=forecast_pb2.FILL_METHOD_PREVIOUS)
        )
    assert response.frequency == "D"
    assert response.filled_points == 1  # index 36 only: 5 and 20 are older than the window


async def test_nan_older_than_the_window_is_not_an_error(tmp_path: Path) -> None:
    history = [math.nan, *VALUES[1:20], math.nan, *VALUES[21:]]
    async with serving(tmp_path) as edge:
        response = await edge.stub.Forecast(ma_request(history=history))
        reference = await edge.stub.Forecast(ma_request(history=VALUES))
    assert list(response.values) == list(reference.values)
    assert response.filled_points == 0


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"frequency": "M", "start": "2024-01-01"}, "frequency", "pandas offset alias"),
        ({"start": "2024-01-01"}, "frequency", "required with start"),
        ({"frequency": "MS", "start": "2024-01-02"}, "start", "not on the grid"),
        ({"frequency": "D", "timestamps": "duplicate"}, "timestamps[2]", "repeats"),
        ({"frequency": "D", "timestamps": "short"}, "timestamps", "one per point"),
        ({"frequency": "D", "timestamps": "off"}, "timestamps", "off the grid"),
        ({"frequency": "D", "timestamps": "both"}, "timestamps", "not both"),
    ],
)
async def test_wrong_time_fields_are_named(
    tmp_path: Path, fields: dict[str, str], field: str, words: str
) -> None:
    history = VALUES[:12]
    request = ma_request(history=history, frequency=fields.get("frequency", ""))
    if "start" in fields:
        request.start.CopyFrom(stamp(fields["start"]))
    kind = fields.get("timestamps")
    if kind is not None:
        days = [stamp(d) for d in DAYS[: len(history)]]
        if kind == "duplicate":
            days[2] = days[1]
        elif kind == "short":
            days = days[:-1]
        elif kind == "off":
            days[5] = stamp(DAYS[5] + pd.Timedelta("3h"))
        elif kind == "both":
            request.start.CopyFrom(days[0])
        request.timestamps.extend(days)
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.Forecast(request))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error).fields == [field]
    assert words in (error.details() or "")


async def test_batch_series_and_comparisons_carry_their_times(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        batch = await edge.stub.ForecastBatch(
            pb.ForecastBatchRequest(
                model=MA,
                version="1",
                horizon=2,
                series=[
                    pb.Series(id="dated", history=VALUES, start=stamp(DAYS[0]), frequency="D"),
                    pb.Series(id="plain", history=VALUES),
                ],
            )
        )
        compared = await edge.stub.CompareVersions(
            pb.CompareVersionsRequest(
                model=MA, history=VALUES, horizon=2, start=stamp("2024-01-07"), frequency="W-SUN"
            )
        )
    dated, plain = (r.forecast for r in batch.results)
    assert dates(dated.timestamps) == ["2024-02-10T00:00:00Z", "2024-02-11T00:00:00Z"]
    assert not plain.timestamps
    answered = [f for f in compared.forecasts if f.values]  # version 2 needs 52 points
    assert [f.version for f in answered] == ["1"]
    for forecast in answered:
        assert dates(forecast.timestamps) == ["2024-10-13T00:00:00Z", "2024-10-20T00:00:00Z"]
        assert forecast.frequency == "W-SUN"
