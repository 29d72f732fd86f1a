"""StartBacktest and google.longrunning.Operations through the in-process gateway.

The same backtest as Backtest, returned as an operation at once; progress in
its metadata; the result in its response; cancel, delete, list, tokens; and
an operation that survives its replica: handed back on a clean stop and
resumed by the next gateway, taken over once a dead replica's lease runs
out, on SQLite and on a real PostgreSQL server shared by two gateways.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.operations import MAX_ATTEMPTS, OperationStore
from tests.edge import Edge, failure, serving, until_answers
from tests.stores import BACKENDS, location
from tests.unit.test_edge_auth import TOKEN, WRONG, bearer, token_file
from tests.unit.test_edge_backtest import request as backtest_request

CANCELLED, ABORTED = 1, 10


def operations(edge: Edge) -> Any:
    return operations_pb2_grpc.OperationsStub(edge.channel)


async def wait(edge: Edge, name: str, metadata: Any = ()) -> operations_pb2.Operation:
    """WaitOperation until done (each wait at most 5 s)."""
    stub = operations(edge)
    for _ in range(10):
        answer: operations_pb2.Operation = await stub.WaitOperation(
            operations_pb2.WaitOperationRequest(
                name=name, timeout=duration_pb2.Duration(seconds=5)
            ),
            metadata=metadata,
        )
        if answer.done:
            return answer
    raise AssertionError(f"{name} not done after 50 s")


def unpacked(
    operation: operations_pb2.Operation,
) -> tuple[pb.BacktestMetadata, pb.BacktestResponse]:
    metadata, response = pb.BacktestMetadata(), pb.BacktestResponse()
    assert operation.metadata.Unpack(metadata)
    assert operation.response.Unpack(response)
    return metadata, response


async def test_the_operation_answers_what_backtest_answers(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        started = await edge.stub.StartBacktest(backtest_request(step=3, per_window=True))
        finished = await wait(edge, started.name)
        direct = await edge.stub.Backtest(backtest_request(step=3, per_window=True))
        got = await operations(edge).GetOperation(
            operations_pb2.GetOperationRequest(name=started.name)
        )
    assert started.name.startswith("operations/")
    metadata, response = unpacked(finished)
    assert response == direct
    assert (metadata.windows_total, metadata.windows_done, metadata.attempt) == (20, 20, 1)
    assert metadata.expire_time.seconds > metadata.create_time.seconds
    assert got == finished  # a finished operation reads the same every time


async def test_an_invalid_backtest_is_refused_before_an_operation_exists(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(
            edge.stub.StartBacktest(backtest_request(series=[pb.Series(id="x", history=[1.0] * 5)]))
        )
        listed = await operations(edge).ListOperations(operations_pb2.ListOperationsRequest())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert list(listed.operations) == []


async def test_operations_are_listed_a_page_at_a_time(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        names = [(await edge.stub.StartBacktest(backtest_request())).name for _ in range(3)]
        stub = operations(edge)
        first = await stub.ListOperations(operations_pb2.ListOperationsRequest(page_size=2))
        second = await stub.ListOperations(
            operations_pb2.ListOperationsRequest(page_size=2, page_token=first.next_page_token)
        )
        bad = await failure(stub.ListOperations(operations_pb2.ListOperationsRequest(filter="x")))
        for name in names:
            await wait(edge, name)
    assert [o.name for o in first.operations] + [o.name for o in second.operations] == names
    assert first.next_page_token and not second.next_page_token
    assert bad.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_running_operation_is_cancelled_and_a_deleted_one_is_gone(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.gateway.operations.lease_s = 0.3  # renewals (and so cancel checks) every 0.1 s
        gate = edge.backend.gate = asyncio.Event()
        started = await edge.stub.StartBacktest(backtest_request())
        stub = operations(edge)
        await until_answers(lambda: running(edge, started.name), "the operation running")
        await stub.CancelOperation(operations_pb2.CancelOperationRequest(name=started.name))
        cancelled = await wait(edge, started.name)
        gate.set()
        await stub.DeleteOperation(operations_pb2.DeleteOperationRequest(name=started.name))
        gone = await failure(
            stub.GetOperation(operations_pb2.GetOperationRequest(name=started.name))
        )
    assert cancelled.error.code == CANCELLED and "cancelled" in cancelled.error.message
    assert gone.code() is grpc.StatusCode.NOT_FOUND


async def running(edge: Edge, name: str) -> bool:
    answer = await operations(edge).GetOperation(operations_pb2.GetOperationRequest(name=name))
    return answer.metadata.Unpack(meta := pb.BacktestMetadata()) and meta.attempt == 1


async def test_only_the_token_that_started_an_operation_reads_it(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        anonymous = await failure(edge.stub.StartBacktest(backtest_request()))
        started = await edge.stub.StartBacktest(backtest_request(), metadata=bearer(TOKEN))
        stub = operations(edge)
        done = await wait(edge, started.name, bearer(TOKEN))
        no_token = await failure(
            stub.GetOperation(operations_pb2.GetOperationRequest(name=started.name))
        )
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    assert done.done and not done.HasField("error")
    assert no_token.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_an_operation_of_another_token_is_not_found(tmp_path: Path) -> None:
    tokens = tmp_path / "two-tokens"
    other = "tok-other-00112233445566778899aabbccdd"
    tokens.write_text(f"{TOKEN}\n{other}\n")
    async with serving(tmp_path, auth_token_file=str(tokens)) as edge:
        started = await edge.stub.StartBacktest(backtest_request(), metadata=bearer(TOKEN))
        stub = operations(edge)
        theirs = await failure(
            stub.GetOperation(
                operations_pb2.GetOperationRequest(name=started.name), metadata=bearer(other)
            )
        )
        wrong = await failure(
            stub.GetOperation(
                operations_pb2.GetOperationRequest(name=started.name), metadata=bearer(WRONG)
            )
        )
        listed = await stub.ListOperations(
            operations_pb2.ListOperationsRequest(), metadata=bearer(other)
        )
        await wait(edge, started.name, bearer(TOKEN))
    assert theirs.code() is grpc.StatusCode.NOT_FOUND
    assert wrong.code() is grpc.StatusCode.PERMISSION_DENIED
    assert list(listed.operations) == []


@pytest.fixture(params=BACKENDS)
def store_fields(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    url, password = location(request, tmp_path)
    return {"store_url": url, "store_password_file": password}


@asynccontextmanager
async def replica(tmp_path: Path, fields: dict[str, Any]) -> AsyncIterator[Edge]:
    async with serving(tmp_path, **fields) as edge:
        yield edge


async def test_a_replica_that_stops_hands_its_operation_to_the_next(
    tmp_path: Path, store_fields: dict[str, Any]
) -> None:
    async with replica(tmp_path, store_fields) as first:
        first.backend.gate = asyncio.Event()  # held: the operation is running at the stop
        started = await first.stub.StartBacktest(backtest_request())
        await until_answers(lambda: running(first, started.name), "the operation running")
    # The first gateway stopped (its gate released by `serving`); a new one resumes the run.
    async with replica(tmp_path, store_fields) as second:
        finished = await wait(second, started.name)
    metadata, response = unpacked(finished)
    assert metadata.attempt == 1  # a clean stop's run is not counted
    assert [r.windows for r in response.results] == [10, 10]


async def test_any_replica_answers_and_a_dead_replicas_lease_is_taken_over(
    tmp_path: Path, store_fields: dict[str, Any]
) -> None:
    async with replica(tmp_path, store_fields) as one, replica(tmp_path, store_fields) as two:
        for edge in (one, two):
            await edge.gateway.operations.stop()  # no runner: the test plays the replicas
        started = await one.stub.StartBacktest(backtest_request())
        store: OperationStore = one.gateway.operations.store
        claimed = await store.claim("dead-replica", 0.2, 60.0)  # claims it, then never renews
        assert claimed is not None and claimed[0].name == started.name
        seen = await operations(two).GetOperation(
            operations_pb2.GetOperationRequest(name=started.name)
        )
        await asyncio.sleep(0.3)
        runner = two.gateway.operations
        runner.stopping.clear()
        runner.start()  # the live replica claims the expired lease
        finished = await wait(two, started.name)
        await runner.stop()
    assert not seen.done
    metadata, response = unpacked(finished)
    assert metadata.attempt == 2 and len(response.results) == 2


async def test_an_operation_interrupted_every_time_ends_saying_so(
    tmp_path: Path, store_fields: dict[str, Any]
) -> None:
    async with replica(tmp_path, store_fields) as edge:
        await edge.gateway.operations.stop()
        started = await edge.stub.StartBacktest(backtest_request())
        store: OperationStore = edge.gateway.operations.store
        for _ in range(MAX_ATTEMPTS):
            assert await store.claim("dying-replica", 0.0, 60.0) is not None
            await asyncio.sleep(0.01)
        assert await store.claim("dying-replica", 0.0, 60.0) is None  # it ended instead
        ended = await operations(edge).GetOperation(
            operations_pb2.GetOperationRequest(name=started.name)
        )
    assert ended.done and ended.error.code == ABORTED
    assert f"interrupted {MAX_ATTEMPTS} times" in ended.error.message


async def test_reflection_lists_the_operations_service(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        stub = reflection_pb2_grpc.ServerReflectionStub(edge.channel)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
        answer = await call.read()
        await call.done_writing()
    names = {s.name for s in answer.list_services_response.service}
    assert {"forecast.v1.ForecastService", "google.longrunning.Operations"} <= names
