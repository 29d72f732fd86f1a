"""The processes under test: Triton, the gateway, the baseline and the floor servers.

The floor servers are `bench.floor`'s echo and minimal proxy. Each runs as
a child process on loopback with free ports; logs go to the run's scratch
directory. `Services` starts them all (or those a run calls) and stops them all. The process
helpers here (`free_port`, `wait_serving`, `stop`) also serve the soak tool
and the tests.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tools.embedded_triton import TritonPorts, TritonProcess

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 90.0
FLOORS = ("proxy", "echo")


def free_port() -> int:
    """A TCP port free right now on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ModelOverrides:
    """Changes to lstm_timeseries/config.pbtxt for tuning runs (None: as committed)."""

    queue_delay_us: int | None = None
    instances: int | None = None
    max_batch_size: int | None = None

    def any(self) -> bool:
        """Whether anything is overridden."""
        return any(
            v is not None for v in (self.queue_delay_us, self.instances, self.max_batch_size)
        )

    def apply(self, config: str) -> str:
        """The config text with the overrides applied."""
        if self.queue_delay_us is not None:
            config = re.sub(
                r"max_queue_delay_microseconds:\s*\d+",
                f"max_queue_delay_microseconds: {self.queue_delay_us}",
                config,
            )
        if self.instances is not None:
            config = re.sub(r"count:\s*\d+", f"count: {self.instances}", config)
        if self.max_batch_size is not None:
            config = re.sub(
                r"max_batch_size:\s*\d+", f"max_batch_size: {self.max_batch_size}", config
            )
        return config


def model_repository(scratch: Path, overrides: ModelOverrides) -> Path:
    """model_repository/ itself, or a scratch copy with the LSTM config overridden."""
    source = ROOT / "model_repository"
    if not overrides.any():
        return source
    copy = scratch / "model_repository"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__"))
    config = copy / "lstm_timeseries" / "config.pbtxt"
    config.write_text(overrides.apply(config.read_text()))
    return copy


def wait_serving(target: str, timeout_s: float = START_TIMEOUT_S, service: str = "") -> None:
    """Block until the gRPC health service at `target` answers SERVING (for `service`)."""
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise TimeoutError(f"{target} not SERVING after {timeout_s:.0f}s")


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file."""
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def spawn(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child with its output in `log_path`."""
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes] | None, timeout_s: float = 15.0) -> int | None:
    """SIGTERM, wait, SIGKILL if needed; the exit code (None: no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@dataclass
class Services:
    """Triton, the gateway, the baseline and the floor servers, started for one benchmark run."""

    scratch: Path
    overrides: ModelOverrides = field(default_factory=ModelOverrides)
    workers: int = 1
    """The gateway's worker processes (FORECAST_WORKERS)."""
    with_baseline: bool = True
    """Whether to start the hand-written baseline server."""
    floor_kinds: tuple[str, ...] = FLOORS
    """The floor servers to start (a subset of FLOORS)."""
    triton: TritonProcess | None = None
    gateway: subprocess.Popen[bytes] | None = None
    baseline: subprocess.Popen[bytes] | None = None
    floors: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    gateway_target: str = ""
    baseline_target: str = ""
    floor_targets: dict[str, str] = field(default_factory=dict)

    def start(self) -> None:
        """Start the baseline and Triton together, then the gateway and floors once it is ready."""
        ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
        repository = model_repository(self.scratch, self.overrides)
        self.triton = TritonProcess(repository, ports, log_path=self.scratch / "triton.log")
        self.triton.start()
        if self.with_baseline:
            baseline_port = free_port()
            self.baseline = spawn(
                [sys.executable, "-m", "bench.baseline", "--port", str(baseline_port)],
                self.scratch / "baseline.log",
            )
            self.baseline_target = f"127.0.0.1:{baseline_port}"
        self.triton.wait_ready()
        for kind in self.floor_kinds:
            port = free_port()
            self.floors[kind] = spawn(
                [
                    sys.executable,
                    "-m",
                    "bench.floor",
                    "--kind",
                    kind,
                    "--port",
                    str(port),
                    "--triton-url",
                    self.triton_url,
                ],
                self.scratch / f"{kind}.log",
            )
            self.floor_targets[kind] = f"127.0.0.1:{port}"
        self._start_gateway()
        if self.with_baseline:
            self._wait_port_line(self.baseline, self.scratch / "baseline.log", "baseline server")
        for kind, process in self.floors.items():
            self._wait_port_line(process, self.scratch / f"{kind}.log", f"{kind} server")

    def _start_gateway(self) -> None:
        port = free_port()
        env = {
            **os.environ,
            "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
            "FORECAST_HOST": "127.0.0.1",
            "FORECAST_PORT": str(port),
            "FORECAST_METRICS_PORT": str(free_port()),
            "FORECAST_TRITON_URL": self.triton_url,
            "FORECAST_LOG_FORMAT": "json",
            "FORECAST_STORE_PATH": str(self.scratch / "experiments.sqlite3"),
            "FORECAST_WORKERS": str(self.workers),
        }
        log_path = self.scratch / "gateway.log"
        self.gateway = spawn([sys.executable, "-m", "forecast_gateway"], log_path, env)
        self.gateway_target = f"127.0.0.1:{port}"
        try:
            wait_serving(self.gateway_target)
        except TimeoutError:
            raise RuntimeError(f"the gateway did not start:\n{tail(log_path)}") from None

    def restart_gateway(self, workers: int) -> None:
        """Stop the gateway and start it again with `workers` worker processes."""
        stop(self.gateway)
        self.workers = workers
        self._start_gateway()

    @staticmethod
    def _wait_port_line(process: subprocess.Popen[bytes] | None, log_path: Path, what: str) -> None:
        """Wait for the ``PORT <n>`` line a bench server writes once it serves."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while "PORT " not in (text := log_path.read_text(errors="replace")):
            if process is None or process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {what} did not start:\n{text[-2000:]}")
            time.sleep(0.1)

    @property
    def triton_url(self) -> str:
        """Triton's gRPC address."""
        if self.triton is None:
            raise RuntimeError("Triton is not started")
        return self.triton.grpc_url

    def pids(self) -> dict[str, list[int]]:
        """The process of each group (Triton's stubs are found as its children)."""
        groups = {"gateway": self.gateway, "baseline": self.baseline, **self.floors}
        found = {name: [p.pid] for name, p in groups.items() if p is not None}
        if self.triton is not None and self.triton.pid is not None:
            found["triton"] = [self.triton.pid]
        return found

    def stop(self) -> None:
        """Stop the gateway, the baseline and the floors, then Triton."""
        stop(self.gateway)
        stop(self.baseline)
        for process in self.floors.values():
            stop(process)
        if self.triton is not None:
            self.triton.stop()
