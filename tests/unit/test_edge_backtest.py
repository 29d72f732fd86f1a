"""Backtest through the whole gateway in process (fake backend): windows, scores, batching,
comparisons, errors, and nothing recorded live.

The fake's versions forecast plain functions of the window (lstm_timeseries
v2 and moving_average v2: the last value; moving_average v1: the mean of the
last 10 points), so every expected score here is computed from the series
by the test itself.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backtest.runner import CHUNK_WINDOWS
from tests.edge import (
    LSTM,
    MA,
    SHIPPED_ROUTING,
    details,
    failure,
    key_routed_to,
    routing_file,
    serving,
    until_answers,
)

SERIES = [10.0 + 3.0 * math.sin(i / 2.0) + 0.05 * i for i in range(120)]
OTHER = [50.0 + (i % 9) - 0.1 * i for i in range(90)]


def expected_last_value_mae(series: list[float], horizon: int, n_windows: int, step: int) -> float:
    """MAE over every held-out point of the forecast "last point before the origin"."""
    values = np.asarray(series)
    errors = []
    for k in range(n_windows):
        origin = len(values) - horizon - step * (n_windows - 1 - k)
        errors.extend(np.abs(values[origin : origin + horizon] - values[origin - 1]))
    return float(np.mean(errors))


def request(**fields: object) -> pb.BacktestRequest:
    settings: dict[str, object] = {
        "model": MA,
        "series": [pb.Series(id="a", history=SERIES), pb.Series(id="b", history=OTHER)],
        "horizon": 6,
        "n_windows": 5,
        "targets": [pb.BacktestTarget(version="1"), pb.BacktestTarget(version="2")],
        **fields,
    }
    return pb.BacktestRequest(**settings)  # type: ignore[arg-type]


async def test_scores_every_window_of_every_target(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        answer = await edge.stub.Backtest(request(step=3, per_window=True))
    assert [(r.model, r.version, r.windows) for r in answer.results] == [
        (MA, "1", 10),
        (MA, "2", 10),
    ]
    assert (answer.horizon, answer.n_windows, answer.step) == (6, 5, 3)
    last_value = answer.results[1]
    both = [
        expected_last_value_mae(SERIES, 6, 5, 3) * 30,
        expected_last_value_mae(OTHER, 6, 5, 3) * 30,
    ]
    assert last_value.mae == pytest.approx(sum(both) / 60, rel=1e-5)
    assert [s.step for s in last_value.steps] == [1, 2, 3, 4, 5, 6]
    windows = [(w.series_id, w.window, w.origin) for w in last_value.window_scores]
    assert windows == [("a", k, 120 - 6 - 3 * (4 - k)) for k in range(5)] + [
        ("b", k, 90 - 6 - 3 * (4 - k)) for k in range(5)
    ]
    assert "naive (no frequency given)" in answer.scale


async def test_windows_go_to_the_backend_as_multi_row_requests(tmp_path: Path) -> None:
    long = [float(i % 13) + 0.01 * i for i in range(1200)]
    async with serving(tmp_path) as edge:
        edge.backend.calls.clear()
        answer = await edge.stub.Backtest(
            request(
                series=[pb.Series(id="long", history=long)],
                horizon=4,
                n_windows=300,
                step=1,
                targets=[pb.BacktestTarget(version="2")],
            )
        )
        calls = list(edge.backend.calls)
    assert answer.results[0].windows == 300
    assert sum(call.rows for call in calls) == 300
    assert len(calls) == math.ceil(300 / 256)  # the fake's max_batch_size


async def test_targets_of_several_models_are_compared_on_the_same_windows(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        answer = await edge.stub.Backtest(
            request(
                targets=[pb.BacktestTarget(version="1"), pb.BacktestTarget(model=LSTM, version="2")]
            )
        )
    assert [f"{r.model}:{r.version}" for r in answer.results] == [f"{MA}:1", f"{LSTM}:2"]
    (comparison,) = answer.comparisons
    assert (comparison.target_a, comparison.target_b) == (f"{MA}:1", f"{LSTM}:2")
    assert comparison.windows == 10
    assert "Diebold-Mariano" in comparison.test
    assert comparison.verdict
    assert comparison.mase_a == pytest.approx(answer.results[0].mase, rel=1e-9)


async def test_default_targets_are_the_ready_versions(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        answer = await edge.stub.Backtest(request(targets=[]))
    assert [r.version for r in answer.results] == ["1", "2"]
    assert len(answer.comparisons) == 1


async def test_nothing_live_changes(tmp_path: Path) -> None:
    # A split with a 100% shadow: a live Forecast is counted and shadowed, a backtest is not.
    store = tmp_path / "experiments.sqlite3"
    async with serving(tmp_path, routing_file=routing_file(tmp_path, SHIPPED_ROUTING)) as edge:
        await edge.stub.Backtest(
            request(
                model=LSTM,
                targets=[pb.BacktestTarget(version="1"), pb.BacktestTarget(version="2")],
                interval_coverages=[0.8],
            )
        )
        await edge.gateway.forecaster.drain_shadows()
        report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
        # The control: routed to v2 and shadowed on v1 (a key v1 gets would not be shadowed).
        control = pb.ForecastRequest(model=LSTM, history=SERIES, routing_key=key_routed_to("2"))
        await edge.stub.Forecast(control)

        async def control_counted() -> bool:
            live = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
            return sum(v.requests_served + v.requests_shadowed for v in live.versions) == 2

        await until_answers(control_counted, "the control's served and shadow forecasts")
    assert sum(v.requests_served + v.requests_shadowed for v in report.versions) == 0
    with sqlite3.connect(store) as db:
        (predictions,) = db.execute("SELECT COUNT(*) FROM predictions").fetchone()
    assert predictions == 2  # the control's served and shadow forecasts only


async def test_series_with_time_report_origin_times_and_a_seasonal_scale(tmp_path: Path) -> None:
    start = timestamp_pb2.Timestamp(seconds=1_700_000_000 - 1_700_000_000 % 86400)
    series = pb.Series(id="daily", history=SERIES, start=start, frequency="D")
    async with serving(tmp_path) as edge:
        answer = await edge.stub.Backtest(
            request(
                series=[series],
                n_windows=2,
                per_window=True,
                targets=[pb.BacktestTarget(version="2")],
            )
        )
    first = answer.results[0].window_scores[0]
    assert first.origin == 120 - 6 - 6
    assert first.origin_time.seconds == start.seconds + first.origin * 86400
    assert "seasonal naive, season 7 (D)" in answer.scale


async def test_a_series_too_short_is_named(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(
            edge.stub.Backtest(request(series=[pb.Series(id="tiny", history=SERIES[:20])]))
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = details(error).violations
    assert field == "series[0].history"
    assert "'tiny' has 20 points" in description


async def test_a_window_shorter_than_the_version_reads_names_series_window_and_target(
    tmp_path: Path,
) -> None:
    # lstm_timeseries v2 reads 52 points: the first origin (120 - 6*12 = 48) leaves too few.
    async with serving(tmp_path) as edge:
        error = await failure(
            edge.stub.Backtest(
                request(
                    series=[pb.Series(id="a", history=SERIES)],
                    n_windows=12,
                    model=LSTM,
                    targets=[pb.BacktestTarget(version="2")],
                )
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    ((field, description),) = details(error).violations
    assert field == "series[0].history"
    assert "series 'a', window 0 (origin 48), target lstm_timeseries:2" in description


async def test_start_backtest_refuses_a_window_too_short_before_an_operation_exists(
    tmp_path: Path,
) -> None:
    short = request(
        series=[pb.Series(id="a", history=SERIES)],
        n_windows=12,
        model=LSTM,
        targets=[pb.BacktestTarget(version="2")],
    )
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.StartBacktest(short))
        operations = await edge.gateway.operations.store.page("", 10, None)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "window 0 (origin 48), target lstm_timeseries:2" in (error.details() or "")
    assert operations == []


async def test_planning_leaves_the_loop_free_between_chunks(tmp_path: Path) -> None:
    """An operation's lease renewals run on the same loop: planning must not hold it."""
    long = [10.0 + (i % 7) + 0.01 * i for i in range(1100)]
    query = request(
        series=[pb.Series(id=name, history=long) for name in ("a", "b", "c")],
        horizon=3,
        n_windows=1000,
        step=1,
    )
    async with serving(tmp_path) as edge:
        planner = edge.gateway.forecaster.planner
        plan_query = planner.plan_query
        since_tick = [0]
        most = [0]
        planned = [0]

        def counted(index: int, item: Any) -> Any:
            since_tick[0] += 1
            planned[0] += 1
            most[0] = max(most[0], since_tick[0])
            return plan_query(index, item)

        async def tick() -> None:
            while True:
                since_tick[0] = 0
                await asyncio.sleep(0)

        planner.plan_query = counted  # type: ignore[method-assign,assignment]
        ticker = asyncio.create_task(tick())
        try:
            await edge.stub.Backtest(query)
        finally:
            ticker.cancel()
    assert planned[0] == 2 * 3 * 1000  # every window of both targets
    assert most[0] <= 2 * CHUNK_WINDOWS  # at most one chunk per target between loop turns


async def test_layout_and_targets_are_checked(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        bad = await failure(edge.stub.Backtest(request(horizon=0, n_windows=0, step=-1)))
        unknown = await failure(
            edge.stub.Backtest(request(targets=[pb.BacktestTarget(version="9")]))
        )
        other = await failure(
            edge.stub.Backtest(request(targets=[pb.BacktestTarget(model="nope", version="1")]))
        )
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert set(details(bad).fields) == {
        "horizon",
        "n_windows",
        "step",
    }
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert other.code() is grpc.StatusCode.NOT_FOUND


async def test_interval_scores_say_whether_the_intervals_were_calibrated(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        answer = await edge.stub.Backtest(
            request(
                interval_coverages=[0.8],
                quantile_levels=[0.9],
                targets=[pb.BacktestTarget(version="2")],
            )
        )
    (interval,) = answer.results[0].intervals
    assert interval.coverage == 0.8
    # No calibration files in the edge config: no interval exists, its scores are NaN.
    assert interval.status == forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED
    assert math.isnan(interval.observed)
    (quantile,) = answer.results[0].quantiles
    assert quantile.level == 0.9
