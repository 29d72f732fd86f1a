"""SIGTERM under load, seen from the caller: a drain that loses no call.

Real processes: one Triton, gateways started and SIGTERMed under a closed-loop
load of an ordinary gRPC client. Two replicas behind one round_robin channel
with the standard retry policy on UNAVAILABLE are restarted in turn; a single
gateway is stopped with calls in flight. Figures in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from pathlib import Path
from typing import Any

import grpc

from bench.services import free_port
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.closed_loop import ClosedLoop, Options, service_config
from tests.conftest import GatewayProcess, start_gateway, stop_process
from tools.embedded_triton import TritonProcess

DRAIN_S = "0.5"


def served_calls(gateway: GatewayProcess) -> int:
    """Forecast calls the gateway has logged as answered."""
    return sum(
        1
        for line in gateway.log_text().splitlines()
        if '"event": "request"' in line and '"rpc": "Forecast"' in line
    )


async def wait_until(predicate: object, timeout_s: float) -> None:
    """Poll predicate() without blocking the event loop; raise after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.05)


async def sigterm(gateway: GatewayProcess) -> tuple[int, float]:
    """SIGTERM the gateway; its exit code and seconds until it exited (waited off the loop)."""
    signalled = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(gateway.process.wait, 60)
    return code, round(time.monotonic() - signalled, 2)


def start_replica(triton: TritonProcess, log_path: Path, port: int, store: Path) -> GatewayProcess:
    """A gateway on a fixed port (the client's address list does not change)."""
    return start_gateway(
        triton.grpc_url,
        log_path,
        port=port,
        metrics_port=-1,
        FORECAST_ROUTING_FILE="",
        FORECAST_SHUTDOWN_DRAIN_S=DRAIN_S,
        FORECAST_STORE_PATH=str(store),
    )


def test_two_replicas_restarted_in_turn_under_load_lose_no_call(
    triton: TritonProcess, tmp_path: Path
) -> None:
    ports = [free_port(), free_port()]
    replicas = [
        start_replica(triton, tmp_path / f"r{i}.log", port, tmp_path / f"r{i}.sqlite3")
        for i, port in enumerate(ports)
    ]
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    options: Options = [("grpc.service_config", service_config(round_robin=True))]
    load = ClosedLoop(target, callers=16, channels=[options])
    exits: list[tuple[int, float]] = []
    signals: list[float] = []

    async def restart_each_in_turn() -> None:
        done = asyncio.Event()
        running = asyncio.ensure_future(load.run(done))
        try:
            for index in range(len(replicas)):
                await wait_until(lambda: all(served_calls(r) >= 20 for r in replicas), 30)
                signals.append(time.monotonic())
                exits.append(await sigterm(replicas[index]))
                replicas[index] = await asyncio.to_thread(
                    start_replica,
                    triton,
                    tmp_path / f"r{index}-restarted.log",
                    ports[index],
                    tmp_path / f"r{index}.sqlite3",
                )
            await wait_until(lambda: all(served_calls(r) >= 20 for r in replicas), 30)
        finally:
            done.set()
            await running

    try:
        asyncio.run(restart_each_in_turn())
    finally:
        for replica in replicas:
            stop_process(replica.process)
    report = {
        "calls": len(load.calls),
        "codes": load.codes(),
        "during_restarts": load.codes(signals[0], signals[-1] + 5),
        "exits": exits,
    }
    print(json.dumps(report))
    assert [code for code, _ in exits] == [0, 0]
    assert load.codes() == {"OK": len(load.calls)}, report


def test_single_gateway_answers_calls_in_flight_then_only_unavailable(
    triton: TritonProcess, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite3"
    env: dict[str, Any] = {  # FORECAST_* variables only: never the port keywords
        "FORECAST_ROUTING_FILE": "",
        "FORECAST_STORE_PATH": str(store),
        "FORECAST_SHUTDOWN_DRAIN_S": DRAIN_S,
    }
    gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log", **env)
    load = ClosedLoop(gateway.target, callers=32)
    signalled: list[float] = []
    exits: list[tuple[int, float]] = []

    async def load_then_sigterm() -> None:
        done = asyncio.Event()
        running = asyncio.ensure_future(load.run(done))
        try:
            await wait_until(lambda: len(load.calls) >= 200, 30)
            signalled.append(time.monotonic())
            exits.append(await sigterm(gateway))
            await asyncio.sleep(0.5)  # calls sent after the exit, too
        finally:
            done.set()
            await running

    asyncio.run(load_then_sigterm())
    signal_at = signalled[0]
    in_flight = load.in_flight_at(signal_at)
    after = load.codes(sent_after=signal_at)
    report = load.signal_report(signal_at, exits)
    print(json.dumps(report))
    assert [code for code, _ in exits] == [0]
    # Every call sent before the signal was answered OK, the 32 in flight at it included.
    assert set(load.codes(sent_before=signal_at)) == {"OK"}, report
    assert len(in_flight) == load.callers
    # Afterwards: OK during the drain, then UNAVAILABLE (retryable), never CANCELLED.
    assert set(after) <= {"OK", "UNAVAILABLE"} and after.get("UNAVAILABLE", 0) > 0, report
    # Forecasts awaiting actuals were persisted: a new gateway finds them.
    client_ok = [forecast_id for _, _, code, forecast_id in load.calls if code == "OK"]
    second = start_gateway(triton.grpc_url, tmp_path / "second.log", **env)
    try:
        with grpc.insecure_channel(second.target) as channel:
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            for forecast_id in random.Random(0).sample(client_ok, 20):
                report_actuals = stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id=forecast_id, actuals=[1.0]), timeout=10
                )
                assert report_actuals.steps_received == 1
    finally:
        stop_process(second.process)
