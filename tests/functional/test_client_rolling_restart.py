"""ForecastClient through a rolling restart of two gateway replicas.

Two gateways on the session's Triton, dialled as one target
("ipv4:127.0.0.1:A,127.0.0.1:B", round_robin). While 8 threads call Forecast
in a loop, each replica in turn is SIGTERMed and started again on its port.
With the client's default retry policy no call may fail. (Without it, one
run here saw 14 of 1,065 calls fail, 12 UNAVAILABLE and 2 CANCELLED, and
three others none: whether a call meets the restart is a matter of timing,
so that side is not a test; tests/unit/test_client_connection.py shows the
retries against a server that answers UNAVAILABLE.)
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import free_port
from forecast_client import DEFAULT_RETRY_POLICY, ForecastClient, ForecastError, RetryPolicy
from tests.conftest import start_gateway, stop_process
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

HISTORY = [float(i % 17) for i in range(60)]
CALLERS = 8


def start_replica(triton: TritonProcess, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A gateway on `port` (a restarted replica keeps its address), SERVING."""
    store = str(log_path.parent / f"store-{port}.sqlite3")
    gateway = start_gateway(
        triton.grpc_url,
        log_path,
        port=port,
        metrics_port=-1,
        FORECAST_ROUTING_FILE="",
        FORECAST_STORE_PATH=store,
    )
    return gateway.process


class Callers:
    """CALLERS threads calling Forecast through one client until stopped; counts the outcomes."""

    def __init__(self, client: ForecastClient) -> None:
        self.client = client
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._loop) for _ in range(CALLERS)]

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                self.client.forecast("moving_average", HISTORY, horizon=3)
                outcome = "OK"
            except ForecastError as error:
                outcome = error.code.name
            with self.lock:
                self.outcomes[outcome] += 1

    def __enter__(self) -> Callers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(30)


@pytest.fixture
def ports() -> Iterator[list[int]]:
    yield [free_port(), free_port()]


def rolling_restart(
    triton: TritonProcess, ports: list[int], directory: Path, policy: RetryPolicy | None
) -> dict[str, object]:
    """Start two replicas, restart each in turn under load; the outcomes of every call."""
    replicas = [start_replica(triton, port, directory / f"r{port}.log") for port in ports]
    target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
    exits = []
    try:
        with (
            ForecastClient(
                target, timeout_s=10, retry_policy=policy, load_balancing="round_robin"
            ) as client,
            Callers(client) as callers,
        ):
            for index, port in enumerate(ports):
                before = sum(callers.outcomes.values())
                exits.append(stop_process(replicas[index]))
                replicas[index] = start_replica(triton, port, directory / f"r{port}-2.log")
                assert sum(callers.outcomes.values()) > before  # calls went on meanwhile
            before = sum(callers.outcomes.values())
            while sum(callers.outcomes.values()) < before + 50:  # the last one is back in use
                callers.stopping.wait(0.05)
    finally:
        for replica in replicas:
            stop_process(replica)
    return {"outcomes": dict(callers.outcomes), "exits": exits}


def test_a_rolling_restart_shows_no_error_to_a_client_with_the_default_policy(
    triton: TritonProcess, ports: list[int], tmp_path: Path
) -> None:
    report = rolling_restart(triton, ports, tmp_path, DEFAULT_RETRY_POLICY)
    print(json.dumps({"policy": "default", **report}))
    assert report["exits"] == [0, 0]
    outcomes = report["outcomes"]
    assert isinstance(outcomes, dict) and set(outcomes) == {"OK"}, report
