"""The worker supervisor's pure parts: the workers key, restarts, the port, no grpc import."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from forecast_gateway import workers
from forecast_gateway.config import GatewayConfig
from forecast_gateway.errors import ConfigError

DOCUMENT = {"models": [{"name": "a"}]}


@pytest.mark.parametrize(("value", "expected"), [("1", 1), ("4", 4), ("auto", "auto")])
def test_workers_from_the_environment(value: str, expected: object) -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_WORKERS": value})
    assert config.workers == expected


@pytest.mark.parametrize("value", ["0", "-1", "257", "1.5", "x", "AUTO", ""])
def test_a_bad_workers_variable_is_named_once(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_WORKERS": value})
    message = str(caught.value)
    assert message.startswith("FORECAST_WORKERS: must be an integer from 1 to 256 or 'auto'")
    assert ";" not in message  # one message, not one per member of the union


@pytest.mark.parametrize("value", ["2", True, 0, 2.0, "many"])
def test_a_bad_workers_value_in_the_file(value: object) -> None:
    with pytest.raises(ConfigError, match=r"^g\.toml: gateway\.workers: must be an integer"):
        GatewayConfig.from_mapping({"gateway": {"workers": value}, **DOCUMENT}, {}, source="g.toml")


def test_auto_is_the_usable_cores() -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_WORKERS": "auto"})
    assert workers.worker_count(config) == workers.usable_cores()
    assert 1 <= workers.usable_cores() <= len(os.sched_getaffinity(0))


def test_restart_delay_grows_and_is_capped() -> None:
    delays = [workers.restart_delay(n) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_the_supervisor_never_imports_grpc() -> None:
    """Workers start from a process with no gRPC state (gRPC core does not survive a fork)."""
    code = (
        "import sys, forecast_gateway.__main__, forecast_gateway.workers; "
        "print(sorted(m for m in sys.modules if m == 'grpc' or m.startswith('grpc.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_port_is_reserved_and_shared() -> None:
    first = workers.reserve_port("127.0.0.1", 0)
    with first:
        port = first.getsockname()[1]
        assert port > 0
        # A worker binding it with SO_REUSEPORT as well succeeds, and listens.
        with socket.socket() as worker:
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()


def test_a_port_held_by_another_program_is_refused() -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            workers.reserve_port("127.0.0.1", other.getsockname()[1])


@dataclass
class FakeProcess:
    """What the supervisor reads of a worker process."""

    pid: int
    exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.exitcode is None


@pytest.fixture(autouse=True)
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The fake workers' pids are not ours: record the signals instead of sending them."""
    sent: list[tuple[int, int]] = []
    monkeypatch.setattr(
        "forecast_gateway.workers.os.kill", lambda pid, sig: sent.append((pid, sig))
    )
    return sent


def crash(supervisor: workers.Supervisor, index: int, code: int, metrics_dir: Path) -> None:
    """Worker `index` exits with `code` just after it started."""
    worker = supervisor.workers[index]
    worker.process = FakeProcess(pid=10_000 + index, exitcode=code)  # type: ignore[assignment]
    worker.started = time.monotonic()
    supervisor._reap(metrics_dir)


def test_repeated_crashes_are_restarted_with_backoff_then_given_up(
    tmp_path: Path, no_signals: list[tuple[int, int]]
) -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {})
    supervisor = workers.Supervisor(config, 2)
    supervisor.workers = [workers._Worker(0), workers._Worker(1)]
    supervisor.workers[1].process = FakeProcess(pid=20_000)  # type: ignore[assignment]
    for crashes in range(1, workers.MAX_CRASHES):
        crash(supervisor, 0, 1, tmp_path)
        assert supervisor.workers[0].crashes == crashes
        assert supervisor.workers[0].restart_at is not None
        assert supervisor._stopping_since is None
    assert no_signals == []
    crash(supervisor, 0, 1, tmp_path)
    assert supervisor._stopping_since is not None and supervisor._exit_code == 1
    assert supervisor.workers[0].restart_at is None
    assert no_signals == [(20_000, signal.SIGTERM)]  # the other worker drains


def test_a_configuration_error_in_a_worker_stops_everything_with_exit_2(tmp_path: Path) -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {})
    supervisor = workers.Supervisor(config, 2)
    supervisor.workers = [workers._Worker(0), workers._Worker(1)]
    crash(supervisor, 0, workers.CONFIG_EXIT, tmp_path)
    assert supervisor._stopping_since is not None and supervisor._exit_code == 2
    assert supervisor.workers[0].restart_at is None


def test_a_worker_that_ran_a_while_starts_a_new_count(tmp_path: Path) -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {})
    supervisor = workers.Supervisor(config, 1)
    supervisor.workers = [workers._Worker(0, crashes=workers.MAX_CRASHES - 1)]
    worker = supervisor.workers[0]
    worker.process = FakeProcess(pid=10_000, exitcode=-9)  # type: ignore[assignment]
    worker.started = time.monotonic() - workers.STABLE_S
    supervisor._reap(tmp_path)
    assert worker.crashes == 1 and worker.restart_at is not None
    assert supervisor._stopping_since is None
