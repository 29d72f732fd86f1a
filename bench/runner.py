"""Runs one benchmark: start the services, send every cell to the load generator, report.

The cells run in order of concurrency, each path after the other (direct,
gateway, gateway asking for intervals, minimal proxy, echo, baseline), so the
ratios compare cells measured seconds apart. The time cells (`bench.timecost`)
follow the unary ones: per round and concurrency, the gateway without time
and then each kind of time, one after the other. The model cells
(`bench.modelcost`) follow: per concurrency, each model kind after the LSTM.
The backtest cells (`bench.backtestcost`) come last: per round, W and model
version, one Backtest call, then the same windows as Forecast calls (c=1 and
c=32) and as ForecastBatch calls; each of the latter fails unless its MAE is
the Backtest's.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import backtestcost, machine, modelcost, report, timecost
from bench.services import FLOORS, ROOT, ModelOverrides, Services, tail
from bench.workload import Workload

SECTIONS = (
    "gateway",
    "intervals",
    "direct",
    "proxy",
    "echo",
    "baseline",
    "batch",
    "stream",
    "time",
    "models",
    "backtest",
)
UNARY_ORDER = ("direct", "gateway", "intervals", "proxy", "echo", "baseline")
NOISY_OTHER_CORES = 0.15


@dataclass(frozen=True)
class BenchSettings:
    """What to measure, and for how long."""

    concurrencies: tuple[int, ...] = (1, 8, 32, 64, 256)
    cell_seconds: float = 7.0
    warmup_seconds: float = 1.0
    max_calls: int = 500_000
    batch_sizes: tuple[int, ...] = (32, 256)
    batch_concurrency: int = 4
    stream_in_flight: int = 64
    time_seconds: float = 3.0
    """Measured seconds per time cell (at c=1 and c=64: 8 cells a round)."""
    time_rounds: int = 1
    model_seconds: float = 3.0
    """Measured seconds per model cell (5 kinds at c=1 and c=32: 10 cells)."""
    backtest_windows: tuple[int, ...] = backtestcost.WINDOWS
    """The backtest cells' W: windows of one series (each a group of 4 cells per version)."""
    backtest_rounds: int = 3
    backtest_concurrency: int = backtestcost.HIGH_CONCURRENCY
    """The higher concurrency of the unary cells the backtest is set against."""
    sections: tuple[str, ...] = SECTIONS
    workload: Workload = field(default_factory=Workload)
    overrides: ModelOverrides = field(default_factory=ModelOverrides)
    smoke: bool = False
    logs_dir: Path | None = None

    @classmethod
    def smoke_run(cls, **changes: Any) -> BenchSettings:
        """A tiny run: concurrency 1 and 8, about a hundred calls per cell."""
        base = cls(
            concurrencies=(1, 8),
            cell_seconds=1.0,
            time_seconds=1.0,
            model_seconds=1.0,
            warmup_seconds=0.2,
            max_calls=100,
            batch_concurrency=2,
            stream_in_flight=8,
            backtest_windows=backtestcost.SMOKE_WINDOWS,
            backtest_rounds=1,
            backtest_concurrency=backtestcost.SMOKE_HIGH_CONCURRENCY,
            smoke=True,
        )
        return dataclasses.replace(base, **changes)


def cells_of(settings: BenchSettings) -> list[dict[str, Any]]:
    """The cells of the run, without the fields they share, in the order they run."""
    cells: list[dict[str, Any]] = [
        {"name": f"{kind} c={concurrency}", "kind": kind, "concurrency": concurrency}
        for concurrency in settings.concurrencies
        for kind in UNARY_ORDER
        if kind in settings.sections
    ]
    if "time" in settings.sections:
        levels = timecost.concurrencies(settings.concurrencies)
        for cell in timecost.plan(levels, settings.time_rounds):
            cells.append({**cell, "seconds": settings.time_seconds})
    if "batch" in settings.sections:
        for size in settings.batch_sizes:
            cells.append(
                {
                    "name": f"batch {size}",
                    "kind": "batch",
                    "batch_size": size,
                    "concurrency": settings.batch_concurrency,
                }
            )
    if "stream" in settings.sections:
        cells.append({"name": "stream", "kind": "stream", "concurrency": settings.stream_in_flight})
    if "models" in settings.sections:
        levels = modelcost.concurrencies(settings.concurrencies)
        for cell in modelcost.plan(levels):
            cells.append({**cell, "seconds": settings.model_seconds})
    if "backtest" in settings.sections:
        cells += backtestcost.plan(
            settings.backtest_windows, settings.backtest_rounds, settings.backtest_concurrency
        )
    return cells


def plan(settings: BenchSettings, services: Services) -> list[dict[str, Any]]:
    """The cell specs, in the order they run."""
    targets = {
        "gateway": services.gateway_target,
        "intervals": services.gateway_target,
        "batch": services.gateway_target,
        "stream": services.gateway_target,
        "time": services.gateway_target,
        "models": services.gateway_target,
        "backtest": services.gateway_target,
        "direct": services.triton_url,
        "baseline": services.baseline_target,
        **services.floor_targets,
    }
    common = {
        "seconds": settings.cell_seconds,
        "warmup_seconds": settings.warmup_seconds,
        "triton_url": services.triton_url,
        "watch": services.pids(),
        "rss_pid": services.pids()["gateway"][0],
        "workload": dataclasses.asdict(settings.workload),
    }
    cells = cells_of(settings)
    for cell in cells:
        calls = settings.max_calls
        if cell["kind"] == "batch":  # bound the series, not only the calls
            calls = max(2, settings.max_calls // cell["batch_size"])
        # the cell's own fields win: the time and model cells have their own seconds,
        # the model cells their own workloads
        cell.update({**common, **cell}, target=targets[cell["kind"]], max_calls=calls)
    return cells


def services_for(sections: tuple[str, ...]) -> dict[str, Any]:
    """The Services arguments that leave out the servers no section calls."""
    return {
        "with_baseline": "baseline" in sections,
        "floor_kinds": tuple(kind for kind in FLOORS if kind in sections),
    }


class LoadGenerator:
    """The ``bench.loadgen`` child process: one spec line in, one result line out."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.loadgen"],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Send one cell and wait for its result."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(spec) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the load generator exited:\n{tail(self.log_path)}")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        """End the child (it exits when stdin closes)."""
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def progress(cell: dict[str, Any]) -> str:
    """One line per finished cell."""
    if cell.get("status") != "ok":
        return f"  {cell['name']:<22} {cell.get('status')}: {cell.get('note', '')}"
    latency = cell["latency_ms"]
    return (
        f"  {cell['name']:<22} {cell['series_per_s']:>9,.0f} series/s  "
        f"p50 {latency['p50']:.2f} ms  p99 {latency['p99']:.2f} ms  "
        f"avg batch {cell['triton']['avg_batch']}"
    )


def keep_logs(scratch: Path, target: Path) -> None:
    """Copy the run's logs (triton, gateway, baseline, loadgen) out of the scratch directory."""
    target.mkdir(parents=True, exist_ok=True)
    for log_file in scratch.glob("*.log"):
        shutil.copy2(log_file, target / log_file.name)


def measure(settings: BenchSettings, out: TextIO) -> dict[str, Any]:
    """Start everything, run every cell, stop everything; return the results document."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="forecast-bench-") as scratch:
        services = Services(Path(scratch), settings.overrides, **services_for(settings.sections))
        loadgen: LoadGenerator | None = None
        try:
            services.start()
            described = machine.describe(services.triton_url)
            out.write(report.format_machine(described) + "\n\n")
            loadgen = LoadGenerator(Path(scratch) / "loadgen.log")
            cells: list[dict[str, Any]] = []
            mismatches = []
            for spec in plan(settings, services):
                cells.append(loadgen.run(spec))
                mismatch = backtestcost.check(cells[-1], cells)
                out.write(progress(cells[-1]) + "\n")
                if mismatch is not None:
                    mismatches.append(mismatch)
                    out.write(backtestcost.format_mismatches([mismatch]) + "\n")
                out.flush()
        finally:
            if loadgen is not None:
                loadgen.close()
            services.stop()
            if settings.logs_dir is not None:
                keep_logs(Path(scratch), settings.logs_dir)
    concurrencies, batch_sizes = list(settings.concurrencies), list(settings.batch_sizes)
    ratios = report.compute_ratios(cells, concurrencies, batch_sizes)
    return {
        "time_ratios": timecost.compute_ratios(cells),
        "model_ratios": modelcost.compute_ratios(cells),
        "backtest_ratios": backtestcost.compute_ratios(cells),
        "backtest_peak_rss_mb": backtestcost.peak_rss(cells),
        "backtest_mismatches": mismatches,
        "settings": {
            **dataclasses.asdict(settings),
            "overrides": dataclasses.asdict(settings.overrides),
        },
        "machine": described,
        "cells": cells,
        "ratios": ratios,
        "targets": report.evaluate_targets(cells, ratios),
        "retired": report.retired_figures(cells, ratios),
        "max_other_cores": report.busiest_other(cells),
        "duration_s": round(time.monotonic() - started, 1),
    }


def write_report(results: dict[str, Any], output: Path, out: TextIO) -> None:
    """Print the table, ratios and targets; write the JSON."""
    out.write("\n" + report.format_table(results["cells"]) + "\n")
    cores = results["machine"]["cores"]
    out.write(
        f"(cpu: cores used during the cell, of the machine's {cores} (1.00 = {100 / cores:.0f}%"
        " of the machine); other: busy time of processes outside the benchmark; idle: unused)\n"
    )
    if results["max_other_cores"] > NOISY_OTHER_CORES:
        out.write(
            f"warning: other processes used up to {results['max_other_cores']:.2f} cores during"
            " the run: the cells they overlap are slowed down\n"
        )
    out.write("\n")
    if set(results["settings"]["sections"]) - {
        "time",
        "models",
        "backtest",
    }:  # the targets' cells ran
        out.write(report.format_ratios(results["ratios"]) + "\n\n")
        if results["settings"]["smoke"]:
            out.write("smoke run: too short for the targets to mean anything\n")
        out.write(report.format_targets(results["targets"]) + "\n")
        out.write(report.format_retired(results["retired"]) + "\n\n")
    if results["time_ratios"]:
        out.write(timecost.format_ratios(results["time_ratios"]) + "\n\n")
    if results.get("model_ratios"):
        out.write(modelcost.format_ratios(results["model_ratios"]) + "\n\n")
    if results.get("backtest_ratios"):
        high = results["settings"].get("backtest_concurrency")
        rss = results.get("backtest_peak_rss_mb")
        text = backtestcost.format_ratios(results["backtest_ratios"], rss, high)
        out.write(text + "\n\n")
    if results.get("backtest_mismatches"):
        out.write(backtestcost.format_mismatches(results["backtest_mismatches"]) + "\n\n")
    output.write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.write(f"wrote {output} ({results['duration_s']:.0f} s in all)\n")
