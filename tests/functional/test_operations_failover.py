"""A backtest operation whose replica dies is resumed by another, or ends saying why.

Two gateway processes share one PostgreSQL store and one Triton, with a
short operation lease. The replica that claimed a StartBacktest operation
(the lease owner in the operations table names its host:pid) is SIGKILLed
mid-run; the other takes the operation over once the lease has run out and
answers, on its second attempt, what the synchronous Backtest answers.
Killed during each of its MAX_ATTEMPTS runs, the operation ends ABORTED
with a message saying so, never silently lost.

The backtest is sized to run for a second or two on two shared cores: long
enough to be killed mid-run, short enough that the gateway's synchronous
planning of every window does not hold its event loop (and the lease
renewal) past the lease.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pandas as pd
import psycopg
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from forecast_gateway.operations import MAX_ATTEMPTS
from tests.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually_sync
from tools.embedded_triton import TritonProcess
from tools.local_postgres import LocalPostgres

pytestmark = pytest.mark.functional

LEASE_S = 3
"""operation_lease_s of both replicas: renewed every second, taken over 3 s after a death."""
ABORTED = 10
SERIES, POINTS, WINDOWS = 12, 1100, 1000
"""12 daily series x 1,000 windows x 3 targets: 36,000 windows, ~1.5 s of one core."""
TAKEOVER_S = 90.0
"""Generous deadline for anything a replica does after a kill (lease, poll, a whole run)."""


def backtest_request() -> pb.BacktestRequest:
    """A backtest of three exact (numpy) targets on SERIES noisy weekly-seasonal daily series."""
    days = pd.date_range("2024-01-01", periods=POINTS, freq="D", tz="UTC")
    start = timestamp_pb2.Timestamp()
    start.FromNanoseconds(int(days[0].value))
    rng = np.random.default_rng(21)
    weekly = np.where(days.weekday == 5, 40.0, 0.0)
    series = [
        pb.Series(
            id=f"store-{i}",
            history=(200.0 + 0.1 * i * np.arange(POINTS) + weekly + rng.normal(size=POINTS) * 3)
            .astype(float)
            .tolist(),
            start=start,
            frequency="D",
        )
        for i in range(SERIES)
    ]
    return pb.BacktestRequest(
        model="seasonal_naive",
        series=series,
        horizon=7,
        n_windows=WINDOWS,
        step=1,
        sequence_length=28,
        targets=[
            pb.BacktestTarget(version="1"),
            pb.BacktestTarget(model="moving_average", version="1"),
            pb.BacktestTarget(model="moving_average", version="2"),
        ],
    )


@dataclass
class Replicas:
    """The gateways sharing one store database, the live ones and those killed."""

    triton: TritonProcess
    folder: Path
    env: dict[str, Any]
    """FORECAST_* variables only (typed Any: start_gateway also takes port keywords)."""
    conninfo: str
    live: list[GatewayProcess] = field(default_factory=list)
    killed: list[GatewayProcess] = field(default_factory=list)

    def start(self) -> GatewayProcess:
        """One more replica, SERVING."""
        number = len(self.live) + len(self.killed)
        gateway = start_gateway(self.triton.grpc_url, self.folder / f"{number}.log", **self.env)
        self.live.append(gateway)
        return gateway

    def lease(self, name: str) -> tuple[str, str | None, int]:
        """(state, lease owner, attempts) of operation `name`, read from the store itself."""
        with psycopg.connect(self.conninfo, autocommit=True) as connection:
            row = connection.execute(
                "SELECT state, lease_owner, attempts FROM operations WHERE name = %s", (name,)
            ).fetchone()
        assert row is not None, f"{name} is not in the operations table"
        return str(row[0]), row[1], int(row[2])

    def holder(self, name: str, attempt: int) -> GatewayProcess:
        """The live replica running `name`'s run number `attempt` (polled until one does)."""

        def running() -> GatewayProcess | None:
            state, owner, attempts = self.lease(name)
            assert state != "done", f"{name} ended before its run {attempt} could be interrupted"
            assert attempts <= attempt, f"{name} is on run {attempts}, past {attempt}"
            if state != "running" or attempts != attempt or owner is None:
                return None
            _host, pid, _ = owner.split(":")
            owners = [g for g in self.live if g.process.pid == int(pid)]
            assert owners, f"lease owner {owner} is none of the live replicas"
            return owners[0]

        found = eventually_sync(
            running,
            timeout_s=TAKEOVER_S,
            interval_s=0.02,
            message=lambda: f"{name}'s run {attempt} leased to a live replica",
        )
        assert found is not None
        return found

    def kill(self, gateway: GatewayProcess) -> None:
        """SIGKILL a replica (no clean stop: its lease stays until it runs out)."""
        gateway.process.send_signal(signal.SIGKILL)
        gateway.process.wait(timeout=30)
        self.live.remove(gateway)
        self.killed.append(gateway)


@pytest.fixture
def replicas(triton: TritonProcess, postgres: LocalPostgres, tmp_path: Path) -> Iterator[Replicas]:
    """Two replicas on a fresh PostgreSQL database, with a LEASE_S lease; all stopped after."""
    url = postgres.create_database(f"failover_{uuid.uuid4().hex[:12]}")
    group = Replicas(
        triton,
        tmp_path,
        {
            "FORECAST_STORE_URL": url,
            "FORECAST_STORE_PASSWORD_FILE": str(postgres.password_file),
            "FORECAST_ROUTING_FILE": "",
            "FORECAST_OPERATION_LEASE_S": str(LEASE_S),
        },
        f"{url}?password={postgres.password}",
    )
    try:
        group.start()
        group.start()
        yield group
    finally:
        for gateway in group.live:
            stop_process(gateway.process)


def operations(channel: grpc.Channel) -> operations_pb2_grpc.OperationsStub:
    return operations_pb2_grpc.OperationsStub(channel)


def finished(gateway: GatewayProcess, name: str) -> operations_pb2.Operation:
    """GetOperation on `gateway`, polled until the operation is done."""
    with grpc.insecure_channel(gateway.target) as channel:
        stub = operations(channel)

        def done() -> operations_pb2.Operation | None:
            answer: operations_pb2.Operation = stub.GetOperation(
                operations_pb2.GetOperationRequest(name=name), timeout=30
            )
            return answer if answer.done else None

        answer = eventually_sync(done, timeout_s=TAKEOVER_S, interval_s=0.2, message=f"{name} done")
    assert answer is not None
    return answer


def metadata_of(operation: operations_pb2.Operation) -> pb.BacktestMetadata:
    metadata = pb.BacktestMetadata()
    assert operation.metadata.Unpack(metadata)
    return metadata


def started(gateway: GatewayProcess, name: str) -> list[int]:
    """The attempts of `name` that `gateway` logged it began (its `operation_started` lines)."""
    attempts = []
    for line in gateway.log_text().splitlines():
        if line.startswith("{") and '"operation_started"' in line:
            event = json.loads(line)
            if event.get("event") == "operation_started" and event.get("operation") == name:
                attempts.append(int(event["attempt"]))
    return attempts


def start_backtest(gateway: GatewayProcess, request: pb.BacktestRequest) -> str:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        started: operations_pb2.Operation = stub.StartBacktest(request, timeout=60)
    assert started.name.startswith("operations/") and not started.done
    return str(started.name)


def test_the_other_replica_resumes_an_operation_whose_replica_was_killed(
    replicas: Replicas,
) -> None:
    request = backtest_request()
    name = start_backtest(replicas.live[0], request)
    holder = replicas.holder(name, attempt=1)
    replicas.kill(holder)
    (survivor,) = replicas.live
    state, owner, attempts = replicas.lease(name)
    assert (state, attempts) == ("running", 1), "the run ended before its replica was killed"
    assert owner is not None and f":{holder.process.pid}:" in owner

    done = finished(survivor, name)
    assert not done.HasField("error"), done.error
    metadata = metadata_of(done)
    assert metadata.attempt == 2
    assert metadata.windows_done == metadata.windows_total == SERIES * WINDOWS * 3
    assert started(survivor, name) == [2]
    response = pb.BacktestResponse()
    assert done.response.Unpack(response)
    with grpc.insecure_channel(survivor.target) as channel:
        direct = forecast_service_pb2_grpc.ForecastServiceStub(channel).Backtest(
            request, timeout=120
        )
    assert [r.windows for r in response.results] == [SERIES * WINDOWS] * 3
    assert response == direct


def test_an_operation_whose_replica_is_killed_on_every_run_ends_aborted_saying_so(
    replicas: Replicas,
) -> None:
    name = start_backtest(replicas.live[0], backtest_request())
    for attempt in range(1, MAX_ATTEMPTS + 1):
        replicas.kill(replicas.holder(name, attempt))
        if attempt < MAX_ATTEMPTS:
            replicas.start()  # two live replicas again: either takes the next run
    done = finished(replicas.live[0], name)
    assert done.error.code == ABORTED
    assert f"interrupted {MAX_ATTEMPTS} times" in done.error.message
    assert metadata_of(done).attempt == MAX_ATTEMPTS
    assert replicas.lease(name) == ("done", None, MAX_ATTEMPTS)
