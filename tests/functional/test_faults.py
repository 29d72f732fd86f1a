"""Faults with real processes: Triton killed and restarted, a model unloaded, SIGTERM under
load, overload. Each test runs its own Triton and gateway, so a fault stays in its test.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import shutil
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

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from forecast_gateway.embedded_triton import TritonPorts, TritonProcess
from tests.conftest import ROOT, GatewayProcess, free_port, start_gateway, stop_process

HISTORY = [float(i % 17) for i in range(60)]


def new_triton(tmp_path: Path, *extra: str) -> TritonProcess:
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = TritonProcess(ROOT / "model_repository", ports, tmp_path / "triton.log", extra)
    server.start()
    server.wait_ready()
    return server


def health(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return -1
        return int(reply.status)


def wait_for(predicate: object, timeout_s: float) -> float:
    """Seconds until predicate() is true; raises after timeout_s."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - started
        time.sleep(0.05)
    raise TimeoutError(f"condition not met within {timeout_s}s")


@dataclass
class Load:
    """Sequential Forecast calls in a thread, recording each outcome and its duration."""

    target: str
    model: str = "moving_average"
    deadline_s: float = 2.0
    outcomes: list[tuple[float, str, float]] = field(default_factory=list)  # (start, code, seconds)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            while not self.stop.is_set():
                started = time.monotonic()
                try:
                    stub.Forecast(
                        pb.ForecastRequest(model=self.model, history=HISTORY),
                        timeout=self.deadline_s,
                    )
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                self.outcomes.append((started, code, time.monotonic() - started))

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self.run)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join()


@pytest.fixture
def own_triton(tmp_path: Path) -> Iterator[TritonProcess]:
    server = new_triton(tmp_path)
    yield server
    server.stop()


def test_triton_killed_then_restarted(tmp_path: Path) -> None:
    triton = new_triton(tmp_path)
    gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log", FORECAST_ROUTING_FILE="")
    try:
        with Load(gateway.target) as load:
            time.sleep(1.0)
            killed_at = time.monotonic()
            triton.kill()
            not_serving_after = wait_for(
                lambda: health(gateway.target) == health_pb2.HealthCheckResponse.NOT_SERVING, 5
            )
            time.sleep(1.0)
            restarted = TritonProcess(
                ROOT / "model_repository", triton.ports, tmp_path / "triton2.log"
            )
            restarted.start()
            restarted.wait_ready()
            ready_at = time.monotonic()
            recovered_after = wait_for(
                lambda: health(gateway.target) == health_pb2.HealthCheckResponse.SERVING, 10
            )
            wait_for(lambda: any(c == "OK" and s > ready_at for s, c, _ in load.outcomes), 10)
        after_kill = [o for o in load.outcomes if o[0] > killed_at + 0.05 and o[0] < ready_at]
        codes = {code for _, code, _ in after_kill}
        assert codes == {"UNAVAILABLE"}, codes  # never a forecast Triton did not compute
        assert max(seconds for _, _, seconds in after_kill) < load.deadline_s
        assert not_serving_after < 2.0
        assert recovered_after < 5.0
        # Forecasting again, without a gateway restart: the first OK call after
        # the new Triton was ready.
        first_ok = min(s + d for s, c, d in load.outcomes if c == "OK" and s > ready_at)
        assert first_ok - ready_at < 5.0
        report = {
            "not_serving_after_s": round(not_serving_after, 2),
            "recovered_after_s": round(recovered_after, 2),
            "first_forecast_after_s": round(first_ok - ready_at, 2),
            "calls_while_down": len(after_kill),
        }
        print(json.dumps(report))
        restarted.stop()
    finally:
        stop_process(gateway.process)
        triton.stop()


def test_model_unloaded_and_loaded_while_traffic_flows(tmp_path: Path) -> None:
    triton = new_triton(tmp_path, "--model-control-mode=explicit", "--load-model=*")
    gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log", FORECAST_ROUTING_FILE="")
    client = triton_grpc.InferenceServerClient(triton.grpc_url)
    try:
        with Load(gateway.target) as load:
            time.sleep(0.5)
            client.unload_model("moving_average")
            unloaded_at = time.monotonic()
            wait_for(
                lambda: health(gateway.target) == health_pb2.HealthCheckResponse.NOT_SERVING, 5
            )
            time.sleep(0.5)
            client.load_model("moving_average")
            wait_for(lambda: health(gateway.target) == health_pb2.HealthCheckResponse.SERVING, 10)
            loaded_at = time.monotonic()
            time.sleep(0.5)
        while_unloaded = [
            code
            for started, code, _ in load.outcomes
            if unloaded_at + 1.5 < started < loaded_at - 1.0
        ]
        assert while_unloaded and set(while_unloaded) == {"UNAVAILABLE"}, set(while_unloaded)
        assert load.outcomes[-1][1] == "OK"
    finally:
        client.close()
        stop_process(gateway.process)
        triton.stop()


async def concurrent_forecasts(
    target: str, count: int, deadline_s: float = 10.0, horizons: int = 1
) -> list[tuple[str, float, str]]:
    """`count` Forecast calls at once: (code, seconds, forecast_id).

    With `horizons` > 1 the calls cycle through that many horizons: shapes the
    gateway cannot coalesce into one Triton request.
    """
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)

        async def one(index: int) -> tuple[str, float, str]:
            started = time.monotonic()
            request = pb.ForecastRequest(
                model="lstm_timeseries", version="2", history=HISTORY, horizon=1 + index % horizons
            )
            try:
                reply = await stub.Forecast(request, timeout=deadline_s)
                return "OK", time.monotonic() - started, reply.forecast_id
            except grpc.RpcError as error:
                return error.code().name, time.monotonic() - started, ""

        return list(await asyncio.gather(*(one(i) for i in range(count))))


def test_overload_is_shed_quickly_and_accepted_calls_stay_fast(
    own_triton: TritonProcess, tmp_path: Path
) -> None:
    gateway = start_gateway(
        own_triton.grpc_url,
        tmp_path / "gateway.log",
        FORECAST_ROUTING_FILE="",
        FORECAST_MAX_IN_FLIGHT="2",
    )
    try:
        # 400 calls at once, in 60 shapes (so coalescing cannot fold them into
        # a few requests), against 2 slots: most arrive while both are taken.
        results = asyncio.run(concurrent_forecasts(gateway.target, 400, horizons=60))
    finally:
        stop_process(gateway.process)
    codes = [code for code, _, _ in results]
    shed = [seconds for code, seconds, _ in results if code == "RESOURCE_EXHAUSTED"]
    accepted = sorted(seconds for code, seconds, _ in results if code == "OK")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
    assert shed and accepted, codes
    assert max(shed) < 2.0  # refused at once, not after queueing
    assert accepted[int(0.99 * (len(accepted) - 1))] < 5.0


def test_sigterm_under_load_answers_every_accepted_call(
    own_triton: TritonProcess, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite3"
    env = {"FORECAST_ROUTING_FILE": "", "FORECAST_STORE_PATH": str(store)}
    gateway = start_gateway(own_triton.grpc_url, tmp_path / "gateway.log", **env)

    async def load_then_sigterm() -> list[tuple[str, float, str]]:
        calls = asyncio.ensure_future(concurrent_forecasts(gateway.target, 300))
        await asyncio.sleep(0.3)
        gateway.process.send_signal(signal.SIGTERM)
        return await calls

    results = asyncio.run(load_then_sigterm())
    assert gateway.process.wait(timeout=30) == 0
    logged = [
        json.loads(line) for line in gateway.log_text().splitlines() if '"event": "request"' in line
    ]
    accepted = [entry for entry in logged if entry.get("rpc") == "Forecast"]
    client_ok = [forecast_id for code, _, forecast_id in results if code == "OK"]
    # Every call the gateway accepted was answered OK and the caller got it.
    assert {entry["status"] for entry in accepted} == {"OK"}
    assert len(client_ok) == len(accepted) > 0
    # Calls that arrived after the stop began were never started: gRPC refuses
    # them (UNAVAILABLE, or CANCELLED when refused mid-handshake); safe to retry.
    assert {code for code, _, _ in results} <= {"OK", "UNAVAILABLE", "CANCELLED"}
    # Forecasts awaiting actuals were persisted: a new gateway finds them.
    second = start_gateway(own_triton.grpc_url, tmp_path / "second.log", **env)
    try:
        with grpc.insecure_channel(second.target) as channel:
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            for forecast_id in random.Random(0).sample(client_ok, min(20, len(client_ok))):
                report = stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id=forecast_id, actuals=[1.0]), timeout=10
                )
                assert report.steps_received == 1
    finally:
        stop_process(second.process)


def test_caller_deadline_is_honoured(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            stub.Forecast(
                pb.ForecastRequest(model="lstm_timeseries", history=HISTORY), timeout=0.0005
            )
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < 0.5
        ok = stub.Forecast(pb.ForecastRequest(model="lstm_timeseries", history=HISTORY), timeout=10)
        assert ok.values


def test_full_triton_queue_is_shed_as_resource_exhausted(tmp_path: Path) -> None:
    repository = tmp_path / "model_repository"
    shutil.copytree(
        ROOT / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__")
    )
    config = repository / "lstm_timeseries" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_queue_size: 2048", "max_queue_size: 4"))
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    triton = TritonProcess(repository, ports, tmp_path / "triton.log")
    triton.start()
    try:
        triton.wait_ready()
        gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log", FORECAST_ROUTING_FILE="")
        try:
            # 60 shapes x 2 requests each at Triton at once overflow a queue of 4.
            results = asyncio.run(concurrent_forecasts(gateway.target, 300, horizons=60))
        finally:
            stop_process(gateway.process)
    finally:
        triton.stop()
    codes = collections.Counter(code for code, _, _ in results)
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
    assert codes["OK"] > 0 and codes["RESOURCE_EXHAUSTED"] > 0, codes
    assert '"reason": "TRITON_OVERLOADED"' in gateway.log_text()
