"""Worker scaling (``python -m bench --workers 1,2,4``): the gateway at each worker count.

One Triton for the whole run; the gateway is restarted with each count and
measured at each concurrency with the same load generator, which spreads
its calls over several channels (connections) so that every worker gets
some. Reported per cell: series/s, latency, CPU per call of the gateway's
processes (supervisor and workers together) and of Triton, and how busy the
machine was: on a machine with no spare core, more workers cannot add CPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from bench import machine, report
from bench.runner import BenchSettings, LoadGenerator
from bench.services import START_TIMEOUT_S, Services, tail

HEADER = [
    "workers",
    "conc",
    "series/s",
    "p50 ms",
    "p99 ms",
    "cpu gateway",
    "gateway us/call",
    "cpu triton",
    "triton us/call",
    "cpu loadgen",
    "cpu other",
    "idle",
    "errors",
]


def wait_workers(services: Services, count: int, seen_before: int) -> None:
    """Wait until `count` more workers have logged gateway_started (one serves sooner)."""
    log_path = services.scratch / "gateway.log"
    deadline = time.monotonic() + START_TIMEOUT_S
    while _started(log_path) - seen_before < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{count} workers did not start:\n{tail(log_path)}")
        time.sleep(0.2)


def _started(log_path: Path) -> int:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return text.count('"event": "gateway_started"')


def cell_spec(
    settings: BenchSettings, services: Services, workers: int, concurrency: int, channels: int
) -> dict[str, Any]:
    """One gateway Forecast cell over `channels` connections."""
    return {
        "name": f"workers={workers} c={concurrency}",
        "kind": "gateway",
        "target": services.gateway_target,
        "concurrency": concurrency,
        "channels": channels,
        "seconds": settings.cell_seconds,
        "warmup_seconds": settings.warmup_seconds,
        "max_calls": settings.max_calls,
        "triton_url": services.triton_url,
        "watch": services.pids(),
        "rss_pid": services.pids()["gateway"][0],
        "workload": dataclasses.asdict(settings.workload),
    }


def measure_workers(
    settings: BenchSettings, counts: tuple[int, ...], channels: int, out: TextIO
) -> dict[str, Any]:
    """Every worker count at every concurrency; the results document."""
    started = time.monotonic()
    cells: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="forecast-bench-workers-") as scratch:
        services = Services(Path(scratch), settings.overrides, workers=counts[0])
        loadgen: LoadGenerator | None = None
        try:
            services.start()
            described = machine.describe(services.triton_url)
            out.write(report.format_machine(described) + "\n\n")
            loadgen = LoadGenerator(Path(scratch) / "loadgen.log")
            for index, count in enumerate(counts):
                seen = _started(services.scratch / "gateway.log")
                if index > 0:
                    services.restart_gateway(count)
                wait_workers(services, count, 0 if index == 0 else seen)
                for concurrency in settings.concurrencies:
                    spec = cell_spec(settings, services, count, concurrency, channels)
                    cell = {**loadgen.run(spec), "workers": count, "channels": channels}
                    cells.append(cell)
                    out.write(format_row(cell) + "\n")
                    out.flush()
        finally:
            if loadgen is not None:
                loadgen.close()
            services.stop()
    return {
        "settings": {
            **dataclasses.asdict(settings),
            "overrides": dataclasses.asdict(settings.overrides),
            "workers": list(counts),
            "channels": channels,
        },
        "machine": described,
        "cells": cells,
        "duration_s": round(time.monotonic() - started, 1),
    }


def _row(cell: dict[str, Any]) -> list[str]:
    if cell.get("status") != "ok":
        return [str(cell.get("workers")), str(cell["concurrency"]), str(cell.get("status"))]
    cores, per_call = cell["cpu_cores"], cell["cpu_us_per_call"]
    return [
        str(cell["workers"]),
        str(cell["concurrency"]),
        f"{cell['series_per_s']:,.0f}",
        f"{cell['latency_ms']['p50']:.2f}",
        f"{cell['latency_ms']['p99']:.2f}",
        f"{cores['gateway']:.2f}",
        f"{per_call['gateway']:,.0f}",
        f"{cores.get('triton', 0):.2f}",
        f"{per_call.get('triton') or 0:,.0f}",
        f"{cores['loadgen']:.2f}",
        f"{cores['other']:.2f}",
        f"{cores['machine_idle']:.2f}",
        str(cell["errors"]),
    ]


def format_row(cell: dict[str, Any]) -> str:
    """One progress line."""
    return "  " + "  ".join(_row(cell))


def format_table(cells: list[dict[str, Any]]) -> str:
    """The scaling table (markdown)."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(_row(cell)) + " |" for cell in cells]
    return "\n".join(lines)
