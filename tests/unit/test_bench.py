"""`make bench`'s own logic: the time cells' requests, plan and ratios (no server started)."""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pytest

from bench import backtestcost, modelcost, procs, report, runner, timecost
from bench.__main__ import parse_args, settings_from
from bench.drivers import GatewayUnary
from bench.loadgen import CellSpec, make_client
from bench.runner import BenchSettings
from bench.services import Services
from bench.workload import Workload
from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backtest.windows import Layout


def request(points: int = 10) -> pb.ForecastRequest:
    return pb.ForecastRequest(model="m", history=[float(i) for i in range(points)], horizon=5)


def days(built: pb.ForecastRequest, on: timecost.Grid = timecost.GRIDS["D"]) -> list[int]:
    """The timestamps as steps of `on` from its first point (asserting they lie on it)."""
    offsets = [t.seconds - on.start_s for t in built.timestamps]
    assert all(offset % on.step_s == 0 for offset in offsets), offsets
    return [offset // on.step_s for offset in offsets]


def test_no_time_leaves_the_request_as_it_was() -> None:
    assert timecost.with_time(request(), "none") == request()


def test_start_and_monthly_set_start_and_frequency_only() -> None:
    daily = timecost.with_time(request(), "start")
    assert (daily.start.seconds, daily.frequency) == (timecost.START_S, "D")
    monthly = timecost.with_time(request(), "monthly")
    assert (monthly.start.seconds, monthly.frequency) == (timecost.START_S, "MS")
    for built in (daily, monthly):
        assert not built.timestamps and built.fill == forecast_pb2.FILL_METHOD_UNSPECIFIED


def test_timestamps_are_one_day_per_point() -> None:
    built = timecost.with_time(request(), "timestamps")
    assert days(built) == list(range(10))
    assert built.frequency == "D" and not built.HasField("start")
    assert built.fill == forecast_pb2.FILL_METHOD_UNSPECIFIED


def test_the_weekly_grid_is_saturdays_a_week_apart() -> None:
    weekly = timecost.grid("W-SAT")
    assert datetime.fromtimestamp(weekly.start_s, UTC).strftime("%A %Y-%m-%d") == (
        "Saturday 2024-01-06"
    )
    built = timecost.with_time(request(), "timestamps", weekly)
    assert days(built, weekly) == list(range(10)) and built.frequency == "W-SAT"
    started = timecost.with_time(request(), "start", weekly)
    assert (started.start.seconds, started.frequency) == (weekly.start_s, "W-SAT")
    monthly = timecost.with_time(request(), "monthly", weekly)  # month starts, whatever the grid
    assert (monthly.start.seconds, monthly.frequency) == (timecost.START_S, "MS")
    with pytest.raises(ValueError, match="no time grid"):
        timecost.grid("MS")


@pytest.mark.parametrize("frequency", ["D", "W-SAT"])
@pytest.mark.parametrize("points", [10, 12, 52])
def test_gaps_leave_two_points_missing_inside_the_window_and_fill_linearly(
    points: int, frequency: str
) -> None:
    on = timecost.grid(frequency)
    built = timecost.with_time(request(points), "gaps", on)
    grid = range(points + timecost.GAP_POINTS)  # first to last timestamp, one a step
    missing = sorted(set(grid) - set(days(built, on)))
    assert len(built.timestamps) == points == len(built.history)
    assert len(missing) == timecost.GAP_POINTS == timecost.filled_points("gaps")
    window = list(grid)[-points:]  # the last `points` grid points: what a version reads
    assert all(day in window for day in missing), (missing, window)
    assert days(built, on)[0] == 0 and days(built, on)[-1] == grid[-1]  # the ends are observed
    assert built.fill == forecast_pb2.FILL_METHOD_LINEAR and built.frequency == frequency


def test_an_unknown_time_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="hourly"):
        timecost.with_time(request(), "hourly")


def test_only_the_gaps_fill_points() -> None:
    assert {k: timecost.filled_points(k) for k in timecost.TIMES} == {
        "none": 0,
        "start": 0,
        "monthly": 0,
        "timestamps": 0,
        "gaps": 2,
    }


class Stub:
    """A ForecastService stub answering one fixed reply."""

    def __init__(self, reply: pb.ForecastResponse) -> None:
        self.reply = reply
        self.requests: list[pb.ForecastRequest] = []

    async def Forecast(self, request: pb.ForecastRequest, **_: float) -> pb.ForecastResponse:
        self.requests.append(request)
        return self.reply


def reply(timestamps: int = 0, filled: int = 0) -> pb.ForecastResponse:
    response = pb.ForecastResponse(values=[1.0] * 5, filled_points=filled)
    for step in range(timestamps):
        response.timestamps.add(seconds=step)
    return response


@pytest.mark.parametrize(
    ("time", "good", "bad"),
    [
        ("none", reply(), reply(timestamps=5)),
        ("start", reply(timestamps=5), reply()),
        ("timestamps", reply(timestamps=5), reply(timestamps=4)),
        ("gaps", reply(timestamps=5, filled=2), reply(timestamps=5)),
    ],
)
async def test_a_time_cell_counts_a_series_only_with_its_timestamps_and_fills(
    time: str, good: pb.ForecastResponse, bad: pb.ForecastResponse
) -> None:
    workload = Workload(pool_size=4)
    client = GatewayUnary("127.0.0.1:1", workload, time=time)
    try:
        expected = timecost.with_time(request(), time, timecost.grid(workload.frequency))
        for sent in client.requests:
            assert (sent.frequency, sent.start, sent.timestamps) == (
                expected.frequency,
                expected.start,
                expected.timestamps,
            )
            assert sent.fill == expected.fill and len(sent.history) == 10
        stub = Stub(good)
        client.stubs = [stub]  # type: ignore[list-item]
        assert await client(0) == (1, 0)
        stub.reply = bad
        assert await client(1) == (0, 1)
        assert stub.requests == client.requests[:2]
    finally:
        await client.close()


async def test_a_time_spec_builds_a_timed_gateway_client() -> None:
    line = (
        '{"name": "time gaps c=1 #2", "kind": "time", "time": "gaps", "time_round": 2,'
        ' "target": "127.0.0.1:1", "concurrency": 1, "seconds": 1.0, "warmup_seconds": 0.1,'
        ' "max_calls": 10, "triton_url": "127.0.0.1:2", "watch": {}, "rss_pid": 0,'
        ' "workload": {"pool_size": 2}}'
    )
    spec = CellSpec.from_json(line)
    assert (spec.time, spec.time_round) == ("gaps", 2)
    client = make_client(spec)
    assert isinstance(client, GatewayUnary)
    assert client.filled == 2 and client.timestamps == spec.workload.horizon
    assert all(r.fill == forecast_pb2.FILL_METHOD_LINEAR for r in client.requests)
    await client.close()  # a grpc.aio channel: made in the test's own event loop


@pytest.mark.parametrize(
    ("measured", "levels"),
    [((1, 8, 32, 64, 256), (1, 64)), ((1, 8), (1, 8)), ((64,), (64,)), ((8, 32), (8, 32))],
)
def test_time_cells_run_at_the_lowest_and_the_targets_concurrency(
    measured: tuple[int, ...], levels: tuple[int, ...]
) -> None:
    assert timecost.concurrencies(measured) == levels


def test_each_round_measures_no_time_first_then_each_kind_at_each_concurrency() -> None:
    cells = timecost.plan((1, 64), rounds=2)
    assert [(c["time_round"], c["concurrency"], c["time"]) for c in cells] == [
        (r, c, k) for r in (1, 2) for c in (1, 64) for k in ("none", "start", "timestamps", "gaps")
    ]
    assert {c["kind"] for c in cells} == {"time"}
    assert len({c["name"] for c in cells}) == len(cells)


class FakeServices:
    """The attributes of Services that `runner.plan` reads."""

    gateway_target = "127.0.0.1:1"
    triton_url = "127.0.0.1:2"
    baseline_target = "127.0.0.1:3"
    floor_targets: ClassVar[dict[str, str]] = {"proxy": "127.0.0.1:4", "echo": "127.0.0.1:5"}

    def pids(self) -> dict[str, list[int]]:
        return {"gateway": [11], "triton": [12]}


def planned(settings: BenchSettings) -> list[dict[str, Any]]:
    return runner.plan(settings, cast(Services, FakeServices()))


def test_the_default_run_has_the_time_cells_after_the_unary_ones_with_their_own_seconds() -> None:
    cells = planned(BenchSettings())
    kinds = [c["kind"] for c in cells]
    first, last = kinds.index("time"), len(kinds) - 1 - kinds[::-1].index("time")
    assert set(kinds[:first]) == set(runner.UNARY_ORDER)
    assert kinds[first : last + 1] == ["time"] * 8
    assert set(kinds[last + 1 :]) == {"batch", "stream", "models", "backtest"}
    timed = cells[first : last + 1]
    assert {c["concurrency"] for c in timed} == {1, 64}
    assert {c["seconds"] for c in timed} == {BenchSettings().time_seconds}
    untimed = [c for c in cells if c["kind"] not in ("time", "models")]
    assert {c["seconds"] for c in untimed} == {BenchSettings().cell_seconds}
    assert {c["target"] for c in timed} == {FakeServices.gateway_target}
    assert all(c["max_calls"] == BenchSettings().max_calls for c in timed)


def test_only_time_runs_the_time_cells_and_starts_only_triton_and_the_gateway() -> None:
    settings = settings_from(parse_args(["--only", "time", "--time-rounds", "3"]))
    assert settings.sections == ("time",) and settings.time_rounds == 3
    cells = planned(settings)
    assert len(cells) == 3 * 2 * 4 and {c["kind"] for c in cells} == {"time"}
    assert runner.services_for(settings.sections) == {"with_baseline": False, "floor_kinds": ()}
    assert runner.services_for(runner.SECTIONS) == {
        "with_baseline": True,
        "floor_kinds": ("proxy", "echo"),
    }


def test_seconds_sets_every_cell_and_smoke_keeps_the_time_cells_short() -> None:
    settings = settings_from(parse_args(["--only", "time", "--seconds", "2"]))
    assert (settings.cell_seconds, settings.time_seconds) == (2.0, 2.0)
    smoke = settings_from(parse_args(["--smoke", "--only", "time"]))
    assert smoke.time_seconds == 1.0 and timecost.concurrencies(smoke.concurrencies) == (1, 8)
    assert settings_from(parse_args(["--sections", "gateway,time"])).sections == (
        "gateway",
        "time",
    )


@pytest.mark.parametrize(
    "argv", [["--only", "time", "--sections", "gateway"], ["--only", "gw"], ["--time-rounds", "0"]]
)
def test_bad_time_flags_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        settings_from(parse_args(argv))


def cell(time: str, concurrency: int, round_: int, sps: float, cpu_us: float, p50: float) -> Any:
    return {
        "name": f"time {time} c={concurrency} #{round_}",
        "kind": "time",
        "time": time,
        "time_round": round_,
        "concurrency": concurrency,
        "batch_size": 1,
        "status": "ok",
        "series_per_s": sps,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "cpu_us_per_call": {"gateway": cpu_us, "triton": 300.0},
    }


def test_time_ratios_are_against_no_time_of_the_same_round_and_concurrency() -> None:
    cells = [
        cell("none", 1, 1, 200.0, 2000.0, 4.0),
        cell("start", 1, 1, 190.0, 2100.0, 4.2),
        cell("none", 1, 2, 100.0, 1000.0, 8.0),  # a slower round: its own baseline
        cell("start", 1, 2, 80.0, 1200.0, 8.8),
        cell("none", 64, 1, 800.0, 900.0, 80.0),
        cell("start", 64, 1, 720.0, 990.0, 88.0),
    ]
    rows = {(r["concurrency"], r["time"]): r for r in timecost.compute_ratios(cells)}
    assert set(rows) == {(c, k) for c in (1, 64) for k in ("start", "timestamps", "gaps")}
    c1 = rows[(1, "start")]
    assert [p["series_per_s"] for p in c1["rounds"]] == [0.95, 0.8]
    assert [p["cpu_per_call"] for p in c1["rounds"]] == [1.05, 1.2]
    assert [p["cpu_us_added"] for p in c1["rounds"]] == [100.0, 200.0]
    assert [p["p50"] for p in c1["rounds"]] == [1.05, 1.1]
    assert (c1["series_per_s"], c1["cpu_per_call"], c1["cpu_us_added"]) == (0.875, 1.125, 150.0)
    c64 = rows[(64, "start")]
    assert (c64["series_per_s"], c64["cpu_per_call"], c64["cpu_us_added"], c64["p50"]) == (
        0.9,
        1.1,
        90.0,
        1.1,
    )
    assert [p["round"] for p in c64["rounds"]] == [1, 2]  # round 2 has no c=64 cells
    assert c64["rounds"][1]["cpu_per_call"] is None
    assert rows[(1, "gaps")]["cpu_per_call"] is None  # not measured


def test_a_failed_cell_gives_no_ratio() -> None:
    failed = {**cell("gaps", 1, 1, 0.0, 0.0, 1.0), "status": "failed"}
    rows = timecost.compute_ratios([cell("none", 1, 1, 200.0, 2000.0, 4.0), failed])
    gaps = next(r for r in rows if r["time"] == "gaps")
    assert gaps["series_per_s"] is None and gaps["cpu_us_added"] is None


def test_the_time_ratios_text_names_each_kind_and_its_range_over_rounds() -> None:
    cells = [
        cell("none", 1, 1, 200.0, 2000.0, 4.0),
        cell("timestamps", 1, 1, 180.0, 2200.0, 4.4),
        cell("none", 1, 2, 200.0, 2000.0, 4.0),
        cell("timestamps", 1, 2, 190.0, 2100.0, 4.2),
    ]
    text = timecost.format_ratios(timecost.compute_ratios(cells))
    assert "against the gateway without time" in text and "median of 2 rounds" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("timestamps"))
    assert line.split()[:2] == ["timestamps", "1"]
    assert "0.93x [0.90-0.95]" in line  # series/s
    assert "1.07x [1.05-1.10] (+150 us [+100..+200])" in line  # gateway CPU per call
    assert "1.07x [1.05-1.10]" in line.split("us")[-1]  # p50
    assert next(x for x in text.splitlines() if x.strip().startswith("gaps")).count("-") >= 3
    single = timecost.format_ratios(timecost.compute_ratios(cells[:2]))
    assert "one round" in single and "[" not in single.split("\n", 2)[2]
    assert timecost.format_ratios([]) == ""


def test_the_table_labels_time_cells_and_shows_the_gateways_cpu() -> None:
    measured = {
        **cell("gaps", 64, 2, 750.0, 1234.0, 80.0),
        "latency_ms": {"p50": 80.0, "p99": 160.0},
        "triton": {"avg_batch": 4.2, "queue_us": 900},
        "cpu_cores": {"gateway": 0.93, "triton": 0.5, "loadgen": 0.2, "other": 0.0},
        "rss_mb": {"gateway_max": 101.0},
        "errors": 0,
        "failed_series": 0,
    }
    table = report.format_table([measured])
    row = table.splitlines()[1]
    assert row.startswith("gateway time=gaps #2") and " 1,234 " in row and " 0.93 " in row
    assert report.server_us_per_call(measured) == 1234.0


def test_the_report_leaves_out_the_targets_when_only_time_ran(tmp_path: Path) -> None:
    results = {
        "settings": {"sections": ["time"], "smoke": False},
        "machine": {"cores": 2},
        "cells": [],
        "ratios": report.compute_ratios([], [1, 64], [32]),
        "targets": [],
        "retired": [],
        "time_ratios": timecost.compute_ratios([cell("none", 1, 1, 200.0, 2000.0, 4.0)]),
        "max_other_cores": 0.0,
        "duration_s": 1.0,
    }
    out = io.StringIO()
    runner.write_report(results, tmp_path / "r.json", out)
    text = out.getvalue()
    assert "time per request" in text
    assert "retired targets" not in text and "gateway/minimal proxy" not in text


def model_spec(variant: str) -> CellSpec:
    cells = runner.plan(
        BenchSettings(sections=("models",), concurrencies=(1, 32)), cast(Services, FakeServices())
    )
    spec = next(c for c in cells if c["variant"] == variant and c["concurrency"] == 1)
    return CellSpec.from_json(
        json.dumps({**spec, "workload": {**spec["workload"], "pool_size": 2}})
    )


@pytest.mark.parametrize(
    ("variant", "model", "version", "coverages"),
    [
        ("lstm_timeseries v2", "lstm_timeseries", "2", []),
        ("moving_average v1", "moving_average", "1", []),
        ("seasonal_naive v1", "seasonal_naive", "1", []),
        ("quantile_mlp v1", "quantile_mlp", "1", []),
        ("quantile_mlp v1 +intervals", "quantile_mlp", "1", [0.8, 0.95]),
    ],
)
async def test_a_model_cell_sends_400_weekly_points_to_its_model_version(
    variant: str, model: str, version: str, coverages: list[float]
) -> None:
    spec = model_spec(variant)
    assert (spec.kind, spec.variant, spec.seconds) == ("models", variant, 3.0)
    client = make_client(spec)
    assert isinstance(client, GatewayUnary)
    assert client.intervals == len(coverages) and client.timestamps == 12
    for built in client.requests:
        assert (built.model, built.version, built.horizon) == (model, version, 12)
        assert len(built.history) == 400 and list(built.interval_coverages) == coverages
        assert (built.frequency, built.start.seconds) == ("W-SAT", timecost.GRIDS["W-SAT"].start_s)
        assert not built.timestamps and built.sequence_length == 0  # each version's own window
    await client.close()  # a grpc.aio channel: made in the test's own event loop


def test_model_cells_run_each_kind_after_the_lstm_at_c1_and_c32() -> None:
    cells = planned(settings_from(parse_args(["--only", "models"])))
    assert [(c["concurrency"], c["variant"]) for c in cells] == [
        (c, v) for c in (1, 32) for v in modelcost.CELL_VARIANTS
    ]
    assert modelcost.CELL_VARIANTS[0] == "lstm_timeseries v2"
    assert {c["kind"] for c in cells} == {"models"}
    assert {c["target"] for c in cells} == {FakeServices.gateway_target}
    assert len({c["name"] for c in cells}) == len(cells)
    assert runner.services_for(("models",)) == {"with_baseline": False, "floor_kinds": ()}
    assert modelcost.concurrencies((1, 8)) == (1, 8)  # the smoke run
    assert "models" in BenchSettings().sections
    with pytest.raises(ValueError, match="unknown model variant"):
        modelcost.variant("prophet v1")


def model_cell(
    variant: str, concurrency: int, calls: float, p50: float, gw: float, tr: float
) -> Any:
    return {
        "name": f"models {variant} c={concurrency}",
        "kind": "models",
        "variant": variant,
        "concurrency": concurrency,
        "batch_size": 1,
        "status": "ok",
        "series_per_s": calls,
        "calls_per_s": calls,
        "latency_ms": {"p50": p50, "p99": 2 * p50},
        "cpu_us_per_call": {"gateway": gw, "triton": tr},
    }


def test_model_ratios_are_against_the_lstm_of_the_same_concurrency() -> None:
    cells = [
        model_cell("lstm_timeseries v2", 1, 100.0, 8.0, 2000.0, 5000.0),
        model_cell("quantile_mlp v1", 1, 250.0, 4.0, 1800.0, 500.0),
        model_cell("lstm_timeseries v2", 32, 400.0, 80.0, 1600.0, 2000.0),
        {**model_cell("quantile_mlp v1", 32, 0.0, 1.0, 0.0, 0.0), "status": "failed"},
    ]
    rows = {(r["concurrency"], r["variant"]): r for r in modelcost.compute_ratios(cells)}
    assert set(rows) == {(c, v) for c in (1, 32) for v in modelcost.CELL_VARIANTS}
    qmlp = rows[(1, "quantile_mlp v1")]
    assert (qmlp["calls_per_s"], qmlp["gateway_us_per_call"], qmlp["triton_us_per_call"]) == (
        250.0,
        1800.0,
        500.0,
    )
    assert qmlp["ratios"] == {
        "calls_per_s": 2.5,
        "p50_ms": 0.5,
        "p99_ms": 0.5,
        "gateway_us_per_call": 0.9,
        "triton_us_per_call": 0.1,
    }
    assert rows[(1, "lstm_timeseries v2")]["ratios"]["calls_per_s"] == 1.0
    assert rows[(32, "quantile_mlp v1")]["calls_per_s"] is None  # failed: no figure, no ratio
    assert rows[(32, "quantile_mlp v1")]["ratios"]["calls_per_s"] is None
    assert rows[(1, "seasonal_naive v1")]["ratios"]["p50_ms"] is None  # not measured


def test_the_model_text_shows_each_figure_with_its_ratio_and_the_report_prints_it(
    tmp_path: Path,
) -> None:
    cells = [
        model_cell("lstm_timeseries v2", 1, 100.0, 8.0, 2000.0, 5000.0),
        model_cell("quantile_mlp v1 +intervals", 1, 250.0, 4.0, 1800.0, 500.0),
    ]
    rows = modelcost.compute_ratios(cells)
    text = modelcost.format_ratios(rows)
    lines = text.splitlines()
    assert "against lstm_timeseries v2" in lines[0] and "400 points dated W-SAT" in lines[0]
    assert lines[1].split()[:3] == ["model", "conc", "calls/s"]
    row = next(line for line in lines if "+intervals" in line and " 1 " in line)
    for part in ("250 (2.50x)", "4.00 (0.50x)", "8.00 (0.50x)", "1,800 (0.90x)", "500 (0.10x)"):
        assert part in row
    assert "  seasonal_naive v1" in text and " - " in text  # not measured: a dash
    assert modelcost.format_ratios([]) == ""
    label = report.format_table([{**cells[1], "status": "failed", "note": "x"}]).splitlines()[1]
    assert label.startswith("gateway model=quantile_mlp v1 +intervals")
    results = {
        "settings": {"sections": ["models"], "smoke": False},
        "machine": {"cores": 2},
        "cells": [],
        "ratios": report.compute_ratios([], [1, 32], [32]),
        "targets": [],
        "retired": [],
        "time_ratios": [],
        "model_ratios": rows,
        "max_other_cores": 0.0,
        "duration_s": 1.0,
    }
    out = io.StringIO()
    runner.write_report(results, tmp_path / "r.json", out)
    assert "model kinds, Forecast through the gateway" in out.getvalue()
    assert "retired targets" not in out.getvalue()


# The backtest cells (bench.backtestcost): one Backtest against the same windows as Forecast calls.


def test_backtest_cells_run_the_backtest_then_its_windows_each_way_per_round_w_and_version() -> (
    None
):
    cells = planned(settings_from(parse_args(["--only", "backtest"])))
    assert [(c["backtest_round"], c["windows"], c["variant"], c["mode"]) for c in cells] == [
        (r, w, v, m)
        for r in (1, 2, 3)
        for w in (100, 1000)
        for v in ("lstm_timeseries v2", "seasonal_naive v1")
        for m in ("backtest", "unary", "unary_high", "batch")
    ]
    assert {c["concurrency"] for c in cells if c["mode"] == "unary_high"} == {32}
    assert {c["concurrency"] for c in cells if c["mode"] != "unary_high"} == {1}
    assert {c["kind"] for c in cells} == {"backtest"}
    assert {c["target"] for c in cells} == {FakeServices.gateway_target}
    assert len({c["name"] for c in cells}) == len(cells)
    lstm = next(c for c in cells if c["variant"] == "lstm_timeseries v2")
    assert lstm["workload"]["model"] == "lstm_timeseries" and lstm["workload"]["version"] == "2"
    assert lstm["workload"]["window"] == backtestcost.POINTS and lstm["workload"]["pool_size"] == 1
    assert runner.services_for(("backtest",)) == {"with_baseline": False, "floor_kinds": ()}
    default = [c["kind"] for c in planned(BenchSettings())]
    assert default[-len(cells) :] == ["backtest"] * len(cells)  # the last section of make bench


def test_smoke_and_flags_size_the_backtest_cells() -> None:
    smoke = planned(settings_from(parse_args(["--smoke", "--only", "backtest"])))
    assert [(c["windows"], c["variant"], c["mode"], c["concurrency"]) for c in smoke] == [
        (20, v, m, 8 if m == "unary_high" else 1)
        for v in backtestcost.CELL_VARIANTS
        for m in backtestcost.MODES
    ]
    sized = settings_from(
        parse_args(["--only", "backtest", "--backtest-rounds", "2", "--backtest-windows", "50"])
    )
    assert (sized.backtest_rounds, sized.backtest_windows) == (2, (50,))
    for argv in (["--backtest-rounds", "0"], ["--backtest-windows", "1001"]):
        with pytest.raises(SystemExit):
            settings_from(parse_args(argv))


def test_backtest_windows_are_laid_as_the_gateway_lays_them() -> None:
    windows = backtestcost.windows_of(backtestcost.workload("seasonal_naive v1"), 1000)
    layout = Layout(backtestcost.HORIZON, 1000, backtestcost.STEP)
    assert windows.origins == layout.origins(backtestcost.POINTS)
    assert windows.series.shape == (backtestcost.POINTS,)
    assert len(windows.history(0)) >= 364  # seasonal_naive v1's default window
    assert windows.actuals().shape == (1000, backtestcost.HORIZON)
    assert windows.actuals()[-1].tolist() == windows.series[-backtestcost.HORIZON :].tolist()
    assert windows.mae(windows.actuals()) == 0.0


class WindowStub:
    """A gateway that forecasts the last value of each history (Forecast and ForecastBatch)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def Forecast(self, request: pb.ForecastRequest, **_: object) -> pb.ForecastResponse:
        self.calls.append("Forecast")
        return pb.ForecastResponse(values=[request.history[-1]] * request.horizon)

    async def ForecastBatch(
        self, request: pb.ForecastBatchRequest, **_: object
    ) -> pb.ForecastBatchResponse:
        self.calls.append("ForecastBatch")
        return pb.ForecastBatchResponse(
            results=[
                pb.SeriesResult(
                    id=s.id,
                    forecast=forecast_pb2.Forecast(values=[s.history[-1]] * request.horizon),
                )
                for s in request.series
            ]
        )


@pytest.mark.parametrize(("mode", "concurrency"), [("unary", 1), ("unary_high", 4), ("batch", 1)])
async def test_window_calls_send_each_window_once_and_score_the_answers(
    mode: str, concurrency: int
) -> None:
    calls = backtestcost.WindowCalls(
        "127.0.0.1:1",
        backtestcost.workload("lstm_timeseries v2"),
        30,
        mode,
        concurrency,
        message_bytes=40_000,  # a few windows a ForecastBatch call
    )
    stub = WindowStub()
    calls.stub = cast(Any, stub)
    outcome = await calls.run()
    windows = calls.windows
    last_values = np.vstack(
        [np.full(backtestcost.HORIZON, windows.series[o - 1]) for o in windows.origins]
    )
    assert outcome.samples.series == 30 and outcome.samples.failed_series == 0
    assert outcome.mae == pytest.approx(windows.mae(last_values), rel=1e-12)
    if mode == "batch":
        assert 1 < len(stub.calls) < 30 and set(stub.calls) == {"ForecastBatch"}
    else:
        assert stub.calls == ["Forecast"] * 30
    await calls.close()


async def test_window_requests_are_pinned_dated_and_fit_the_message_limit() -> None:
    calls = backtestcost.WindowCalls(
        "127.0.0.1:1", backtestcost.workload("lstm_timeseries v2"), 1000, "batch", 1
    )
    windows = calls.windows
    first = calls.forecast_request(0)
    assert (first.model, first.version, first.horizon) == ("lstm_timeseries", "2", 8)
    assert list(first.history) == windows.series[: windows.origins[0]].tolist()
    assert (first.frequency, first.start.seconds) == ("W-SAT", timecost.GRIDS["W-SAT"].start_s)
    backtest = calls.backtest_request(1000)
    assert (backtest.n_windows, backtest.horizon, backtest.step) == (1000, 8, 1)
    assert [(t.model, t.version) for t in backtest.targets] == [("", "2")]
    assert len(backtest.series[0].history) == backtestcost.POINTS
    assert backtest.series[0].frequency == "W-SAT"
    batches = calls.batch_requests()
    assert [k for numbers, _ in batches for k in numbers] == list(range(1000))
    assert all(r.ByteSize() <= backtestcost.MAX_MESSAGE_BYTES for _, r in batches)
    assert all(r.version == "2" and r.horizon == 8 for _, r in batches)
    await calls.close()
    with pytest.raises(ValueError, match="unknown backtest cell mode"):
        backtestcost.WindowCalls("127.0.0.1:1", Workload(), 1, "stream", 1)


def window_cell(
    mode: str, wps: float, mae: float = 1.5, round_: int = 1, windows: int = 100
) -> dict[str, Any]:
    return {
        "name": f"backtest lstm_timeseries v2 W={windows} {mode} #{round_}",
        "kind": "backtest",
        "variant": "lstm_timeseries v2",
        "windows": windows,
        "mode": mode,
        "backtest_round": round_,
        "concurrency": 32 if mode == "unary_high" else 1,
        "status": "ok",
        "series_per_s": wps,
        "wall_s": windows / wps,
        "calls": 1 if mode == "backtest" else windows,
        "mae": mae,
        "triton": {"requests": 1, "executions": 1, "inferences": windows},
        "rss_mb": {"gateway_max": 150.0},
        "vmhwm_mb": {"before": 150.0, "after": 152.0 if mode == "backtest" else 150.0},
    }


def test_a_unary_cell_whose_mae_differs_from_the_backtests_fails_loudly(tmp_path: Path) -> None:
    cells = [window_cell("backtest", 2000.0, mae=1.5)]
    same = window_cell("unary", 200.0, mae=1.5 * (1 + 1e-8))
    assert backtestcost.check(same, [*cells, same]) is None
    assert same["status"] == "ok" and same["mae_check"] == "equal"
    assert backtestcost.check(cells[0], cells) is None  # the Backtest itself: not checked
    other = window_cell("batch", 1000.0, mae=1.6)
    mismatch = backtestcost.check(other, [*cells, other])
    assert mismatch is not None and mismatch["backtest_mae"] == 1.5
    assert other["status"] == "failed" and "differs from the Backtest's" in other["note"]
    lonely = window_cell("unary", 200.0, round_=2)
    assert backtestcost.check(lonely, [*cells, lonely]) is None
    assert lonely["mae_check"].startswith("unchecked")
    text = backtestcost.format_mismatches([mismatch])
    assert text.startswith("ERROR: backtest check failed: backtest lstm_timeseries v2 W=100 batch")
    results = {
        "settings": {"sections": ["backtest"], "smoke": False, "backtest_concurrency": 32},
        "machine": {"cores": 2},
        "cells": [],
        "ratios": report.compute_ratios([], [1, 32], [32]),
        "targets": [],
        "retired": [],
        "time_ratios": [],
        "model_ratios": [],
        "backtest_ratios": backtestcost.compute_ratios([*cells, same]),
        "backtest_peak_rss_mb": None,
        "backtest_mismatches": [mismatch],
        "max_other_cores": 0.0,
        "duration_s": 1.0,
    }
    out = io.StringIO()
    runner.write_report(results, tmp_path / "r.json", out)
    assert "backtest windows against the same windows" in out.getvalue()
    assert "ERROR: backtest check failed" in out.getvalue()
    assert "retired targets" not in out.getvalue()


def test_backtest_ratios_are_against_the_unary_cells_of_the_same_round() -> None:
    cells = [
        window_cell("backtest", 2000.0),
        window_cell("unary", 200.0),
        window_cell("unary_high", 500.0),
        window_cell("batch", 1000.0),
        window_cell("backtest", 3000.0, round_=2),
        window_cell("unary", 250.0, round_=2),
        window_cell("unary_high", 600.0, round_=2),
        {**window_cell("batch", 1.0, round_=2), "status": "failed"},
    ]
    rows = {(r["variant"], r["windows"], r["mode"]): r for r in backtestcost.compute_ratios(cells)}
    backtest = rows[("lstm_timeseries v2", 100, "backtest")]
    assert [p["over_unary"] for p in backtest["rounds"]] == [10.0, 12.0]
    assert [p["over_unary_high"] for p in backtest["rounds"]] == [4.0, 5.0]
    assert (backtest["over_unary"], backtest["over_unary_high"]) == (11.0, 4.5)
    assert backtest["windows_per_s"] == 2500.0 and backtest["concurrency"] == 1
    assert rows[("lstm_timeseries v2", 100, "unary")]["over_unary"] == 1.0
    batch = rows[("lstm_timeseries v2", 100, "batch")]
    assert batch["windows_per_s"] == 1000.0  # the failed round 2 gives no figure
    assert rows[("lstm_timeseries v2", 100, "unary_high")]["concurrency"] == 32
    text = backtestcost.format_ratios(list(rows.values()), backtestcost.peak_rss(cells), 32)
    lines = text.splitlines()
    assert "median of 2 rounds" in lines[0]
    assert lines[1].split()[:5] == ["model", "W", "way", "conc", "windows/s"]
    assert "vs unary c=32" in lines[1]
    row = next(line for line in lines if "Backtest" in line)
    assert "2,500 [2,000-3,000]" in row and "11.00x [10.00-12.00]" in row
    assert "gateway peak RSS (VmHWM) after the W=100 backtests: 152.0 MB" in text
    assert backtestcost.format_ratios([]) == ""
    label = report.format_table([{**cells[0], "status": "failed", "note": "x"}]).splitlines()[1]
    assert label.startswith("gateway windows lstm_timeseries v2 W=100 backtest #1")


def test_peak_rss_is_read_from_vmhwm() -> None:
    assert procs.peak_rss_bytes(os.getpid()) >= procs.rss_bytes(os.getpid()) > 0
    assert procs.peak_rss_bytes(2**22 + 12345) == 0  # no such process
