"""Shared fixtures: a real Triton and a real gateway process, started once per session.

Functional tests ask for `gateway` (or `stub`); nothing is started for unit
tests. Ports are picked free at run time; logs go to the session's tmp dir
and are printed when start-up fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from bench.services import free_port, stop, wait_serving
from forecast.v1 import forecast_service_pb2_grpc
from tools.embedded_triton import TritonPorts, TritonProcess
from tools.local_postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class GatewayProcess:
    """A `python -m forecast_gateway` child process and how to reach it."""

    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    log_path: Path

    @property
    def target(self) -> str:
        """host:port for grpc channels and grpcurl."""
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """Everything the gateway logged so far."""
        return self.log_path.read_text(errors="replace")


def spawn_gateway(
    triton_url: str,
    log_path: Path,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    **env: str,
) -> GatewayProcess:
    """Start a gateway process against `triton_url` (free ports unless given); do not wait."""
    port = free_port() if port is None else port
    metrics_port = free_port() if metrics_port is None else metrics_port
    environment = {
        **os.environ,
        "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
        "FORECAST_HOST": "127.0.0.1",
        "FORECAST_PORT": str(port),
        "FORECAST_METRICS_PORT": str(metrics_port),
        "FORECAST_TRITON_URL": triton_url,
        "FORECAST_LOG_FORMAT": "json",
        "FORECAST_CATALOG_REFRESH_S": "0.5",
        "FORECAST_ROUTING_POLL_S": "0.5",
        "FORECAST_STORE_PATH": str(log_path.with_suffix(".sqlite3")),
        **env,
    }
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "forecast_gateway"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    return GatewayProcess(process, port, metrics_port, log_path)


BIND_FAILURES = ("could not bind", "already in use")
"""What a process logs when a port picked free was taken before it bound it."""
PORT_ATTEMPTS = 3


def start_gateway(
    triton_url: str,
    log_path: Path,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    **env: str,
) -> GatewayProcess:
    """Start a gateway process against `triton_url` and wait until it is SERVING.

    Ports picked here are free when picked, not when the gateway binds them:
    another process may take one in between. A gateway that exits saying so
    is started again on other ports (PORT_ATTEMPTS in all); any other exit
    or a timeout fails at once.
    """
    for attempt in range(PORT_ATTEMPTS):
        gateway = spawn_gateway(triton_url, log_path, port=port, metrics_port=metrics_port, **env)
        outcome = _wait_serving_or_exit(gateway)
        if outcome == "serving":
            return gateway
        picked = port is None or metrics_port is None
        if outcome == "exited" and picked and attempt + 1 < PORT_ATTEMPTS and _bind_failed(gateway):
            continue
        gateway.process.kill()
        raise RuntimeError(f"gateway did not become SERVING:\n{gateway.log_text()[-3000:]}")
    raise AssertionError("unreachable")


def _wait_serving_or_exit(gateway: GatewayProcess, timeout_s: float = 60.0) -> str:
    """ "serving", "exited" (the process ended first) or "timeout"."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if gateway.process.poll() is not None:
            return "exited"
        try:
            wait_serving(gateway.target, timeout_s=1.0)
        except TimeoutError:
            continue
        return "serving"
    return "timeout"


def _bind_failed(gateway: GatewayProcess) -> bool:
    text = gateway.log_text()[-5000:]
    return any(words in text for words in BIND_FAILURES)


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> int:
    """SIGTERM, wait, SIGKILL if needed; return the exit code."""
    stop(process, timeout_s)
    return int(process.returncode)


@pytest.fixture(scope="session")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """A real Triton (the embedded CPU build) serving model_repository/."""
    log_dir = tmp_path_factory.mktemp("triton")
    server = start_triton(log_dir)
    try:
        yield server
    finally:
        server.stop()


def start_triton(log_dir: Path) -> TritonProcess:
    """A ready Triton on ports picked free; started again on others if one was taken meanwhile.

    Triton takes its ports as flags (it cannot report a port it picked
    itself), so a port picked free can be taken before it binds: a start that
    fails saying so is retried (PORT_ATTEMPTS in all).
    """
    for attempt in range(PORT_ATTEMPTS):
        ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        log_path = log_dir / f"triton-{attempt}.log" if attempt else log_dir / "triton.log"
        server = TritonProcess(ROOT / "model_repository", ports, log_path=log_path)
        server.start()
        try:
            server.wait_ready()
        except RuntimeError as error:
            server.stop()
            if attempt + 1 < PORT_ATTEMPTS and any(w in str(error) for w in BIND_FAILURES):
                continue
            raise
        return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (the machine's binaries; `make system-tools` installs them)."""
    server = LocalPostgres(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A real gateway process in front of the session's Triton."""
    log_path = tmp_path_factory.mktemp("gateway") / "gateway.log"
    # Default routing only (no split, no shadow): deterministic answers. The
    # A/B tests start gateways with routing files of their own.
    process = start_gateway(triton.grpc_url, log_path, FORECAST_ROUTING_FILE="")
    yield process
    stop_process(process.process)


@pytest.fixture(scope="session")
def channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    """A blocking channel to the session's gateway."""
    with grpc.insecure_channel(gateway.target) as chan:
        yield chan


@pytest.fixture(scope="session")
def stub(channel: grpc.Channel) -> forecast_service_pb2_grpc.ForecastServiceStub:
    """ForecastService stub on the session's gateway."""
    return forecast_service_pb2_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="session")
def cli_env(gateway: GatewayProcess) -> dict[str, str]:
    """Environment for running the `forecast` CLI and grpcurl against the gateway."""
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FORECAST_TARGET": gateway.target,
    }
