"""`ForecastClient`'s long-running operations against the whole gateway in process.

start_backtest / start_forecast_batch, get, wait (with progress), cancel,
delete, list (page by page) and the results decoded into the objects the
synchronous calls return, against `tests.edge.serving` (the fake backend,
held with its gate where a test needs an operation still running). The
blocking client runs in a worker thread. The retries of the Operations
calls, and WaitOperation's early answers, are played by a small gRPC server
of the test's own (port 0) that scripts its answers.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from datetime import UTC
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from forecast.v1 import forecast_service_pb2 as pb
from forecast_client import (
    ForecastClient,
    ForecastError,
    Operation,
    OperationProgress,
    RetryPolicy,
)
from forecast_client.operations import operation_of
from forecast_client.render import backtest_json, outcomes_json
from forecast_gateway.errors import Unavailable
from tests.edge import MA, Edge, serving, until
from tests.unit.test_edge_auth import TOKEN, token_file

SERIES = {
    "a": [10.0 + (i % 7) + 0.1 * i for i in range(120)],
    "b": [50.0 - (i % 5) for i in range(100)],
}
BACKTEST: dict[str, Any] = {"horizon": 6, "n_windows": 5, "targets": ["1", "2"]}
WINDOWS = 2 * 5 * 2  # series x windows x targets
QUICK = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.01)

_T = TypeVar("_T")


def address(edge: Edge) -> str:
    return f"127.0.0.1:{edge.gateway.port}"


async def with_client(edge: Edge, call: Callable[[ForecastClient], _T], **options: Any) -> _T:
    """Run `call(client)` in a thread: the gateway serves on this loop meanwhile."""

    def run() -> _T:
        with ForecastClient(address(edge), **options) as client:
            return call(client)

    return await asyncio.to_thread(run)


def start(client: ForecastClient) -> Operation:
    return client.start_backtest(MA, SERIES, **BACKTEST)


async def test_a_started_backtest_waits_to_what_backtest_returns(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        started = await with_client(edge, start)
        finished = await with_client(edge, lambda c: c.wait_operation(started.name))
        got = await with_client(edge, lambda c: c.get_operation(started.name))
        report = await with_client(edge, lambda c: c.backtest_result(finished))
        direct = await with_client(edge, lambda c: c.backtest(MA, SERIES, **BACKTEST))
    assert started.name.startswith("operations/")
    assert (started.kind, started.done, started.state) == ("backtest", False, "queued")
    assert started.progress == OperationProgress(0, WINDOWS, "windows")
    assert started.create_time is not None and started.create_time.tzinfo is UTC
    assert started.expire_time is None and started.error is None
    assert (finished.done, finished.state, finished.attempt) == (True, "succeeded", 1)
    assert finished.progress == OperationProgress(WINDOWS, WINDOWS, "windows")
    assert finished.progress.fraction == 1.0
    assert finished.expire_time is not None and finished.create_time is not None
    assert finished.expire_time > finished.create_time
    assert got == finished  # a finished operation reads the same every time
    assert backtest_json(report) == backtest_json(direct)  # (JSON: NaN != NaN in the objects)


async def test_on_progress_sees_it_queued_running_then_done(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        gate = edge.backend.gate = asyncio.Event()  # the windows wait at the backend
        started = await with_client(edge, start)
        seen: list[Operation] = []
        waiting = asyncio.ensure_future(
            with_client(
                edge,
                lambda c: c.wait_operation(
                    started.name, on_progress=seen.append, progress_every_s=0.02
                ),
            )
        )
        await until(lambda: any(o.state == "running" for o in seen), "a running operation seen")
        gate.set()
        finished = await waiting
    assert seen[0].name == started.name and not seen[0].done
    assert seen[-1] == finished and finished.state == "succeeded"
    assert finished.progress.done == WINDOWS
    states = [(o.done, o.progress.done, o.attempt) for o in seen]
    assert states == sorted(states) and len(set(states)) == len(states)  # changes only


async def test_a_wait_that_runs_out_then_cancel_and_delete(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.gateway.operations.lease_s = 0.3  # renewals (and cancel checks) every 0.1 s
        gate = edge.backend.gate = asyncio.Event()
        started = await with_client(edge, start)
        running = await with_client(edge, lambda c: c.wait_operation(started.name, timeout_s=0.2))
        await with_client(edge, lambda c: c.cancel_operation(started.name))
        cancelled = await with_client(edge, lambda c: c.wait_operation(started.name))
        gate.set()
        with pytest.raises(ForecastError) as result:
            await with_client(edge, lambda c: c.backtest_result(cancelled))
        await with_client(edge, lambda c: c.delete_operation(started.name))
        with pytest.raises(ForecastError) as gone:
            await with_client(edge, lambda c: c.get_operation(started.name))
    assert not running.done and running.state in {"queued", "running"}
    assert cancelled.state == "cancelled" and cancelled.error is not None
    assert cancelled.error.code is grpc.StatusCode.CANCELLED
    assert result.value is cancelled.error
    assert gone.value.code is grpc.StatusCode.NOT_FOUND
    assert gone.value.reason == "OPERATION_NOT_FOUND"


async def test_list_operations_reads_every_page(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        names = [(await with_client(edge, start)).name for _ in range(3)]
        paged = await with_client(edge, lambda c: list(c.list_operations(page_size=2)))
        default = await with_client(edge, lambda c: list(c.list_operations()))
        with pytest.raises(ForecastError) as too_big:
            await with_client(edge, lambda c: list(c.list_operations(page_size=501)))
        for name in names:
            await with_client(edge, lambda c, name=name: c.wait_operation(name))  # type: ignore[misc]
    assert [o.name for o in paged] == names == [o.name for o in default]
    assert all(o.kind == "backtest" for o in paged)
    assert too_big.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in too_big.value.field_violations] == ["page_size"]


async def test_a_failed_operation_carries_the_errors_details(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.errors[(MA, "1")] = Unavailable(
            "Triton is unreachable; retry later", reason="TRITON_UNAVAILABLE"
        )
        started = await with_client(edge, start)
        failed = await with_client(edge, lambda c: c.wait_operation(started.name))
        with pytest.raises(ForecastError) as raised:
            await with_client(edge, lambda c: c.backtest_result(failed))
    assert failed.state == "failed" and failed.error is not None
    error = failed.error
    assert error.code is grpc.StatusCode.UNAVAILABLE and "unreachable" in error.message
    assert (error.reason, error.domain) == ("TRITON_UNAVAILABLE", "forecast.v1")
    assert raised.value is error


def test_an_operations_status_is_decoded_with_its_field_violations() -> None:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field="series[2].history", description="x")
        ]
    )
    info = error_details_pb2.ErrorInfo(reason="SERIES_TOO_SHORT", domain="forecast.v1")
    status = status_pb2.Status(code=3, message="invalid")
    for detail in (info, bad):
        status.details.add().Pack(detail)
    message = operations_pb2.Operation(name="operations/x", done=True, error=status)
    message.metadata.Pack(pb.ForecastBatchMetadata(series_total=4, series_done=2, attempt=2))
    operation = operation_of(message)
    assert (operation.kind, operation.state, operation.attempt) == ("forecast_batch", "failed", 2)
    assert operation.progress == OperationProgress(2, 4, "series")
    assert operation.create_time is None  # unset in the metadata
    error = operation.error
    assert error is not None and error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert (error.message, error.reason) == ("invalid", "SERIES_TOO_SHORT")
    assert [(v.field, v.description) for v in error.field_violations] == [
        ("series[2].history", "x")
    ]
    unknown = operations_pb2.Operation(name="operations/y")
    unknown.metadata.Pack(status_pb2.Status())
    assert operation_of(unknown).kind == "google.rpc.Status"  # a kind this client lacks


async def test_a_started_batch_gives_what_forecast_batch_gives(tmp_path: Path) -> None:
    series: dict[str, list[float]] = {f"s{i}": [v + i for v in SERIES["a"]] for i in range(5)}
    series["gap"] = [*SERIES["b"], math.nan]  # a missing value and no fill: fails alone
    halves = [dict(list(series.items())[:3]), dict(list(series.items())[3:])]
    async with serving(tmp_path, max_batch_series=3) as edge:
        started = await with_client(
            edge, lambda c: c.start_forecast_batch(MA, series, version="1", horizon=4)
        )
        finished = await with_client(edge, lambda c: c.wait_operation(started.name))
        outcomes = await with_client(edge, lambda c: c.forecast_batch_result(finished))
        direct = [
            outcome
            for half in halves  # a call takes at most max_batch_series
            for outcome in await with_client(
                edge,
                lambda c, half=half: c.forecast_batch(MA, half, version="1", horizon=4),  # type: ignore[misc]
            )
        ]
    assert (started.kind, started.progress) == ("forecast_batch", OperationProgress(0, 6, "series"))
    assert finished.progress == OperationProgress(6, 6, "series")
    assert [o.id for o in outcomes] == list(series)
    assert [o.ok for o in outcomes] == [True] * 5 + [False]
    gap = outcomes[-1].error
    assert gap is not None and gap.code is grpc.StatusCode.INVALID_ARGUMENT
    assert gap.reason == "MISSING_VALUES"
    assert [o.forecast.values for o in outcomes if o.forecast] == [
        o.forecast.values for o in direct if o.forecast
    ]
    ids = {o.forecast.forecast_id for o in [*outcomes, *direct] if o.forecast}
    assert len(ids) == 10  # each one recorded on its own
    shape = outcomes_json(outcomes)["results"]
    assert isinstance(shape, list) and shape[-1]["error"]["code"] == "INVALID_ARGUMENT"


async def test_results_of_the_wrong_kind_or_unfinished_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        gate = edge.backend.gate = asyncio.Event()
        started = await with_client(edge, start)
        with pytest.raises(ValueError, match="is not done"):
            await with_client(edge, lambda c: c.backtest_result(started))
        gate.set()
        finished = await with_client(edge, lambda c: c.wait_operation(started.name))
        with pytest.raises(ValueError, match=r"not a forecast\.v1\.ForecastBatchResponse"):
            await with_client(edge, lambda c: c.forecast_batch_result(finished))


async def test_starts_are_checked_before_an_operation_exists(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        with pytest.raises(ForecastError) as short:
            await with_client(
                edge,
                lambda c: c.start_backtest(MA, {"tiny": [1.0] * 5}, horizon=6, n_windows=5),
            )
        with pytest.raises(ForecastError) as unknown:
            await with_client(edge, lambda c: c.start_forecast_batch("nope", {"a": [1.0, 2.0]}))
        listed = await with_client(edge, lambda c: list(c.list_operations()))
    assert short.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in short.value.field_violations] == ["series[0].history"]
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND
    assert listed == []


async def test_an_operation_belongs_to_the_token_that_started_it(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        started = await with_client(edge, start, token=TOKEN)
        finished = await with_client(edge, lambda c: c.wait_operation(started.name), token=TOKEN)
        listed = await with_client(edge, lambda c: list(c.list_operations()), token=TOKEN)
        with pytest.raises(ForecastError) as anonymous:
            await with_client(edge, lambda c: c.get_operation(started.name))
    assert finished.state == "succeeded"
    assert [o.name for o in listed] == [started.name]
    assert anonymous.value.code is grpc.StatusCode.UNAUTHENTICATED


# --- retries and early answers, against a scripted Operations server ------------------------


class ScriptedOperations(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """Fails the next `unavailable` calls; WaitOperation answers not done `early` times first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unavailable = 0
        self.early = 0
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.waits: list[tuple[float, float]] = []
        """Each WaitOperation's (requested wait, time left before its deadline), in seconds."""

    def _record(self, name: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append((name, {k: str(v) for k, v in context.invocation_metadata()}))
            failing = self.unavailable > 0
            self.unavailable -= failing
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def GetOperation(self, request, context):  # type: ignore[no-untyped-def]
        self._record("GetOperation", context)
        if request.name == "operations/missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such operation")
        return done(request.name)

    def WaitOperation(self, request, context):  # type: ignore[no-untyped-def]
        self._record("WaitOperation", context)
        wait_s = request.timeout.ToTimedelta().total_seconds()
        with self.lock:
            self.waits.append((wait_s, context.time_remaining()))
            early = self.early > 0
            self.early -= early
        return operations_pb2.Operation(name=request.name) if early else done(request.name)


def done(name: str) -> operations_pb2.Operation:
    response = any_pb2.Any()
    response.Pack(pb.BacktestResponse(model=MA))
    message = operations_pb2.Operation(name=name, done=True, response=response)
    message.metadata.Pack(pb.BacktestMetadata(windows_total=3, windows_done=3, attempt=1))
    return message


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[str, ScriptedOperations]]:
    servicer = ScriptedOperations()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    operations_pb2_grpc.add_OperationsServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.fixture
def scripted(scripted_server: tuple[str, ScriptedOperations]) -> tuple[str, ScriptedOperations]:
    target, servicer = scripted_server
    servicer.calls.clear()
    servicer.waits.clear()
    servicer.unavailable = servicer.early = 0
    return target, servicer


def test_operations_calls_are_retried_on_unavailable_with_the_policy(
    scripted: tuple[str, ScriptedOperations],
) -> None:
    target, servicer = scripted
    servicer.unavailable = 2
    with ForecastClient(target, retry_policy=QUICK, token=TOKEN) as client:
        assert client.get_operation("operations/a").done
        assert len(servicer.calls) == 3
        assert all(m["authorization"] == f"Bearer {TOKEN}" for _, m in servicer.calls)
        servicer.unavailable = 5
        with pytest.raises(ForecastError) as exhausted:
            client.get_operation("operations/a")
        assert exhausted.value.code is grpc.StatusCode.UNAVAILABLE
        assert len(servicer.calls) == 3 + QUICK.max_attempts
        servicer.unavailable, servicer.calls[:] = 0, []
        with pytest.raises(ForecastError) as missing:
            client.get_operation("operations/missing")
        assert missing.value.code is grpc.StatusCode.NOT_FOUND and len(servicer.calls) == 1
    servicer.unavailable, servicer.calls[:] = 1, []
    with ForecastClient(target, retry_policy=None) as client, pytest.raises(ForecastError):
        client.get_operation("operations/a")
    assert len(servicer.calls) == 1


def test_wait_asks_again_after_early_answers_past_the_per_call_timeout(
    scripted: tuple[str, ScriptedOperations],
) -> None:
    target, servicer = scripted
    servicer.early = 2  # a replica that stops answers its waiters, not done
    with ForecastClient(target, timeout_s=1.0) as client:
        began = time.monotonic()
        finished = client.wait_operation("operations/a")
        report = client.backtest_result(finished)
    assert time.monotonic() - began < 5.0  # the early answers are taken as they come
    assert finished.done and report.model == MA
    assert [name for name, _ in servicer.calls] == ["WaitOperation"] * 3
    for wait_s, left_s in servicer.waits:
        assert wait_s == 300.0  # the gateway's longest wait, not the 1 s per-call timeout
        assert 300.0 < left_s < 303.0  # the wait plus the client's timeout (gRPC rounds up)


def test_wait_with_progress_looks_every_progress_every_s(
    scripted: tuple[str, ScriptedOperations],
) -> None:
    target, servicer = scripted
    servicer.early = 1
    seen: list[Operation] = []
    with ForecastClient(target) as client:
        client.wait_operation("operations/a", on_progress=seen.append, progress_every_s=0.5)
        with pytest.raises(ValueError, match="progress_every_s"):
            client.wait_operation("operations/a", on_progress=seen.append, progress_every_s=0)
    assert [wait_s for wait_s, _ in servicer.waits] == [0.5, 0.5]
    assert [o.done for o in seen] == [False, True]
