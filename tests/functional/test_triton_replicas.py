"""Two real Triton replicas behind one gateway (`triton_url` as a comma list).

Calls are balanced per call (round_robin); a replica SIGKILLed under load
costs no call (in-flight calls are retried on the other one); restarted on
the same ports, it gets traffic again without touching the gateway. The
Tritons and the gateway are started once for this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.services import free_port
from forecast.v1 import forecast_pb2 as fpb
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import ROOT, GatewayProcess, start_gateway, stop_process
from tools.embedded_triton import TritonPorts, TritonProcess

MODEL = "moving_average"
SLOW_MODEL = "lstm_timeseries"
HISTORY = [float(i % 17) for i in range(60)]
CALLERS = 8
DEADLINE_S = 5.0


@dataclass
class Replicas:
    """Two Tritons (a and b) and a gateway balancing over both."""

    a: TritonProcess
    b: TritonProcess
    gateway: GatewayProcess
    tmp: Path
    starts: int = 0
    b_alive: bool = True
    """False once b is killed: its pid may be reused, so it is never signalled again."""

    def kill_b(self) -> None:
        """SIGKILL b (with its stubs)."""
        if self.b_alive:
            self.b_alive = False
            kill_group(self.b)

    def restart_b(self) -> None:
        """Start b again on the same ports (after a kill) and wait until it is ready."""
        self.kill_b()
        self.starts += 1
        self.b = TritonProcess(
            ROOT / "model_repository", self.b.ports, self.tmp / f"triton-b{self.starts}.log"
        )
        self.b.start()
        self.b_alive = True
        self.b.wait_ready()

    def ensure_both_up(self) -> None:
        """Bring b back if an earlier test left it dead."""
        if not self.b.is_ready():
            self.restart_b()


def kill_group(triton: TritonProcess) -> None:
    """SIGKILL Triton with its Python-backend stubs (its process group), as a pod dies.

    Killing tritonserver alone leaves a stub of the LSTM running (~330 MB each).
    """
    if triton.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(triton.pid, signal.SIGKILL)
    triton.kill()  # reaps it


def served(triton: TritonProcess) -> int:
    """Inference requests `triton` completed for MODEL (0 while it is down)."""
    try:
        with triton_grpc.InferenceServerClient(triton.grpc_url) as client:
            stats = client.get_inference_statistics(MODEL, as_json=True, client_timeout=1.0)
    except Exception:  # a dead replica has served nothing more
        return 0
    return sum(
        int(model["inference_stats"]["success"].get("count", 0))
        for model in stats.get("model_stats", [])
    )


def serving(target: str) -> bool:
    """Whether the gateway's health says SERVING."""
    with grpc.insecure_channel(target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2.0
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def replicas_ready(target: str, timeout_s: float = 5.0, want: int | None = None) -> set[int]:
    """ListModels' replicas_ready of every READY version (waits up to timeout_s for want)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with grpc.insecure_channel(target) as channel:
            reply = forecast_service_pb2_grpc.ForecastServiceStub(channel).ListModels(
                pb.ListModelsRequest(), timeout=2.0
            )
        counts = {
            v.replicas_ready
            for m in reply.models
            for v in m.versions
            if v.state == fpb.MODEL_VERSION_STATE_READY
        }
        if want is None or counts == {want} or time.monotonic() > deadline:
            return counts
        time.sleep(0.1)


@dataclass
class Load:
    """CALLERS threads of sequential Forecast calls; every outcome is kept."""

    target: str
    model: str = MODEL
    callers: int = CALLERS
    shapes: int = 1
    """Distinct horizons: each is its own coalescing key, so its own Triton requests."""
    outcomes: list[tuple[float, str]] = field(default_factory=list)  # (end, status code)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self, caller: int) -> None:
        horizon = 1 + caller % self.shapes
        request = pb.ForecastRequest(model=self.model, history=HISTORY, horizon=horizon)
        with grpc.insecure_channel(self.target) as channel:
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            while not self.stop.is_set():
                try:
                    stub.Forecast(request, timeout=DEADLINE_S)
                    code = "OK"
                except grpc.RpcError as error:
                    code = f"{error.code().name}: {error.details()}"
                self.outcomes.append((time.monotonic(), code))

    def failures(self) -> list[str]:
        return [code for _, code in self.outcomes if code != "OK"]

    def __enter__(self) -> Load:
        self._threads = [
            threading.Thread(target=self.run, args=(caller,)) for caller in range(self.callers)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()


def new_triton(tmp: Path, name: str) -> TritonProcess:
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    return TritonProcess(ROOT / "model_repository", ports, tmp / f"triton-{name}.log")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    tmp = tmp_path_factory.mktemp("replicas")
    a, b = new_triton(tmp, "a"), new_triton(tmp, "b")
    a.start()
    b.start()
    group: Replicas | None = None
    try:
        a.wait_ready()
        b.wait_ready()
        gateway = start_gateway(
            f"{a.grpc_url},{b.grpc_url}", tmp / "gateway.log", FORECAST_ROUTING_FILE=""
        )
        group = Replicas(a, b, gateway, tmp)
        yield group
    finally:
        if group is not None:
            stop_process(group.gateway.process)
            group.kill_b()
        else:
            kill_group(b)
        kill_group(a)


def counted(triton: TritonProcess, before: int, timeout_s: float = 3.0) -> int:
    """Requests served since `before`, once Triton's statistics stop moving.

    The Python backend reports its statistics after sending the responses.
    """
    last, deadline = -1, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        now = served(triton)
        if now == last:
            return now - before
        last = now
        time.sleep(0.2)
    return last - before


def test_calls_are_shared_fairly(replicas: Replicas) -> None:
    replicas.ensure_both_up()
    before = served(replicas.a), served(replicas.b)
    with Load(replicas.gateway.target) as load:
        time.sleep(2.0)
    shares = counted(replicas.a, before[0]), counted(replicas.b, before[1])
    total = sum(shares)
    print(json.dumps({"calls": len(load.outcomes), "triton_requests": shares}))
    assert not load.failures()
    assert total > 20
    assert min(shares) >= 0.25 * total, shares
    assert replicas_ready(replicas.gateway.target, want=2) == {2}  # ListModels counts both


def test_sigkill_under_load_fails_no_call(replicas: Replicas) -> None:
    replicas.ensure_both_up()
    # The LSTM over many shapes keeps many requests in flight at Triton
    # (up to two per shape): the replica's death fails them all at once.
    with Load(replicas.gateway.target, model=SLOW_MODEL, callers=48, shapes=48) as load:
        time.sleep(1.0)
        # Stalled first, so that b surely holds requests when it dies.
        os.kill(replicas.b.pid or 0, signal.SIGSTOP)
        time.sleep(0.5)
        killed_at = time.monotonic()
        replicas.kill_b()
        time.sleep(2.0)
    after = [end for end, _ in load.outcomes if end > killed_at]
    log = replicas.gateway.log_text()
    report = {"calls": len(load.outcomes), "after_kill": len(after)}
    retries = log.count('"triton_retry"')
    print(json.dumps({**report, "retries": retries}))
    assert not load.failures(), load.failures()[:5]
    assert len(after) > 20 and retries > 0
    # Health and the catalog: still SERVING on one replica, every refresh since.
    assert serving(replicas.gateway.target)
    assert "triton_unreachable" not in log
    assert '"triton_retry_budget_empty"' not in log
    assert replicas_ready(replicas.gateway.target, want=1) == {1}  # one replica left


def test_restarted_replica_gets_traffic_again(replicas: Replicas) -> None:
    if replicas.b.is_ready():
        replicas.kill_b()
    # Light load while b starts: its start-up competes for the same 2 cores.
    with Load(replicas.gateway.target, callers=2) as load:
        replicas.restart_b()
        ready_at = time.monotonic()
        while served(replicas.b) == 0 and time.monotonic() - ready_at < 10.0:
            time.sleep(0.05)
        traffic_after = time.monotonic() - ready_at
    print(json.dumps({"traffic_after_ready_s": round(traffic_after, 2)}))
    assert not load.failures(), load.failures()[:5]
    assert traffic_after < 5.0
