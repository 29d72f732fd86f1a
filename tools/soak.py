"""Soak test: a steady, mixed load on a real Triton + gateway, resources sampled over time.

    python -m tools.soak --duration 600                  # measure capacity, run at half of it
    python -m tools.soak --duration 600 --rate 150       # a fixed rate, in calls per second
    python -m tools.soak --duration 20 --output /tmp/soak.json --triton-url 127.0.0.1:8001

Run it from the repository root with the venv's interpreter (`.venv/bin/python
-m tools.soak`; tools/ is a plain directory, imported as a namespace package).
It starts its own Triton (the embedded build) unless given --triton-url, and
always its own gateway process, both on free loopback ports, with the shipped
config/gateway.toml and config/routing.toml (weighted split, shadow,
fallback), a throw-away experiment store, and JSON logs in the run directory.

The load is open loop: calls start at a fixed rate whatever the latency, so a
slowing gateway shows up as latency and as "overrun" (calls not started
because `--max-outstanding` were already waiting), never as a quietly lower
rate. The mix: forecasts (routed, pinned, other windows), small batches,
short streams, version comparisons, actuals for earlier forecasts, model
lookups, and a few invalid requests whose error is the expected answer.

Every `--interval` seconds it prints and records the gateway's RSS, open file
descriptors and threads, the same for Triton (the server and its Python
backend stubs), the store's size, calls and their codes, and latency. The
JSON report (and a CSV of the samples next to it) ends with the start-to-end
change and the least-squares slope of each resource after the warm-up, and a
verdict; the exit status is 0 when no call got an unexpected answer and both
processes stayed up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from bench.procs import children
from bench.services import free_port, stop, wait_serving
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tools.embedded_triton import TritonPorts, TritonProcess

if TYPE_CHECKING:  # the async stub exists only in the generated type stubs
    from forecast.v1.forecast_service_pb2_grpc import ForecastServiceAsyncStub as AsyncStub

ROOT = Path(__file__).resolve().parents[1]
MAX_DURATION_S = 4 * 3600
CALL_TIMEOUT_S = 10.0
START_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SoakConfig:
    """What to run: how long, how fast, how often to sample, where to write."""

    duration_s: float = 600.0
    rate: float | None = None  # calls per second; None: half the measured capacity
    interval_s: float = 10.0
    warmup_s: float | None = None  # excluded from the trend; None: 10% of the run, <= 60 s
    capacity_s: float = 8.0
    capacity_workers: int = 32
    max_outstanding: int = 512
    output: Path = Path(".run/soak.json")
    triton_url: str = ""  # empty: start an embedded Triton
    triton_pid: int = 0  # with triton_url: sample this process too
    routing_file: str = str(ROOT / "config" / "routing.toml")
    seed: int = 0

    @property
    def warmup(self) -> float:
        """Seconds at the start left out of the trend (allocators and caches settle)."""
        if self.warmup_s is not None:
            return self.warmup_s
        return min(60.0, 0.1 * self.duration_s)


# --- processes ---------------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS (kB) and Threads of a process, and its open file descriptors; {} if it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return {}
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    return {
        "rss_kb": int(fields["VmRSS"].split()[0]),
        "threads": int(fields["Threads"]),
        "fds": fds,
    }


@dataclass
class Stack:
    """A gateway process (and, unless given a Triton, an embedded Triton) for one soak run."""

    workdir: Path
    gateway: subprocess.Popen[bytes]
    target: str
    triton: TritonProcess | None
    triton_pid: int

    @classmethod
    @contextlib.contextmanager
    def running(cls, config: SoakConfig, workdir: Path) -> Iterator[Stack]:
        """Start what the run needs on loopback ports; stop it all afterwards."""
        triton: TritonProcess | None = None
        triton_url, triton_pid = config.triton_url, config.triton_pid
        if not triton_url:
            ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
            triton = TritonProcess(ROOT / "model_repository", ports, workdir / "triton.log")
            triton.start()
            triton.wait_ready()
            triton_url, triton_pid = triton.grpc_url, triton.pid or 0
        try:
            gateway, target = start_gateway(triton_url, config.routing_file, workdir)
            try:
                yield cls(workdir, gateway, target, triton, triton_pid)
            finally:
                stop(gateway)
        finally:
            if triton is not None:
                triton.stop()


def start_gateway(
    triton_url: str, routing_file: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m forecast_gateway` on a free loopback port, SERVING when this returns."""
    port = free_port()
    env = {
        **os.environ,
        "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
        "FORECAST_HOST": "127.0.0.1",
        "FORECAST_PORT": str(port),
        "FORECAST_METRICS_PORT": "-1",
        "FORECAST_TRITON_URL": triton_url,
        "FORECAST_LOG_FORMAT": "json",
        "FORECAST_ROUTING_FILE": routing_file,
        "FORECAST_STORE_PATH": str(workdir / "experiments.sqlite3"),
    }
    with (workdir / "gateway.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "forecast_gateway"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    target = f"127.0.0.1:{port}"
    try:
        wait_serving(target, START_TIMEOUT_S)
    except TimeoutError:
        stop(process)
        raise
    return process, target


# --- the workload ------------------------------------------------------------------------------


@dataclass
class Stats:
    """Outcomes of the calls, in total and since the last sample."""

    by_kind: dict[str, Counter[str]] = field(default_factory=dict)
    unexpected: int = 0
    overrun: int = 0
    outstanding: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    interval_latencies_ms: list[float] = field(default_factory=list)
    interval_calls: int = 0
    interval_unexpected: int = 0
    interval_started: float = field(default_factory=time.monotonic)
    forecasts: deque[tuple[str, int]] = field(default_factory=lambda: deque(maxlen=2000))
    examples: list[str] = field(default_factory=list)  # first unexpected answers, for the report

    def record(self, kind: str, code: str, expected: str, seconds: float, detail: str) -> None:
        """Count one finished call."""
        self.by_kind.setdefault(kind, Counter())[code] += 1
        self.latencies_ms.append(seconds * 1000)
        self.interval_latencies_ms.append(seconds * 1000)
        self.interval_calls += 1
        if code != expected:
            self.unexpected += 1
            self.interval_unexpected += 1
            if len(self.examples) < 20:
                self.examples.append(f"{kind}: {code} (expected {expected}) {detail[:200]}")


Call = Callable[["AsyncStub"], Awaitable[str]]


class Workload:
    """The mix of calls, each a coroutine returning its outcome code ("OK", "INVALID_ARGUMENT")."""

    def __init__(self, stats: Stats, seed: int) -> None:
        self.stats = stats
        self.rng = random.Random(seed)
        data = np.random.default_rng(seed)
        weeks = np.arange(400)
        self.histories: list[list[float]] = [
            (
                315
                + 0.03 * weeks
                + 3 * np.sin(2 * np.pi * (weeks + shift) / 52.18)
                + data.normal(0, 0.3, weeks.size)
            )[-length:].tolist()
            for shift, length in zip(
                data.integers(0, 52, 64), data.integers(60, 400, 64), strict=True
            )
        ]
        # (kind, expected code, weight, call)
        self.mix: list[tuple[str, str, float, Call]] = [
            ("forecast_routed", "OK", 40, self.forecast_routed),
            ("forecast_pinned_v1", "OK", 5, self.forecast_pinned),
            ("forecast_moving_average", "OK", 15, self.forecast_moving_average),
            ("batch", "OK", 5, self.batch),
            ("stream", "OK", 3, self.stream),
            ("compare", "OK", 5, self.compare),
            ("report_actuals", "OK", 12, self.report_actuals),
            ("lookup", "OK", 5, self.lookup),
            ("invalid_history", "INVALID_ARGUMENT", 3, self.invalid_history),
            ("unknown_model", "NOT_FOUND", 2, self.unknown_model),
        ]
        self._weights = [weight for _, _, weight, _ in self.mix]

    def pick(self) -> tuple[str, str, Call]:
        """The next call, drawn by weight."""
        kind, expected, _, call = self.rng.choices(self.mix, weights=self._weights)[0]
        if kind == "report_actuals" and not self.stats.forecasts:
            return self.mix[0][0], self.mix[0][1], self.mix[0][3]
        return kind, expected, call

    def history(self) -> list[float]:
        """One of the prepared series."""
        return self.histories[self.rng.randrange(len(self.histories))]

    async def forecast_routed(self, stub: AsyncStub) -> str:
        """LSTM, version chosen by the routing policy (split, shadow, fallback)."""
        key = f"series-{self.rng.randrange(500)}" if self.rng.random() < 0.5 else ""
        reply = await stub.Forecast(
            pb.ForecastRequest(
                model="lstm_timeseries",
                history=self.history(),
                horizon=self.rng.choice([6, 12, 24]),
                routing_key=key,
            ),
            timeout=CALL_TIMEOUT_S,
        )
        self.stats.forecasts.append((reply.forecast_id, reply.horizon))
        return "OK"

    async def forecast_pinned(self, stub: AsyncStub) -> str:
        """LSTM version 1, pinned."""
        request = pb.ForecastRequest(model="lstm_timeseries", version="1", history=self.history())
        await stub.Forecast(request, timeout=CALL_TIMEOUT_S)
        return "OK"

    async def forecast_moving_average(self, stub: AsyncStub) -> str:
        """Moving average with a window of the caller's choice."""
        request = pb.ForecastRequest(
            model="moving_average",
            history=self.history(),
            sequence_length=self.rng.randrange(1, 60),
            horizon=self.rng.randrange(1, 65),
        )
        reply = await stub.Forecast(request, timeout=CALL_TIMEOUT_S)
        self.stats.forecasts.append((reply.forecast_id, reply.horizon))
        return "OK"

    async def batch(self, stub: AsyncStub) -> str:
        """Eight series in one call; any per-series error counts as unexpected."""
        model = self.rng.choice(["lstm_timeseries", "moving_average"])
        series = [pb.Series(id=f"s{i}", history=self.history()) for i in range(8)]
        reply = await stub.ForecastBatch(
            pb.ForecastBatchRequest(model=model, series=series), timeout=CALL_TIMEOUT_S
        )
        errors = [r.error.reason for r in reply.results if r.WhichOneof("outcome") == "error"]
        return f"IN_BAND_{errors[0]}" if errors else "OK"

    async def stream(self, stub: AsyncStub) -> str:
        """A short stream of five forecasts."""

        async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
            for i in range(5):
                yield pb.StreamForecastRequest(
                    request_id=str(i),
                    request=pb.ForecastRequest(model="lstm_timeseries", history=self.history()),
                )

        answers = [a async for a in stub.StreamForecast(requests(), timeout=CALL_TIMEOUT_S)]
        errors = [a.error.reason for a in answers if a.WhichOneof("outcome") == "error"]
        if errors:
            return f"IN_BAND_{errors[0]}"
        return "OK" if len(answers) == 5 else "MISSING_ANSWERS"

    async def compare(self, stub: AsyncStub) -> str:
        """Both LSTM versions side by side."""
        reply = await stub.CompareVersions(
            pb.CompareVersionsRequest(model="lstm_timeseries", history=self.history()),
            timeout=CALL_TIMEOUT_S,
        )
        errors = [f.error.reason for f in reply.forecasts if f.HasField("error")]
        return f"IN_BAND_{errors[0]}" if errors else "OK"

    async def report_actuals(self, stub: AsyncStub) -> str:
        """Actuals for the first steps of a recent forecast."""
        forecast_id, horizon = self.stats.forecasts[self.rng.randrange(len(self.stats.forecasts))]
        actuals = [315.0 + self.rng.random() for _ in range(self.rng.randrange(1, 4))][:horizon]
        request = pb.ReportActualsRequest(forecast_id=forecast_id, actuals=actuals)
        await stub.ReportActuals(request, timeout=CALL_TIMEOUT_S)
        return "OK"

    async def lookup(self, stub: AsyncStub) -> str:
        """ListModels, GetModel or GetExperiment."""
        choice = self.rng.randrange(3)
        if choice == 0:
            await stub.ListModels(pb.ListModelsRequest(), timeout=CALL_TIMEOUT_S)
        elif choice == 1:
            await stub.GetModel(pb.GetModelRequest(name="moving_average"), timeout=CALL_TIMEOUT_S)
        else:
            request = pb.GetExperimentRequest(model="lstm_timeseries")
            await stub.GetExperiment(request, timeout=CALL_TIMEOUT_S)
        return "OK"

    async def invalid_history(self, stub: AsyncStub) -> str:
        """A NaN in the history: INVALID_ARGUMENT is the right answer."""
        history = [*self.history(), float("nan")]
        request = pb.ForecastRequest(model="lstm_timeseries", history=history)
        await stub.Forecast(request, timeout=CALL_TIMEOUT_S)
        return "OK"

    async def unknown_model(self, stub: AsyncStub) -> str:
        """A model the gateway does not serve: NOT_FOUND is the right answer."""
        request = pb.ForecastRequest(model="no_such_model", history=self.history())
        await stub.Forecast(request, timeout=CALL_TIMEOUT_S)
        return "OK"


async def one_call(stub: AsyncStub, workload: Workload, stats: Stats) -> None:
    """Run one call of the mix and record its outcome."""
    kind, expected, call = workload.pick()
    started = time.perf_counter()
    detail = ""
    stats.outstanding += 1
    try:
        code = await call(stub)
    except grpc.aio.AioRpcError as error:
        code, detail = error.code().name, error.details() or ""
    finally:
        stats.outstanding -= 1
    stats.record(kind, code, expected, time.perf_counter() - started, detail)


async def measure_capacity(target: str, config: SoakConfig) -> float:
    """Completed calls per second of the mix with `capacity_workers` callers in a closed loop."""
    stats = Stats()
    workload = Workload(stats, config.seed + 1)
    deadline = time.monotonic() + config.capacity_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)

        async def worker() -> None:
            while time.monotonic() < deadline:
                await one_call(stub, workload, stats)

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(config.capacity_workers)))
        elapsed = time.monotonic() - started
    done = sum(sum(codes.values()) for codes in stats.by_kind.values())
    return (done - stats.unexpected) / elapsed


async def open_loop(
    target: str, rate: float, duration_s: float, workload: Workload, stats: Stats, limit: int
) -> None:
    """Start calls at `rate` per second for `duration_s`, then wait for the last ones (bounded)."""
    tasks: set[asyncio.Task[None]] = set()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        started = time.monotonic()
        sent = 0
        while (now := time.monotonic()) < started + duration_s:
            due = int((now - started) * rate) + 1
            for _ in range(due - sent):
                if stats.outstanding >= limit:
                    stats.overrun += 1
                    continue
                task = asyncio.create_task(one_call(stub, workload, stats))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            sent = due
            await asyncio.sleep(max(0.0, started + sent / rate - time.monotonic()))
        if tasks:
            await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S + 5)


# --- sampling and the report -----------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), 0 for no values."""
    return float(np.percentile(values, q)) if values else 0.0


def sample(stack: Stack, stats: Stats, started: float) -> dict[str, float]:
    """One row: resources of both processes, and the calls since the previous row."""
    gateway = proc_status(stack.gateway.pid)
    triton = proc_status(stack.triton_pid) if stack.triton_pid else {}
    stubs = [proc_status(pid) for pid in children(stack.triton_pid)] if stack.triton_pid else []
    store = stack.workdir / "experiments.sqlite3"
    now = time.monotonic()
    elapsed = max(now - stats.interval_started, 1e-9)
    row = {
        "t_s": round(now - started, 1),
        "gateway_rss_mb": round(gateway.get("rss_kb", 0) / 1024, 1),
        "gateway_fds": gateway.get("fds", 0),
        "gateway_threads": gateway.get("threads", 0),
        "triton_rss_mb": round(triton.get("rss_kb", 0) / 1024, 1),
        "triton_fds": triton.get("fds", 0),
        "triton_threads": triton.get("threads", 0),
        "stubs_rss_mb": round(sum(s.get("rss_kb", 0) for s in stubs) / 1024, 1),
        "store_mb": round(store.stat().st_size / 2**20, 2) if store.exists() else 0.0,
        "calls": stats.interval_calls,
        "rps": round(stats.interval_calls / elapsed, 1),
        "p50_ms": round(percentile(stats.interval_latencies_ms, 50), 2),
        "p99_ms": round(percentile(stats.interval_latencies_ms, 99), 2),
        "unexpected": stats.interval_unexpected,
        "outstanding": stats.outstanding,
        "overrun_total": stats.overrun,
    }
    stats.interval_calls = stats.interval_unexpected = 0
    stats.interval_latencies_ms = []
    stats.interval_started = now
    return row


async def sample_forever(
    stack: Stack, stats: Stats, rows: list[dict[str, float]], started: float, interval_s: float
) -> None:
    """Append a row every interval and print it (until cancelled)."""
    rows.append(sample(stack, stats, started))
    while True:
        await asyncio.sleep(started + len(rows) * interval_s - time.monotonic())
        row = sample(stack, stats, started)
        rows.append(row)
        sys.stdout.write(
            "t={t_s:>6}s  rps={rps:>6}  p50={p50_ms}ms p99={p99_ms}ms  unexpected={unexpected}  "
            "gateway rss={gateway_rss_mb}MB fds={gateway_fds}  "
            "triton rss={triton_rss_mb}MB fds={triton_fds} stubs={stubs_rss_mb}MB\n".format(**row)
        )
        sys.stdout.flush()


def trend(rows: list[dict[str, float]], key: str, warmup_s: float) -> dict[str, float]:
    """Start (first row after the warm-up), end, max, and least-squares slope per minute."""
    kept = [r for r in rows if r["t_s"] >= warmup_s] or rows
    t = np.array([r["t_s"] for r in kept])
    y = np.array([r[key] for r in kept], dtype=float)
    slope = float(np.polyfit(t, y, 1)[0]) * 60 if len(kept) >= 3 and np.ptp(t) > 0 else 0.0
    return {
        "start": float(y[0]),
        "end": float(y[-1]),
        "change": round(float(y[-1] - y[0]), 2),
        "max": float(y.max()),
        "slope_per_min": round(slope, 3),
    }


RESOURCES = (
    "gateway_rss_mb",
    "gateway_fds",
    "gateway_threads",
    "triton_rss_mb",
    "triton_fds",
    "triton_threads",
    "stubs_rss_mb",
    "store_mb",
)


def report(
    config: SoakConfig,
    capacity: float | None,
    rate: float,
    stats: Stats,
    rows: list[dict[str, float]],
    alive: dict[str, bool],
) -> dict[str, Any]:
    """The whole run as one JSON-able document, with the verdict."""
    calls = sum(sum(codes.values()) for codes in stats.by_kind.values())
    problems = [f"{stats.unexpected} call(s) got an unexpected answer"] if stats.unexpected else []
    problems += [f"{name} process died" for name, up in alive.items() if not up]
    config_fields = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    return {
        "config": config_fields,
        "capacity_rps": round(capacity, 1) if capacity is not None else None,
        "rate_rps": round(rate, 1),
        "calls": calls,
        "achieved_rps": round(calls / config.duration_s, 1),
        "by_kind": {kind: dict(codes) for kind, codes in sorted(stats.by_kind.items())},
        "unexpected": stats.unexpected,
        "unexpected_examples": stats.examples,
        "overrun": stats.overrun,
        "latency_ms": {
            "p50": round(percentile(stats.latencies_ms, 50), 2),
            "p99": round(percentile(stats.latencies_ms, 99), 2),
            "max": round(max(stats.latencies_ms, default=0.0), 2),
        },
        "warmup_s": config.warmup,
        "resources": {key: trend(rows, key, config.warmup) for key in RESOURCES},
        "alive": alive,
        "ok": not problems,
        "problems": problems,
        "samples": rows,
    }


def write_report(document: dict[str, Any], output: Path) -> None:
    """The JSON report, and the samples as CSV beside it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(document, indent=2) + "\n")
    rows = document["samples"]
    if rows:
        with output.with_suffix(".csv").open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


async def soak(config: SoakConfig, stack: Stack) -> dict[str, Any]:
    """Measure capacity if needed, run the load while sampling, and build the report."""
    capacity = None
    rate = config.rate
    if rate is None:
        capacity = await measure_capacity(stack.target, config)
        rate = max(1.0, capacity / 2)
        sys.stdout.write(f"capacity {capacity:.0f} calls/s; soaking at {rate:.0f} calls/s\n")
    stats = Stats()
    workload = Workload(stats, config.seed)
    rows: list[dict[str, float]] = []
    started = time.monotonic()
    sampler = asyncio.create_task(sample_forever(stack, stats, rows, started, config.interval_s))
    try:
        await open_loop(
            stack.target, rate, config.duration_s, workload, stats, config.max_outstanding
        )
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    rows.append(sample(stack, stats, started))
    alive = {"gateway": stack.gateway.poll() is None}
    if stack.triton_pid:
        alive["triton"] = bool(proc_status(stack.triton_pid))
    return report(config, capacity, rate, stats, rows, alive)


def run(config: SoakConfig) -> dict[str, Any]:
    """Start the stack, soak it, write the report; returns the report."""
    if not 0 < config.duration_s <= MAX_DURATION_S:
        raise ValueError(f"duration must be in (0, {MAX_DURATION_S}] seconds")
    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    with Stack.running(config, workdir) as stack:
        document = asyncio.run(soak(config, stack))
    document["run_dir"] = str(workdir)
    write_report(document, config.output)
    return document


def parse_args(argv: list[str] | None = None) -> SoakConfig:
    """The command line as a SoakConfig."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--rate", type=float, help="calls per second (default: capacity / 2)")
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--warmup", type=float, help="seconds left out of the trend")
    parser.add_argument("--capacity-s", type=float, default=8.0, help="capacity probe length")
    parser.add_argument("--max-outstanding", type=int, default=512)
    parser.add_argument("--output", type=Path, default=Path(".run/soak.json"))
    parser.add_argument("--triton-url", default="", help="use this Triton instead of starting one")
    parser.add_argument("--triton-pid", type=int, default=0, help="its pid, to sample it")
    parser.add_argument("--routing-file", default=SoakConfig.routing_file)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return SoakConfig(
        duration_s=args.duration,
        rate=args.rate,
        interval_s=args.interval,
        warmup_s=args.warmup,
        capacity_s=args.capacity_s,
        max_outstanding=args.max_outstanding,
        output=args.output,
        triton_url=args.triton_url,
        triton_pid=args.triton_pid,
        routing_file=args.routing_file,
        seed=args.seed,
    )


def main(argv: list[str] | None = None) -> int:
    """Run a soak from the command line; exit status 0 when the verdict is ok."""
    config = parse_args(argv)
    document = run(config)
    resources = document["resources"]
    sys.stdout.write(
        f"{document['calls']} calls at {document['achieved_rps']}/s, "
        f"unexpected {document['unexpected']}, overrun {document['overrun']}, "
        f"p99 {document['latency_ms']['p99']} ms; "
        f"gateway RSS {resources['gateway_rss_mb']['start']} -> "
        f"{resources['gateway_rss_mb']['end']} MB, fds {resources['gateway_fds']['start']:.0f} "
        f"-> {resources['gateway_fds']['end']:.0f}; report {config.output}\n"
    )
    for problem in document["problems"]:
        sys.stdout.write(f"problem: {problem}\n")
    return 0 if document["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
