"""What `make run` runs: Triton + gateway in one foreground process, stopped cleanly by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from bench.services import free_port, wait_serving
from forecast.v1 import forecast_service_pb2, forecast_service_pb2_grpc
from tests.conftest import ROOT


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    )


@pytest.mark.timeout(180)
def test_stack_serves_forecasts_and_stops_triton_after_the_gateway(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "FORECAST_PORT": str(port),
        "FORECAST_HOST": "127.0.0.1",
        "FORECAST_METRICS_PORT": str(free_port()),
        "FORECAST_LOG_FORMAT": "json",
        "TRITON_HTTP_PORT": str(free_port()),
        "TRITON_GRPC_PORT": str(free_port()),
        "TRITON_METRICS_PORT": str(free_port()),
    }
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log_file:
        stack = subprocess.Popen(
            [sys.executable, "-m", "tools.stack"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_serving(f"127.0.0.1:{port}", timeout_s=120)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
            reply = stub.Forecast(
                forecast_service_pb2.ForecastRequest(
                    model="lstm_timeseries", history=[float(i) for i in range(60)]
                ),
                timeout=10,
            )
        assert len(reply.values) == reply.horizon
        log = log_path.read_text()
        triton_pid = next(
            int(line.split('"pid": ')[1].split(",")[0])
            for line in log.splitlines()
            if "triton_starting" in line
        )
        assert process_alive(triton_pid)
        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=60) == 0
    finally:
        if stack.poll() is None:
            stack.kill()
    log = log_path.read_text()
    assert not process_alive(triton_pid), "Triton outlived the stack"
    assert log.index("gateway_stopped") < log.index("triton_stopped"), (
        "Triton must stop after the gateway"
    )
