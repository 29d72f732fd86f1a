"""`make bench` itself: the smoke run reports every section with sane fields (no timing limits)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bench import backtestcost, modelcost, report
from bench.loadgen import CellSpec, run_cell
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import ROOT

pytestmark = pytest.mark.functional

SECTIONS = {
    "direct",
    "gateway",
    "intervals",
    "proxy",
    "echo",
    "baseline",
    "batch",
    "stream",
    "time",
    "models",
    "backtest",
}
SERVERS = {"gateway", "triton", "baseline", "proxy", "echo", "loadgen"}
UNARY = {"gateway", "intervals", "proxy", "echo", "baseline", "time", "models"}
CPU_GROUPS = SERVERS | {"other", "machine_busy", "machine_idle"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    output = tmp_path_factory.mktemp("bench") / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, json.loads(output.read_text())


def check_measured(cell: dict[str, Any]) -> None:
    assert cell["series"] > 0, cell
    assert cell["series_per_s"] > 0, cell
    assert cell["wall_s"] > 0, cell
    latency = cell["latency_ms"]
    assert 0 < latency["p50"] <= latency["p99"] <= latency["max"], cell
    assert set(cell["cpu_cores"]) == CPU_GROUPS, cell
    assert all(value >= 0 for value in cell["cpu_cores"].values()), cell
    assert set(cell["cpu_us_per_call"]) == SERVERS, cell
    assert cell["rss_mb"]["gateway_max"] > 0, cell
    server = report.SERVER_OF.get(cell["kind"])
    if cell["kind"] in UNARY:  # the process answering ~100 calls used CPU for them
        assert server is not None and cell["cpu_cores"][server] > 0, cell
        assert (report.server_us_per_call(cell) or 0.0) > 0, cell
    triton = cell["triton"]
    if cell["kind"] in {"baseline", "echo"}:
        assert triton["requests"] == 0, cell  # these never touch Triton
    else:
        assert triton["requests"] > 0, cell
        assert triton["avg_batch"] >= 1, cell
        assert triton["inferences"] >= cell["series"], cell


def test_smoke_run_reports_every_section(smoke: tuple[str, dict[str, Any]]) -> None:
    _, results = smoke
    cells = results["cells"]
    assert {cell["kind"] for cell in cells} == SECTIONS
    for cell in cells:
        if cell["kind"] in {"batch", "stream"} and cell["status"] == "skipped":
            assert "UNIMPLEMENTED" in cell["note"]
            continue
        assert cell["status"] == "ok", cell
        check_measured(cell)
    for kind in ("direct", "gateway", "intervals", "proxy", "echo", "baseline"):
        assert sorted(c["concurrency"] for c in cells if c["kind"] == kind) == [1, 8]
    intervals = [c for c in cells if c["kind"] == "intervals"]
    assert all(c["failed_series"] == 0 for c in intervals), intervals  # calibrated: all came back
    proxy = next(c for c in cells if c["kind"] == "proxy")
    assert proxy["triton"]["inferences"] == proxy["triton"]["requests"], proxy  # one row each
    assert sorted(c["batch_size"] for c in cells if c["kind"] == "batch") == [32, 256]
    timed = [c for c in cells if c["kind"] == "time"]
    assert sorted((c["concurrency"], c["time"]) for c in timed) == sorted(
        (c, k) for c in (1, 8) for k in ("none", "start", "timestamps", "gaps")
    )
    assert all(c["failed_series"] == 0 for c in timed), timed  # timestamps and fills came back
    models = [c for c in cells if c["kind"] == "models"]
    assert sorted((c["concurrency"], c["variant"]) for c in models) == sorted(
        (c, v) for c in (1, 8) for v in modelcost.CELL_VARIANTS
    )
    assert all(c["failed_series"] == 0 for c in models), models  # 12 steps, intervals, timestamps


def test_smoke_run_prints_machine_table_ratios_and_targets(
    smoke: tuple[str, dict[str, Any]],
) -> None:
    stdout, results = smoke
    machine = results["machine"]
    assert machine["cores"] >= 1 and machine["memory_gib"] > 0
    assert machine["triton_server"].startswith("2.")
    assert machine["python"].startswith("3.11")
    for text in ("CPU ", "Triton 2.", "series/s", "p99 ms", "avg batch", "server us/call"):
        assert text in stdout
    for text in ("minimal proxy", "echo (1 hop)", "gateway/minimal proxy", "retired targets"):
        assert text in stdout
    for text in ("gateway + intervals", "+intervals/gateway series/s", "+intervals/gateway CPU"):
        assert text in stdout
    for text in ("gateway time=gaps #1", "time per request, against the gateway without time"):
        assert text in stdout
    assert "model kinds, Forecast through the gateway" in stdout
    assert "gateway model=quantile_mlp v1 +intervals" in stdout
    model_ratios = results["model_ratios"]
    assert len(model_ratios) == 2 * len(modelcost.CELL_VARIANTS)
    assert all(r["ratios"]["calls_per_s"] > 0 for r in model_ratios), model_ratios
    assert all(r["ratios"]["gateway_us_per_call"] > 0 for r in model_ratios), model_ratios
    time_ratios = {(r["concurrency"], r["time"]): r for r in results["time_ratios"]}
    assert set(time_ratios) == {(c, k) for c in (1, 8) for k in ("start", "timestamps", "gaps")}
    assert all(r["series_per_s"] > 0 and r["cpu_per_call"] > 0 for r in time_ratios.values())
    ratios = results["ratios"]
    assert ratios["reference_concurrency"] == 8
    assert ratios["gateway_over_direct"]["1"] > 0
    assert ratios["gateway_over_proxy"]["8"] > 0
    assert ratios["proxy_over_echo"]["8"] > 0
    assert ratios["gateway_cpu_over_proxy"] > 0
    assert ratios["intervals_over_gateway"]["8"] > 0
    assert ratios["intervals_cpu_over_gateway"]["8"] > 0
    assert ratios["gateway_p99_over_proxy"] > 0
    assert ratios["added_p50_ms_c1"] is not None
    assert ratios["gateway_p50_minus_proxy_ms_c1"] is not None
    assert {t["status"] for t in results["targets"]} <= {"PASS", "MISS"}
    assert len(results["targets"]) == 8
    for target in results["targets"]:
        assert f"{target['status']:<5} {target['target']}" in stdout
    retired = {f["former_target"]: f for f in results["retired"]}
    assert set(retired) == {">= 0.8 x", ">= 5 x", "< 40 ms", "< 1 ms"}
    assert all(f["gateway"] is not None and f["floor"] is not None for f in retired.values())


class Unimplemented(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Every RPC answers UNIMPLEMENTED (the generated base class's behaviour)."""


@pytest.fixture
async def unimplemented_server() -> AsyncIterator[str]:
    server = grpc.aio.server()
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(
        Unimplemented(),  # type: ignore[abstract]  # every RPC left to the base: UNIMPLEMENTED
        server,
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}"
    await server.stop(0)


@pytest.mark.parametrize(("kind", "batch_size"), [("batch", 32), ("stream", 1)])
async def test_a_missing_rpc_is_skipped_with_a_note(
    unimplemented_server: str, kind: str, batch_size: int
) -> None:
    spec = CellSpec(
        name=kind,
        kind=kind,
        target=unimplemented_server,
        concurrency=2,
        seconds=1.0,
        warmup_seconds=0.1,
        max_calls=10,
        triton_url="127.0.0.1:1",  # never reached: the probe stops first
        watch={},
        rss_pid=0,
        batch_size=batch_size,
    )
    cell = await run_cell(spec)
    assert cell["status"] == "skipped"
    assert "UNIMPLEMENTED" in cell["note"]
    table = report.format_table([cell])
    assert "SKIPPED: server answered UNIMPLEMENTED" in table
    targets = report.evaluate_targets([cell], report.compute_ratios([cell], [1], [batch_size]))
    assert all(t["status"] == "n/a" for t in targets)


def test_hotpath_runs_the_request_path_and_reports_cpu_per_call() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.hotpath", "--calls", "50", "--rounds", "2"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:2]] == ["round 1", "round 2"]
    assert lines[-1].startswith("min ") and float(lines[-1].split()[1]) > 0


def test_the_backtest_smoke_cells_exist_match_their_unary_answers_and_count_triton_calls(
    tmp_path: Path,
) -> None:
    """``--only backtest --smoke``: 8 cells, each well-formed, the MAE checks passed."""
    output = tmp_path / "backtest.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "backtest", "--smoke", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(output.read_text())
    cells = results["cells"]
    windows = backtestcost.SMOKE_WINDOWS[0]
    assert [(c["variant"], c["mode"]) for c in cells] == [
        (v, m) for v in backtestcost.CELL_VARIANTS for m in backtestcost.MODES
    ]
    for cell in cells:
        assert cell["status"] == "ok", cell
        assert cell["kind"] == "backtest" and cell["windows"] == windows, cell
        assert cell["series"] == windows and cell["failed_series"] == 0, cell
        assert cell["series_per_s"] > 0 and cell["wall_s"] > 0, cell
        assert cell["triton"]["inferences"] == windows, cell  # each window once, one row each
        assert 1 <= cell["triton"]["executions"] <= cell["triton"]["requests"] <= windows, cell
        assert cell["vmhwm_mb"]["after"] >= cell["vmhwm_mb"]["before"] > 0, cell
        assert cell["mae"] > 0, cell
        if cell["mode"] == "backtest":  # W <= max_batch_size: the windows in one Triton request
            assert cell["calls"] == 1 and cell["triton"]["requests"] == 1, cell
        else:
            assert cell["mae_check"] == "equal", cell
    unary = [c for c in cells if c["mode"] == "unary"]
    assert all(c["triton"]["requests"] == windows for c in unary), unary  # c=1: one a call
    assert results["backtest_mismatches"] == []
    rows = results["backtest_ratios"]
    assert len(rows) == len(cells)
    assert all(r["windows_per_s"] > 0 and r["over_unary"] > 0 for r in rows), rows
    assert all(r["over_unary_high"] > 0 for r in rows), rows
    assert {r["over_unary"] for r in rows if r["mode"] == "unary"} == {1.0}
    assert results["backtest_peak_rss_mb"]["after_largest"] > 0
    assert "backtest windows against the same windows as Forecast calls" in done.stdout
    assert "gateway peak RSS (VmHWM)" in done.stdout
    assert "retired targets" not in done.stdout
