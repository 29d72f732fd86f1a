"""The load generator: a process of its own, so its CPU never counts as the gateway's.

``python -m bench.loadgen`` reads one JSON cell spec per line on stdin and
answers one JSON result per line on stdout. For each cell it probes the RPC
once (UNIMPLEMENTED: the cell is skipped), warms up, then measures: CPU
seconds of every watched process (and of itself) and Triton's statistics are
read right before and right after the measured run, and the gateway's RSS is
sampled during it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio

from bench import backtestcost, modelcost, procs
from bench.drivers import (
    Baseline,
    DirectTriton,
    GatewayBatch,
    GatewayStream,
    GatewayUnary,
    Samples,
    Unimplemented,
    drive,
)
from bench.triton_stats import TritonCounters, delta
from bench.workload import INTERVAL_COVERAGES, Workload

RSS_SAMPLE_S = 0.2
# Triton updates a request's statistics just after it sends the response: read
# the counters once the last responses' statistics have landed.
STATS_SETTLE_S = 0.2
Client = GatewayUnary | GatewayBatch | DirectTriton | Baseline | GatewayStream


@dataclass(frozen=True)
class CellSpec:
    """One cell of the benchmark table, as sent by the runner."""

    name: str
    kind: str  # one of runner.SECTIONS: gateway | intervals | direct | ... | models | backtest
    target: str
    concurrency: int
    seconds: float
    warmup_seconds: float
    max_calls: int
    triton_url: str
    watch: dict[str, list[int]]
    rss_pid: int
    workload: Workload = field(default_factory=Workload)
    batch_size: int = 1
    channels: int = 1  # gateway Forecast cells: connections to spread over workers
    time: str = "none"  # time cells: the kind of time every request carries (timecost.TIMES)
    time_round: int = 1  # time cells: which round of them
    variant: str = ""  # model and backtest cells: which model version (modelcost.VARIANTS)
    windows: int = 0  # backtest cells: how many windows (W)
    mode: str = ""  # backtest cells: how they are sent (backtestcost.MODES)
    backtest_round: int = 1  # backtest cells: which round of them

    @classmethod
    def from_json(cls, line: str) -> CellSpec:
        """Parse one spec line."""
        data = json.loads(line)
        data["workload"] = Workload(**data.get("workload", {}))
        return cls(**data)


def make_client(spec: CellSpec) -> Client:
    """The client for the cell's path."""
    if spec.kind == "direct":
        return DirectTriton(spec.target, spec.workload)
    if spec.kind == "baseline":
        return Baseline(spec.target, spec.workload)
    if spec.kind == "batch":
        return GatewayBatch(spec.target, spec.workload, spec.batch_size)
    if spec.kind == "stream":
        return GatewayStream(spec.target, spec.workload)
    if spec.kind == "intervals":
        return GatewayUnary(spec.target, spec.workload, spec.channels, INTERVAL_COVERAGES)
    if spec.kind == "time":
        return GatewayUnary(spec.target, spec.workload, spec.channels, time=spec.time)
    if spec.kind == "models":  # the variant's own workload; dated, as lstm_timeseries needs
        coverages = modelcost.variant(spec.variant).interval_coverages
        return GatewayUnary(spec.target, spec.workload, spec.channels, coverages, modelcost.TIME)
    return GatewayUnary(spec.target, spec.workload, spec.channels)  # gateway, floors (same RPC)


async def run_load(client: Client, spec: CellSpec, seconds: float, max_calls: int) -> Samples:
    """Drive the client: a stream keeps `concurrency` requests in flight on one call."""
    if isinstance(client, GatewayStream):
        return await client.run(spec.concurrency, seconds, max_calls)
    return await drive(client, spec.concurrency, seconds, max_calls)


class RssSampler:
    """Samples the RSS of a process (and of a process tree) in the background."""

    def __init__(self, pid: int, tree_roots: list[int]) -> None:
        self.pid, self.tree_roots = pid, tree_roots
        self.values: list[int] = []
        self.tree_values: list[int] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.values.append(procs.rss_bytes(self.pid))
            tree = [p for root in self.tree_roots for p in procs.with_descendants(root)]
            self.tree_values.append(sum(procs.rss_bytes(p) for p in tree))
            await asyncio.sleep(RSS_SAMPLE_S)

    def __enter__(self) -> RssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        if self._task is not None:
            self._task.cancel()

    def summary(self) -> dict[str, float | None]:
        """Max and mean RSS of the process, max of the tree, in MB."""
        mb = 1024 * 1024
        if not self.values:
            return {"gateway_max": None, "gateway_mean": None, "triton_max": None}
        return {
            "gateway_max": round(max(self.values) / mb, 1),
            "gateway_mean": round(sum(self.values) / len(self.values) / mb, 1),
            "triton_max": round(max(self.tree_values) / mb, 1) if self.tree_values else None,
        }


def latency_summary(samples: Samples) -> dict[str, float | None]:
    """Latency percentiles in milliseconds."""
    if not samples.latencies_s:
        return {"p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    values = np.asarray(samples.latencies_s) * 1e3
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {
        "p50": round(float(p50), 3),
        "p90": round(float(p90), 3),
        "p99": round(float(p99), 3),
        "mean": round(float(values.mean()), 3),
        "max": round(float(values.max()), 3),
    }


async def triton_counters(
    client: triton_aio.InferenceServerClient, spec: CellSpec
) -> TritonCounters:
    """Triton's cumulative counters for the workload's model version."""
    statistics = await client.get_inference_statistics(
        model_name=spec.workload.model, model_version=spec.workload.version, as_json=True
    )
    return TritonCounters.from_json(statistics)


async def measure(spec: CellSpec, client: Client) -> dict[str, Any]:
    """Probe, warm up, then run the measured part with CPU, Triton and RSS readings around it."""
    try:
        await run_load(client, spec, 5.0, 1)
    except Unimplemented as error:
        return {"status": "skipped", "note": f"server answered UNIMPLEMENTED ({error})"}
    await run_load(client, spec, spec.warmup_seconds, spec.max_calls)
    groups = {**spec.watch, "loadgen": [os.getpid()]}
    stats_client = triton_aio.InferenceServerClient(url=spec.triton_url)
    try:
        triton_before = await triton_counters(stats_client, spec)
        with RssSampler(spec.rss_pid, spec.watch.get("triton", [])) as rss:
            cpu_before, started = procs.snapshot(groups), time.perf_counter()
            samples = await run_load(client, spec, spec.seconds, spec.max_calls)
            wall_s = time.perf_counter() - started
            cpu_after = procs.snapshot(groups)
        await asyncio.sleep(STATS_SETTLE_S)
        triton_after = await triton_counters(stats_client, spec)
    finally:
        await stats_client.close()
    return figures(
        samples, wall_s, groups, (cpu_before, cpu_after), (triton_before, triton_after), rss
    )


def figures(
    samples: Samples,
    wall_s: float,
    groups: dict[str, list[int]],
    cpu: tuple[procs.CpuSnapshot, procs.CpuSnapshot],
    triton: tuple[TritonCounters, TritonCounters],
    rss: RssSampler,
) -> dict[str, Any]:
    """A measured run's figures: counts, rates, latency, CPU per group, Triton's deltas, RSS."""
    cores = procs.cores_used(cpu[0], cpu[1], wall_s)
    calls_per_s = samples.calls / wall_s
    return {
        "status": "ok" if samples.series else "failed",
        "note": samples.error_sample,
        "wall_s": round(wall_s, 3),
        "calls": samples.calls,
        "series": samples.series,
        "failed_series": samples.failed_series,
        "errors": samples.errors,
        "series_per_s": round(samples.series / wall_s, 1),
        "calls_per_s": round(samples.calls / wall_s, 1),
        "latency_ms": latency_summary(samples),
        "cpu_cores": cores,
        "cpu_us_per_call": {
            name: round(cores[name] / calls_per_s * 1e6, 1) if calls_per_s else None
            for name in groups
        },
        "triton": delta(*triton),
        "rss_mb": rss.summary(),
    }


def _mb(value: int) -> float:
    return round(value / (1024 * 1024), 1)


async def measure_windows(spec: CellSpec) -> dict[str, Any]:
    """A backtest cell: warm up, then send every window once (`backtestcost.WindowCalls`).

    As `measure`, plus the MAE of the answers and the gateway's VmHWM (its peak
    RSS so far) before and after the windows.
    """
    client = backtestcost.WindowCalls(
        spec.target, spec.workload, spec.windows, spec.mode, spec.concurrency
    )
    groups = {**spec.watch, "loadgen": [os.getpid()]}
    stats_client = triton_aio.InferenceServerClient(url=spec.triton_url)
    try:
        try:
            await client.warm()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return {
                "status": "skipped",
                "note": f"server answered UNIMPLEMENTED ({error.details()})",
            }
        await asyncio.sleep(STATS_SETTLE_S)  # the warm-up's statistics land before the reading
        triton_before = await triton_counters(stats_client, spec)
        peak_before = procs.peak_rss_bytes(spec.rss_pid)
        with RssSampler(spec.rss_pid, spec.watch.get("triton", [])) as rss:
            cpu_before, started = procs.snapshot(groups), time.perf_counter()
            outcome = await client.run()
            wall_s = time.perf_counter() - started
            cpu_after = procs.snapshot(groups)
        peak_after = procs.peak_rss_bytes(spec.rss_pid)
        await asyncio.sleep(STATS_SETTLE_S)
        triton_after = await triton_counters(stats_client, spec)
    finally:
        await stats_client.close()
        await client.close()
    result = figures(
        outcome.samples,
        wall_s,
        groups,
        (cpu_before, cpu_after),
        (triton_before, triton_after),
        rss,
    )
    complete = outcome.mae is not None and result["series"] == spec.windows
    result.update(
        status="ok" if complete else "failed",
        note=outcome.note or outcome.samples.error_sample,
        mae=outcome.mae,
        vmhwm_mb={"before": _mb(peak_before), "after": _mb(peak_after)},
    )
    return result


async def run_cell(spec: CellSpec) -> dict[str, Any]:
    """One cell, never raising: a failure is reported in the result."""
    head = {
        "name": spec.name,
        "kind": spec.kind,
        "concurrency": spec.concurrency,
        "batch_size": spec.batch_size,
    }
    if spec.kind == "time":
        head.update(time=spec.time, time_round=spec.time_round)
    if spec.kind == "models":
        head.update(variant=spec.variant)
    if spec.kind == "backtest":
        head.update(
            variant=spec.variant,
            windows=spec.windows,
            mode=spec.mode,
            backtest_round=spec.backtest_round,
        )
        try:
            return {**head, **await measure_windows(spec)}
        except Exception as error:  # reported, so one broken cell does not end the run
            return {**head, "status": "failed", "note": f"{type(error).__name__}: {error}"[:300]}
    client = make_client(spec)
    try:
        return {**head, **await measure(spec, client)}
    except Exception as error:  # reported, so one broken path does not end the run
        return {**head, "status": "failed", "note": f"{type(error).__name__}: {error}"[:300]}
    finally:
        with contextlib.suppress(Exception):
            await client.close()


async def serve() -> None:
    """Answer cell specs from stdin until it closes."""
    while line := await asyncio.to_thread(sys.stdin.readline):
        result = await run_cell(CellSpec.from_json(line))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def main() -> None:
    """Entry point of ``python -m bench.loadgen``."""
    asyncio.run(serve())


if __name__ == "__main__":
    main()
