"""Worker processes (workers = 2): real supervisor, real workers, real Triton.

Both workers answer calls spread over several connections, the metrics on
the one port add up across them, a SIGKILLed worker is restarted while
calls keep succeeding, and SIGTERM to the supervisor drains both.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bench.services import wait_serving
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.closed_loop import HISTORY, ClosedLoop, service_config
from tests.conftest import ROOT, stop_process
from tests.polling import eventually_sync
from tools.embedded_triton import TritonProcess

CHANNELS = 8
MAX_CHANNELS = 64
"""Connections opened at most to reach every worker (all 64 on one of two: 2 in 2**64)."""


def channel_options(number: int) -> list[tuple[str, str | int]]:
    """Options for channel `number`: its own connection, and retries on UNAVAILABLE.

    Channels with equal options share one connection (gRPC's global
    subchannel pool), which would put every call on one worker.
    """
    return [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.service_config", service_config()),
        ("test.channel", number),
    ]


@dataclass
class Supervised:
    """A `python -m forecast_gateway` with workers = 2, and how to reach it."""

    process: subprocess.Popen[bytes]
    log_path: Path
    port: int = 0
    """The shared gRPC port: the supervisor's pick (it binds port 0), read from its log."""
    metrics_port: int = 0

    @property
    def target(self) -> str:
        """host:port of the shared gRPC port."""
        return f"127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, object]]:
        """The JSON log lines of the supervisor and its workers."""
        lines = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                lines.append(json.loads(line))
        return lines

    def read_ports(self) -> None:
        """The ports the supervisor bound, from its `workers_starting` line."""
        (line,) = [line for line in self.log_lines() if line["event"] == "workers_starting"]
        self.port, self.metrics_port = int(str(line["port"])), int(str(line["metrics_port"]))

    def worker_of(self, request_id: str) -> tuple[int] | None:
        """(the worker) whose request line carries `request_id` (None: not logged yet)."""
        for line in self.log_lines():
            if line["event"] == "request" and line.get("request_id") == request_id:
                return (int(str(line["worker"])),)
        return None

    def worker_pids(self) -> dict[int, int]:
        """The current pid of each worker, from the supervisor's `worker_started` lines."""
        return {
            int(str(line["worker"])): int(str(line["pid"]))
            for line in self.log_lines()
            if line["event"] == "worker_started"
        }

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on the one metrics port, keyed by name and labels."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def total(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value
            for (sample, sample_labels), value in self.metrics().items()
            if sample == name and set(labels.items()) <= set(sample_labels)
        )


@pytest.fixture
def supervised(triton: TritonProcess, tmp_path: Path) -> Iterator[Supervised]:
    """A gateway with two workers on one port of its own pick, against the session's Triton."""
    log_path = tmp_path / "gateway.log"
    routing_file = tmp_path / "routing.toml"
    routing_file.write_text("# no policies: default routing\n")
    environment = {
        **os.environ,
        "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
        "FORECAST_WORKERS": "2",
        "FORECAST_HOST": "127.0.0.1",
        "FORECAST_PORT": "0",
        "FORECAST_METRICS_PORT": "0",
        "FORECAST_TRITON_URL": triton.grpc_url,
        "FORECAST_LOG_FORMAT": "json",
        "FORECAST_ROUTING_FILE": str(routing_file),
        "FORECAST_SHUTDOWN_DRAIN_S": "0.5",
        "FORECAST_STORE_PATH": str(tmp_path / "store.sqlite3"),
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "forecast_gateway"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    gateway = Supervised(process, log_path)
    try:
        wait_for(lambda: started_workers(gateway) == {0, 1}, 60, gateway)
        gateway.read_ports()
        wait_serving(gateway.target, 30)
        yield gateway
    finally:
        stop_process(process)


def started_workers(gateway: Supervised) -> set[int]:
    """Workers that have logged gateway_started."""
    if gateway.process.poll() is not None:
        raise RuntimeError(f"the supervisor exited:\n{gateway.log_path.read_text()[-3000:]}")
    return {
        int(str(line["worker"]))
        for line in gateway.log_lines()
        if line["event"] == "gateway_started"
    }


def wait_for(predicate: object, timeout_s: float, gateway: Supervised) -> None:
    """Poll predicate() until true; fail with the log's tail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"not met within {timeout_s}s:\n{gateway.log_path.read_text()[-3000:]}"
            )
        time.sleep(0.1)


def spread_load(target: str, callers: int) -> ClosedLoop:
    """Closed-loop callers spread over CHANNELS channels (connections), so over the workers."""
    return ClosedLoop(target, callers, channels=[channel_options(i) for i in range(CHANNELS)])


def call_over_channels(gateway: Supervised, calls: int) -> dict[int, int]:
    """`calls` Forecast calls, all OK, over CHANNELS or more connections that reach both workers.

    The kernel hands each new connection to one of the listening workers by a
    hash of its addresses (SO_REUSEPORT), a fair coin per connection: 8
    connections all land on one of two workers in 1 of 128 tries (measured:
    5 of 400 rounds of 8, both workers listening throughout). So connections
    are opened one at a time, each learning its worker from the request line
    of its first call (tagged with its own x-request-id), until there are
    CHANNELS and both workers have one (at most MAX_CHANNELS); the other
    calls go round robin over them. Returns the connections per worker.
    """
    request = pb.ForecastRequest(model="lstm_timeseries", version="2", history=HISTORY)
    channels: list[grpc.Channel] = []
    stubs: list[forecast_service_pb2_grpc.ForecastServiceStub] = []
    on_worker: collections.Counter[int] = collections.Counter()
    try:
        while len(channels) < CHANNELS or set(on_worker) != {0, 1}:
            assert len(channels) < min(MAX_CHANNELS, calls), f"one worker only: {on_worker}"
            number = len(channels)
            channels.append(grpc.insecure_channel(gateway.target, options=channel_options(number)))
            stubs.append(forecast_service_pb2_grpc.ForecastServiceStub(channels[-1]))
            probe = f"probe-{os.getpid()}-{time.monotonic_ns()}-{number}"
            stubs[-1].Forecast(request, timeout=10, metadata=(("x-request-id", probe),))
            found = eventually_sync(
                partial(gateway.worker_of, probe), message=f"the request line of {probe}"
            )
            assert found is not None
            on_worker[found[0]] += 1
        for i in range(calls - len(channels)):
            stubs[i % len(stubs)].Forecast(request, timeout=10)
    finally:
        for channel in channels:
            channel.close()
    return dict(on_worker)


def test_two_workers_serve_add_up_and_a_killed_one_is_restarted(supervised: Supervised) -> None:
    calls = 64
    call_over_channels(supervised, calls)
    # A call is counted just after its answer is sent: wait for the last one.
    wait_for(lambda: supervised.total("forecast_gateway_requests_total") == calls, 5, supervised)
    per_worker = {
        worker: supervised.total("forecast_gateway_worker_requests_total", worker=str(worker))
        for worker in (0, 1)
    }
    # Both workers answered, over connections the kernel spread over them (opened until
    # both had one: see call_over_channels), and counted them.
    assert all(count > 0 for count in per_worker.values()), per_worker
    # The one metrics port adds the workers up, under the usual names.
    forecasts = supervised.total("forecast_gateway_requests_total", rpc="Forecast", code="OK")
    assert forecasts == calls == sum(per_worker.values())
    assert supervised.total("forecast_gateway_request_duration_seconds_count") == calls
    assert supervised.total("forecast_gateway_triton_up") == 1, supervised.metrics()
    assert supervised.total("forecast_gateway_workers") == 2
    # Every worker's request lines carry its number.
    logged = collections.Counter(
        line.get("worker") for line in supervised.log_lines() if line["event"] == "request"
    )
    assert logged == {0: per_worker[0], 1: per_worker[1]}, logged

    # SIGHUP to the supervisor reloads the routing file in every worker.
    supervised.process.send_signal(signal.SIGHUP)
    wait_for(lambda: reloaded_by(supervised) == {0, 1}, 10, supervised)

    killed = supervised.worker_pids()[1]
    load = spread_load(supervised.target, callers=8)

    async def kill_under_load() -> None:
        until = asyncio.Event()
        running = asyncio.ensure_future(load.run(until))
        try:
            await asyncio.sleep(1.0)
            os.kill(killed, signal.SIGKILL)
            await asyncio.to_thread(
                wait_for, lambda: supervised.worker_pids()[1] != killed, 30, supervised
            )
            await asyncio.to_thread(
                wait_for, lambda: len(gateway_started_lines(supervised)) == 3, 60, supervised
            )
            await asyncio.sleep(1.0)
        finally:
            until.set()
            await running

    asyncio.run(kill_under_load())
    report = {"calls": len(load.calls), "codes": load.codes()}
    print(json.dumps(report))
    assert load.codes() == {"OK": len(load.calls)}, report
    assert supervised.total("forecast_gateway_worker_restarts_total") == 1
    assert supervised.total("forecast_gateway_workers") == 2
    # The restarted worker serves new connections; the dead one's counts are kept.
    before = supervised.total("forecast_gateway_worker_requests_total", worker="1")
    call_over_channels(supervised, calls)
    assert supervised.total("forecast_gateway_worker_requests_total", worker="1") > before
    # The killed worker's counts are kept, give or take the calls it held when
    # killed (answered but not yet counted, or counted but retried elsewhere).
    answered = 2 * calls + len(load.calls)
    counted = supervised.total("forecast_gateway_requests_total", rpc="Forecast")
    assert abs(counted - answered) <= load.callers, (counted, answered)


def reloaded_by(gateway: Supervised) -> set[object]:
    """Workers that have logged a routing reload."""
    return {
        line.get("worker") for line in gateway.log_lines() if line["event"] == "routing_reloaded"
    }


def gateway_started_lines(gateway: Supervised) -> list[dict[str, object]]:
    """Every gateway_started line (one per worker start)."""
    return [line for line in gateway.log_lines() if line["event"] == "gateway_started"]


def test_sigterm_to_the_supervisor_drains_both_workers(supervised: Supervised) -> None:
    load = spread_load(supervised.target, callers=16)
    signalled: list[float] = []
    exits: list[tuple[int, float]] = []

    async def load_then_sigterm() -> None:
        until = asyncio.Event()
        running = asyncio.ensure_future(load.run(until))
        try:
            await asyncio.to_thread(wait_for, lambda: len(load.calls) >= 200, 30, supervised)
            signalled.append(time.monotonic())
            supervised.process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(supervised.process.wait, 60)
            exits.append((code, round(time.monotonic() - signalled[0], 2)))
            await asyncio.sleep(0.3)
        finally:
            until.set()
            await running

    asyncio.run(load_then_sigterm())
    signal_at = signalled[0]
    in_flight = load.in_flight_at(signal_at)
    after = load.codes(sent_after=signal_at)
    report = load.signal_report(signal_at, exits)
    print(json.dumps(report))
    assert [code for code, _ in exits] == [0], report
    assert set(load.codes(sent_before=signal_at)) == {"OK"}, report
    assert len(in_flight) == load.callers
    # After the signal: OK while draining, then UNAVAILABLE once both have gone; never CANCELLED.
    assert set(after) <= {"OK", "UNAVAILABLE"}, report
    stopped = {
        line.get("worker") for line in supervised.log_lines() if line["event"] == "gateway_stopped"
    }
    assert stopped == {0, 1}
    exited = [line for line in supervised.log_lines() if line["event"] == "worker_exited"]
    assert sorted((line["worker"], line["code"]) for line in exited) == [(0, 0), (1, 0)]


def test_workers_drain_and_exit_when_the_supervisor_is_killed(supervised: Supervised) -> None:
    pids = list(supervised.worker_pids().values())
    supervised.process.send_signal(signal.SIGKILL)
    supervised.process.wait(10)
    # Each worker is sent SIGTERM by the kernel and drains, as for a stop.
    wait_for(lambda: stopped_workers(supervised) == {0, 1}, 20, supervised)

    def gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() and not zombie(pid) for pid in pids)

    deadline = time.monotonic() + 20
    while not gone():
        assert time.monotonic() < deadline, supervised.log_path.read_text()[-3000:]
        time.sleep(0.1)


def stopped_workers(gateway: Supervised) -> set[object]:
    """Workers that have logged gateway_stopped."""
    return {
        line.get("worker") for line in gateway.log_lines() if line["event"] == "gateway_stopped"
    }


def zombie(pid: int) -> bool:
    """Whether `pid` has exited and waits to be reaped (its parent, here init, will)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_bench_measures_each_worker_count(tmp_path: Path) -> None:
    """`make bench WORKERS=1,2` in its smoke size: a result per count, over several channels."""
    output = tmp_path / "scaling.json"
    arguments = ["--smoke", "--workers", "1,2", "--concurrency", "8", "--channels", "4"]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *arguments, "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cells = json.loads(output.read_text())["cells"]
    assert [(c["workers"], c["concurrency"], c["channels"]) for c in cells] == [
        (1, 8, 4),
        (2, 8, 4),
    ]
    for cell in cells:
        assert cell["status"] == "ok" and cell["errors"] == 0, cell
        assert cell["cpu_us_per_call"]["gateway"] > 0
    assert "| workers | conc | series/s |" in done.stdout
