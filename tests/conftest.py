"""Shared fixtures: a real Triton and a real gateway process, started once per session.

Functional tests ask for `gateway` (or `stub`); nothing is started for unit
tests. A gateway binds port 0 and reports the port it got (no port is
picked here and handed on); Triton and PostgreSQL take fixed ports, picked
free and retried on others when one was taken before they bound it. Logs go
to the session's tmp dir and are printed when start-up fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import grpc
import pytest

from bench.services import START_TIMEOUT_S, free_port, stop, wait_serving
from forecast.v1 import forecast_service_pb2_grpc
from tests.polling import eventually_sync
from tools.embedded_triton import TritonPorts, TritonProcess
from tools.local_postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@dataclass
class GatewayProcess:
    """A `python -m forecast_gateway` child process and how to reach it.

    A port asked as 0 is picked by the gateway itself when it binds, and read
    from the line it logs once it serves (`gateway_started`; with workers, the
    supervisor's `workers_starting`): no port is picked here and handed on,
    which another process could take in between, or share: a gateway's port
    is bound with SO_REUSEPORT, so a second gateway given the same number
    would bind it too and take some of the first one's connections.
    """

    process: subprocess.Popen[bytes]
    log_path: Path
    requested_port: int = 0
    """The FORECAST_PORT it was given (0: its own pick, read from its log)."""
    requested_metrics_port: int = 0
    """The FORECAST_METRICS_PORT it was given (0: its own pick; -1: none)."""
    log_offset: int = 0
    """Where this process's lines start in `log_path` (a log may be appended to)."""
    _reported: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        """The gRPC port (waits for the gateway to report the one it bound, if it picked it)."""
        return self.requested_port or self._ports()[0]

    @property
    def metrics_port(self) -> int:
        """The /metrics port (-1: none)."""
        return self.requested_metrics_port or self._ports()[1]

    @property
    def target(self) -> str:
        """host:port for grpc channels and grpcurl."""
        return f"127.0.0.1:{self.port}"

    def log_text(self) -> str:
        """Everything the gateway logged so far."""
        return self.log_path.read_text(errors="replace")

    def _ports(self, timeout_s: float = START_TIMEOUT_S) -> tuple[int, int]:
        if self._reported is None:
            reported = eventually_sync(
                self._ports_logged,
                timeout_s=timeout_s,
                interval_s=0.05,
                message=lambda: f"the gateway reported no port:\n{self.log_text()[-3000:]}",
            )
            assert reported is not None
            self._reported = reported
        return self._reported

    def _ports_logged(self) -> tuple[int, int] | None:
        """(port, metrics port or -1) from the gateway's start line, if it has logged it."""
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            text = log.read().decode(errors="replace")
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("event") in STARTED_EVENTS:
                metrics_port = event.get("metrics_port")
                return int(event["port"]), -1 if metrics_port is None else int(metrics_port)
        if self.process.poll() is not None:
            raise RuntimeError(
                f"the gateway exited ({self.process.returncode}) before it served:\n{text[-3000:]}"
            )
        return None


STARTED_EVENTS = ("gateway_started", "workers_starting")
"""The log lines that carry the ports a gateway (or its workers' supervisor) bound."""


def spawn_gateway(
    triton_url: str,
    log_path: Path,
    *,
    port: int | None = None,
    metrics_port: int | None = None,
    **env: str,
) -> GatewayProcess:
    """Start a gateway process against `triton_url`; do not wait.

    Without `port` / `metrics_port` it binds port 0 (a port of its own pick)
    and `GatewayProcess.port` reads the one it got from its log.
    """
    port = 0 if port is None else port
    metrics_port = 0 if metrics_port is None else metrics_port
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
        offset = log_file.tell()
        process = subprocess.Popen(
            [sys.executable, "-m", "forecast_gateway"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    return GatewayProcess(process, log_path, port, metrics_port, offset)


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

    Its ports are its own pick (port 0) unless given; a given port is the
    caller's (a restart on the same port, say).
    """
    gateway = spawn_gateway(triton_url, log_path, port=port, metrics_port=metrics_port, **env)
    try:
        outcome = _wait_serving_or_exit(gateway)
    except (RuntimeError, AssertionError) as error:  # exited or never reported its port
        gateway.process.kill()
        raise RuntimeError(f"gateway did not become SERVING: {error}") from None
    if outcome != "serving":
        gateway.process.kill()
        raise RuntimeError(f"gateway did not become SERVING:\n{gateway.log_text()[-3000:]}")
    return gateway


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


def start_triton(
    log_dir: Path,
    repository: Path = ROOT / "model_repository",
    before_start: Callable[[Path], object] | None = None,
) -> TritonProcess:
    """A ready Triton on ports picked free; started again on others if one was taken meanwhile.

    Triton takes its ports as flags and refuses port 0 (it would listen for
    HTTP and gRPC "at the same port"; it could not report its pick anyway),
    so a port picked free can be taken before it binds: a start that fails
    saying so is retried (PORT_ATTEMPTS in all). Triton binds its ports only
    after loading the models, so "ready" on the HTTP port could come from
    another server that took it meanwhile: it is ready once it listens on
    all three ports itself.
    """
    for attempt in range(PORT_ATTEMPTS):
        ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        log_path = log_dir / f"triton-{attempt}.log" if attempt else log_dir / "triton.log"
        if before_start is not None:
            before_start(log_path)
        server = TritonProcess(repository, ports, log_path=log_path)
        server.start()
        try:
            server.wait_ready()
            eventually_sync(
                partial(_holds_ports, server, ports),
                timeout_s=30.0,
                message=f"tritonserver did not listen on {ports} itself",
            )
        except (RuntimeError, AssertionError) as error:
            server.stop()
            if attempt + 1 < PORT_ATTEMPTS and _bind_failed(server, error):
                continue
            raise
        return server
    raise AssertionError("unreachable")


def _holds_ports(server: TritonProcess, ports: TritonPorts) -> bool:
    """Whether the server process itself listens on every one of `ports` (RuntimeError: exited)."""
    process, pid = server._process, server.pid
    if process is None or pid is None or process.poll() is not None:
        raise RuntimeError("tritonserver exited")
    return {ports.http, ports.grpc, ports.metrics} <= listening_ports(pid)


def listening_ports(pid: int) -> set[int]:
    """The TCP ports that process `pid` has listening sockets on (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _bind_failed(server: TritonProcess | LocalPostgres, error: BaseException) -> bool:
    """Whether a start failed on a port taken meanwhile (said in the error or the log)."""
    text = str(error)
    with contextlib.suppress(OSError):
        text += server.log_path.read_text(errors="replace")[-5000:] if server.log_path else ""
    return any(words in text for words in BIND_FAILURES)


def start_postgres() -> LocalPostgres:
    """A PostgreSQL server on a port picked free; started again on another if it was taken.

    PostgreSQL takes its port as a flag (0 is not a port it accepts), so as
    for Triton a start that fails on a taken port is retried. Another server
    that took the port cannot pass for this one: the readiness check logs in
    with this server's own password.
    """
    for attempt in range(PORT_ATTEMPTS):
        server = LocalPostgres(free_port())
        try:
            server.start()
        except RuntimeError as error:
            retry = attempt + 1 < PORT_ATTEMPTS and _bind_failed(server, error)
            server.stop()  # removes its folder, log included
            if retry:
                continue
            raise
        return server
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """A real PostgreSQL server (the machine's binaries; `make system-tools` installs them)."""
    server = start_postgres()
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


def served_models() -> list[str]:
    """The models a gateway on the shipped config serves from the shipped repository.

    Every model whose config.pbtxt declares the forecast contract (discovery),
    and the ones config/gateway.toml lists, by name.
    """
    declared = {
        path.parent.name
        for path in (ROOT / "model_repository").glob("*/config.pbtxt")
        if '"forecast.contract"' in path.read_text()
    }
    return sorted(declared | {"lstm_timeseries", "moving_average"})
