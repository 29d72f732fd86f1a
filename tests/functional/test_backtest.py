"""Backtest through the real gateway and Triton: exact scores, batched windows, a verdict.

seasonal_naive is exact (step h repeats the point one season before the
origin), so its scores are computed here from the series itself; the
windows' rows reach Triton as a handful of multi-row requests, read from
Triton's own statistics.
"""

from __future__ import annotations

import math

import grpc
import numpy as np
import pandas as pd
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import timestamp_pb2

from bench.triton_stats import TritonCounters
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.functional.test_bad_input import details
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

Stub = forecast_service_pb2_grpc.ForecastServiceStub
DAYS = pd.date_range("2024-01-01", periods=400, freq="D", tz="UTC")
# Daily sales: a trend, a Saturday peak and a little noise.
NOISE = np.random.default_rng(7).normal(scale=2.0, size=len(DAYS))
SALES = [
    300.0 + 0.4 * i + (60.0 if d.weekday() == 5 else 0.0) + float(NOISE[i])
    for i, d in enumerate(DAYS)
]
START = timestamp_pb2.Timestamp()
START.FromNanoseconds(int(DAYS[0].value))


def seasonal_naive_mae(values: list[float], horizon: int, n_windows: int, step: int) -> float:
    """MAE of y[o - 7 + ((h - 1) mod 7)] over every held-out point (season 7: daily)."""
    series = np.asarray(values, dtype=np.float32).astype(np.float64)
    errors = []
    for k in range(n_windows):
        origin = len(series) - horizon - step * (n_windows - 1 - k)
        forecast = [series[origin - 7 + (h % 7)] for h in range(horizon)]
        errors.extend(np.abs(series[origin : origin + horizon] - forecast))
    return float(np.mean(errors))


def backtest(**fields: object) -> pb.BacktestRequest:
    settings: dict[str, object] = {
        "model": "seasonal_naive",
        "series": [pb.Series(id="sales", history=SALES, start=START, frequency="D")],
        "horizon": 14,
        "n_windows": 20,
        "step": 7,
        "sequence_length": 28,
        **fields,
    }
    return pb.BacktestRequest(**settings)  # type: ignore[arg-type]


def counters(triton: TritonProcess, model: str) -> TritonCounters:
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        return TritonCounters.from_json(client.get_inference_statistics(model, "1", as_json=True))


def test_seasonal_naive_scores_are_exact(stub: Stub) -> None:
    answer = stub.Backtest(
        backtest(targets=[pb.BacktestTarget(version="1")], per_window=True), timeout=60
    )
    (result,) = answer.results
    assert (result.model, result.version, result.windows) == ("seasonal_naive", "1", 20)
    assert result.mae == pytest.approx(seasonal_naive_mae(SALES, 14, 20, 7), rel=1e-6)
    first = result.window_scores[0]
    assert first.origin == 400 - 14 - 7 * 19
    assert first.origin_time.ToNanoseconds() == int(DAYS[first.origin].value)
    assert "seasonal naive, season 7 (D)" in answer.scale


def test_windows_reach_triton_as_a_few_multi_row_requests(
    stub: Stub, triton: TritonProcess
) -> None:
    before = counters(triton, "seasonal_naive")
    answer = stub.Backtest(
        backtest(n_windows=200, step=1, targets=[pb.BacktestTarget(version="1")]), timeout=60
    )
    after = counters(triton, "seasonal_naive")
    assert answer.results[0].windows == 200
    assert after.inferences - before.inferences == 200
    # One group of 200 rows (max_batch_size 256): one request, where unary calls take 200.
    assert after.requests - before.requests == 1


def test_a_seasonal_model_beats_a_moving_average_on_weekly_sales(stub: Stub) -> None:
    answer = stub.Backtest(
        backtest(
            targets=[
                pb.BacktestTarget(version="1"),
                pb.BacktestTarget(model="moving_average", version="1"),
            ]
        ),
        timeout=60,
    )
    naive, average = answer.results
    assert naive.mase < average.mase
    (comparison,) = answer.comparisons
    assert (comparison.target_a, comparison.target_b) == ("seasonal_naive:1", "moving_average:1")
    assert comparison.windows == 20 and comparison.lag == 1  # 14-step windows 7 apart overlap
    assert comparison.significant and comparison.p_value < 0.05
    assert comparison.verdict.startswith("seasonal_naive:1 is more accurate"), comparison.verdict
    assert not math.isnan(comparison.statistic)


def test_a_target_not_declared_for_the_frequency_is_refused(stub: Stub) -> None:
    # lstm_timeseries is declared for weekly series only (its config.pbtxt).
    with pytest.raises(grpc.RpcError) as caught:
        stub.Backtest(
            backtest(targets=[pb.BacktestTarget(model="lstm_timeseries", version="2")]),
            timeout=60,
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    _, fields = details(caught.value)
    assert "series[0].frequency" in fields
    assert "target lstm_timeseries:2" in str(caught.value.details())
