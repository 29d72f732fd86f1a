"""A retail team's daily sales through the real gateway and Triton, with the shipped models.

The issue's scenario: two years of daily sales around 300 with a weekly
cycle. The global quantile model answers in the series' range with its own
quantiles; seasonal naive repeats last week; the weekly-co2 LSTM refuses the
series instead of answering nonsense; moving_average answers, its co2-made
band flagged NOT_CALIBRATED.
"""

from __future__ import annotations

import math

import grpc
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2, forecast_service_pb2_grpc
from forecast.v1 import forecast_service_pb2 as pb
from tests.functional.test_bad_input import details

pytestmark = pytest.mark.functional

Stub = forecast_service_pb2_grpc.ForecastServiceStub
DAYS = pd.date_range("2023-01-02", periods=728, freq="D", tz="UTC")
WEEKLY = (0.0, -20.0, -15.0, -5.0, 10.0, 60.0, 40.0)  # Monday..Sunday
SALES = [
    300.0 + 0.05 * i + WEEKLY[d.weekday()] + 8.0 * math.sin(i * 1.7) for i, d in enumerate(DAYS)
]


def dated(**fields: object) -> pb.ForecastRequest:
    start = timestamp_pb2.Timestamp()
    start.FromNanoseconds(int(DAYS[0].value))
    return pb.ForecastRequest(history=SALES, start=start, frequency="D", **fields)  # type: ignore[arg-type]


def test_the_quantile_model_forecasts_daily_sales_in_their_range(stub: Stub) -> None:
    answer = stub.Forecast(
        dated(model="quantile_mlp", horizon=14, interval_coverages=[0.8, 0.95]), timeout=10
    )
    assert len(answer.values) == 14 and answer.sequence_length == 56
    assert all(240.0 < v < 420.0 for v in answer.values), list(answer.values)
    saturday = [v for v, t in zip(answer.values, answer.timestamps, strict=True) if
                pd.Timestamp(t.ToNanoseconds(), tz="UTC").weekday() == 5]  # fmt: skip
    monday = [v for v, t in zip(answer.values, answer.timestamps, strict=True) if
              pd.Timestamp(t.ToNanoseconds(), tz="UTC").weekday() == 0]  # fmt: skip
    assert min(saturday) > max(monday)  # the weekly peak is on the right day
    wide = next(i for i in answer.intervals if i.coverage == 0.95)
    assert min(wide.lower) > 0.0
    assert all(
        lo <= v <= hi for lo, v, hi in zip(wide.lower, answer.values, wide.upper, strict=True)
    )
    assert "model quantiles" in answer.uncertainty.method


def test_seasonal_naive_repeats_last_week(stub: Stub) -> None:
    answer = stub.Forecast(dated(model="seasonal_naive", horizon=7), timeout=10)
    assert list(answer.values) == pytest.approx(SALES[-7:], rel=1e-6)


def test_the_weekly_lstm_refuses_daily_sales(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        stub.Forecast(dated(model="lstm_timeseries"), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(refused.value)
    assert fields == ["frequency"] and info.reason == "FREQUENCY_NOT_SUPPORTED"


def test_moving_average_flags_its_co2_band_on_daily_sales(stub: Stub) -> None:
    answer = stub.Forecast(
        dated(model="moving_average", version="1", interval_coverages=[0.8]), timeout=10
    )
    assert answer.uncertainty.status == forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED
    assert "W-SAT data, this series is D" in answer.uncertainty.detail
