"""Series with time through the real gateway and Triton: dated forecasts, gaps found or filled."""

from __future__ import annotations

import math
from typing import Any

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from tests.functional.test_bad_input import details

Stub = forecast_service_pb2_grpc.ForecastServiceStub
DAYS = pd.date_range("2024-01-01", periods=120, freq="D", tz="UTC")
# Daily sales: a trend and a weekly pattern (Saturday peak).
SALES = [300.0 + 0.4 * i + (60.0 if d.weekday() == 5 else 0.0) for i, d in enumerate(DAYS)]


def stamp(when: pd.Timestamp | str) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(pd.Timestamp(when).value))
    return out


def iso(stamps: object) -> list[str]:
    return [s.ToJsonString() for s in stamps]  # type: ignore[attr-defined]


def gappy(missing: list[int]) -> dict[str, Any]:
    kept = [i for i in range(len(DAYS)) if i not in missing]
    return {"timestamps": [stamp(DAYS[i]) for i in kept], "history": [SALES[i] for i in kept]}


def request(**fields: Any) -> forecast_service_pb2.ForecastRequest:
    """moving_average version 1 (a 10-point window), pinned, 3 steps, `fields` added."""
    fields = {"frequency": "D", **fields}
    return forecast_service_pb2.ForecastRequest(
        model="moving_average", version="1", horizon=3, **fields
    )


def test_two_missing_days_without_a_fill_are_named(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.Forecast(request(**gappy([115, 116])), timeout=10)
    error = caught.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(error)
    assert (info.reason, fields) == ("MISSING_VALUES", ["timestamps"])
    named = "2024-04-25T00:00:00Z (index 115), 2024-04-26T00:00:00Z (index 116)"
    assert named in (error.details() or "")


def test_a_linear_fill_answers_with_the_next_days(stub: Stub) -> None:
    filled = stub.Forecast(
        request(**gappy([115, 116]), fill=forecast_pb2.FILL_METHOD_LINEAR), timeout=10
    )
    by_hand = list(SALES)
    by_hand[115], by_hand[116] = np.interp([115, 116], [114, 117], [SALES[114], SALES[117]])
    reference = stub.Forecast(request(history=by_hand), timeout=10)
    assert filled.filled_points == 2
    assert iso(filled.timestamps) == [
        "2024-04-30T00:00:00Z",
        "2024-05-01T00:00:00Z",
        "2024-05-02T00:00:00Z",
    ]
    assert list(filled.values) == pytest.approx(list(reference.values), rel=1e-6)
    assert filled.frequency == "D"


def test_without_time_the_dropped_days_would_have_shifted_the_window(stub: Stub) -> None:
    """What the issue saw: the same rows sent bare are read as a contiguous window."""
    rows = gappy([115, 116])["history"]
    bare = stub.Forecast(request(history=rows, frequency=""), timeout=10)
    dated = stub.Forecast(
        request(**gappy([115, 116]), fill=forecast_pb2.FILL_METHOD_LINEAR), timeout=10
    )
    assert not bare.timestamps
    assert list(bare.values) != pytest.approx(list(dated.values), rel=1e-6)


def test_a_monthly_series_steps_calendar_months(stub: Stub) -> None:
    months = [100.0 + 3.0 * i for i in range(24)]
    response = stub.Forecast(
        forecast_service_pb2.ForecastRequest(
            model="moving_average",
            version="1",
            horizon=4,
            history=months,
            start=stamp("2022-01-31"),
            frequency="ME",
        ),
        timeout=10,
    )
    assert iso(response.timestamps) == [
        "2024-01-31T00:00:00Z",
        "2024-02-29T00:00:00Z",
        "2024-03-31T00:00:00Z",
        "2024-04-30T00:00:00Z",
    ]


def test_nan_older_than_the_window_is_not_an_error(stub: Stub) -> None:
    history = [math.nan if i in (3, 60) else v for i, v in enumerate(SALES)]
    response = stub.Forecast(request(history=history, start=stamp(DAYS[0])), timeout=10)
    reference = stub.Forecast(request(history=SALES, start=stamp(DAYS[0])), timeout=10)
    assert list(response.values) == list(reference.values)
    assert response.filled_points == 0


def test_duplicated_timestamps_are_rejected(stub: Stub) -> None:
    fields = gappy([])
    stamps = list(fields["timestamps"])
    stamps[50] = stamps[49]
    with pytest.raises(grpc.RpcError) as caught:
        stub.Forecast(request(history=fields["history"], timestamps=stamps), timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(caught.value)[1] == ["timestamps[50]"]
    assert "repeats" in (caught.value.details() or "")


WEEKS = pd.date_range("2023-01-07", periods=120, freq="W-SAT", tz="UTC")


def test_the_weekly_lstm_serves_a_dated_weekly_batch_and_refuses_daily_sales(stub: Stub) -> None:
    weekly = [340.0 + 3.0 * math.sin(2 * math.pi * i / 52) for i in range(len(WEEKS))]
    kept = [i for i in range(len(WEEKS)) if i != 118]
    response = stub.ForecastBatch(
        forecast_service_pb2.ForecastBatchRequest(
            model="lstm_timeseries",
            horizon=2,
            series=[
                forecast_service_pb2.Series(
                    id="co2-like",
                    timestamps=[stamp(WEEKS[i]) for i in kept],
                    history=[weekly[i] for i in kept],
                    frequency="W-SAT",
                    fill=forecast_pb2.FILL_METHOD_PREVIOUS,
                ),
                forecast_service_pb2.Series(
                    id="store-2", history=SALES, start=stamp(DAYS[0]), frequency="D"
                ),
            ],
        ),
        timeout=10,
    )
    served, refused = response.results
    assert served.forecast.filled_points == 1
    assert iso(served.forecast.timestamps) == ["2025-04-26T00:00:00Z", "2025-05-03T00:00:00Z"]
    assert all(math.isfinite(v) for v in served.forecast.values)
    # Every LSTM version is declared for weekly data only: daily sales are refused, not forecast.
    assert refused.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert refused.error.reason == "FREQUENCY_NOT_SUPPORTED"
    assert [v.field for v in refused.error.field_violations] == ["frequency"]
