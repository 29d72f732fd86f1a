"""google.longrunning.Operations for the gateway's bulk work (the jobs: `api.jobs`).

The store's operations (`forecast_gateway.operations`) as AIP-151 Operation
messages: `metadata` a BacktestMetadata or ForecastBatchMetadata (progress),
`response` the BacktestResponse or ForecastBatchResponse bytes as the job
wrote them, or `error` a google.rpc.Status (with the error's details).
Every replica answers for every operation (they share the store). With
tokens configured, an operation belongs to the token that started it: any
other caller is told NOT_FOUND, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import any_pb2, empty_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2

from forecast.v1 import forecast_service_pb2
from forecast_gateway.ab import Storage
from forecast_gateway.api import auth
from forecast_gateway.api.convert import timestamp_of
from forecast_gateway.api.jobs import (
    BACKTEST,
    FORECAST_BATCH,
    backtest_job,
    error_of,
    forecast_batch_job,
)
from forecast_gateway.backtest.runner import Backtester
from forecast_gateway.config import GatewayConfig
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.errors import FieldViolation, InvalidArgument, NotFound
from forecast_gateway.operations import Operation, OperationRunner, OperationStore

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

TYPE_PREFIX = "type.googleapis.com/"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
DEFAULT_WAIT_S = 30.0
MAX_WAIT_S = 300.0
WAIT_POLL_S = 0.1


def operation_message(operation: Operation) -> operations_pb2.Operation:
    """The AIP-151 message of a stored operation (metadata and response by its kind)."""
    metadata, response = _KINDS.get(operation.kind, _KINDS[BACKTEST])
    message = operations_pb2.Operation(name=operation.name, done=operation.done)
    message.metadata.Pack(metadata(operation))
    if operation.done and operation.error_code is not None:
        status = status_pb2.Status(code=operation.error_code, message=operation.error_message or "")
        if operation.result:  # the error's whole status, details included
            status = status_pb2.Status.FromString(operation.result)
        message.error.CopyFrom(status)
    elif operation.done:
        message.response.CopyFrom(
            any_pb2.Any(type_url=TYPE_PREFIX + response, value=operation.result or b"")
        )
    return message


def _backtest_metadata(operation: Operation) -> forecast_service_pb2.BacktestMetadata:
    return forecast_service_pb2.BacktestMetadata(
        windows_total=operation.total_units,
        windows_done=operation.done_units,
        **_run_fields(operation),
    )


def _batch_metadata(operation: Operation) -> forecast_service_pb2.ForecastBatchMetadata:
    return forecast_service_pb2.ForecastBatchMetadata(
        series_total=operation.total_units,
        series_done=operation.done_units,
        **_run_fields(operation),
    )


def _run_fields(operation: Operation) -> dict[str, Any]:
    """The fields every kind's metadata shares: the run's attempt and its times."""
    return {
        "attempt": operation.attempts,
        "create_time": timestamp_of(operation.created),
        "update_time": timestamp_of(operation.updated),
        "expire_time": timestamp_of(operation.expires),
    }


_KINDS: dict[str, tuple[Callable[[Operation], Message], str]] = {
    BACKTEST: (_backtest_metadata, forecast_service_pb2.BacktestResponse.DESCRIPTOR.full_name),
    FORECAST_BATCH: (
        _batch_metadata,
        forecast_service_pb2.ForecastBatchResponse.DESCRIPTOR.full_name,
    ),
}
"""Per kind: its metadata message, and the full name of its response message."""


class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    """Get, list, wait for, cancel and delete the caller's operations."""

    def __init__(self, store: OperationStore, runner: OperationRunner, owned: bool) -> None:
        self.store = store
        self.runner = runner
        self.owned = owned
        """Tokens are configured: operations belong to the token that started them."""

    async def start(self, kind: str, request: bytes, units: int, context: Context) -> Operation:
        """A new operation for the caller, queued; the runner looks at once."""
        operation = await self.store.create(kind, self._caller(context), request, units)
        self.runner.wake()
        return operation

    async def GetOperation(
        self, request: operations_pb2.GetOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        """The operation's state, progress and (when done) its result or error."""
        return operation_message(await self._own(request.name, context))

    async def ListOperations(
        self, request: operations_pb2.ListOperationsRequest, context: Context
    ) -> operations_pb2.ListOperationsResponse:
        """The caller's operations, oldest first, a page at a time."""
        if request.filter:
            raise InvalidArgument.of(
                [FieldViolation("filter", "filters are not supported; leave filter empty")]
            )
        size = request.page_size or DEFAULT_PAGE_SIZE
        if not 0 < size <= MAX_PAGE_SIZE:
            raise InvalidArgument.of(
                [FieldViolation("page_size", f"page_size is {size}; give 1 to {MAX_PAGE_SIZE}")]
            )
        after = _page_position(request.page_token)
        page = await self.store.page(self._caller(context), size + 1, after)
        shown = page[:size]
        token = ""
        if len(page) > size:
            last = shown[-1]
            token = base64.urlsafe_b64encode(f"{last.created!r}|{last.name}".encode()).decode()
        return operations_pb2.ListOperationsResponse(
            operations=[operation_message(o) for o in shown], next_page_token=token
        )

    async def WaitOperation(
        self, request: operations_pb2.WaitOperationRequest, context: Context
    ) -> operations_pb2.Operation:
        """The operation once done, or as it stands after `timeout` (default 30 s, at most 300 s).

        Answered early, not done, when this replica stops: ask again (any replica).
        """
        wait_s = DEFAULT_WAIT_S
        if request.HasField("timeout"):
            wait_s = min(MAX_WAIT_S, max(0.0, request.timeout.ToTimedelta().total_seconds()))
        remaining = context.time_remaining()
        if remaining is not None:
            wait_s = min(wait_s, max(0.0, float(remaining) - 0.5))  # answer before the deadline
        deadline = time.monotonic() + wait_s
        operation = await self._own(request.name, context)
        while not operation.done and time.monotonic() < deadline:
            if self.runner.stopping.is_set():
                break
            await asyncio.sleep(WAIT_POLL_S)
            operation = await self._own(request.name, context)
        return operation_message(operation)

    async def CancelOperation(
        self, request: operations_pb2.CancelOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        """Ask to cancel: it ends with error CANCELLED (at once if queued); done ones stay."""
        await self._own(request.name, context)
        await self.store.cancel(request.name, self.runner.ttl_s)
        return empty_pb2.Empty()

    async def DeleteOperation(
        self, request: operations_pb2.DeleteOperationRequest, context: Context
    ) -> empty_pb2.Empty:
        """Forget the operation and its result (a running one stops)."""
        await self._own(request.name, context)
        await self.store.delete(request.name)
        return empty_pb2.Empty()

    async def _own(self, name: str, context: Context) -> Operation:
        if not name:
            raise InvalidArgument.of([FieldViolation("name", "name is required")])
        operation = await self.store.get(name)
        if operation is None or (self.owned and operation.owner != self._caller(context)):
            raise NotFound(
                f"no operation {name!r} (it may have expired)",
                reason="OPERATION_NOT_FOUND",
                metadata={"operation": name},
            )
        return operation

    def _caller(self, context: Context) -> str:
        return auth.caller(context.invocation_metadata() or ()) if self.owned else ""


def _page_position(token: str) -> tuple[float, str] | None:
    if not token:
        return None
    try:
        created, name = base64.urlsafe_b64decode(token.encode()).decode().split("|", 1)
        return float(created), name
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.of(
            [FieldViolation("page_token", "not a page token this gateway returned")]
        ) from None


def serve_operations(
    server: grpc.aio.Server,
    storage: Storage,
    forecaster: Forecaster,
    backtester: Backtester,
    config: GatewayConfig,
    owned: bool,
) -> OperationsServicer:
    """The Operations service on `server`, its runner (not started) running the jobs."""
    store = OperationStore(storage)
    timeout_s = config.operation_timeout_s
    runner = OperationRunner(
        store,
        {
            BACKTEST: backtest_job(backtester, timeout_s),
            FORECAST_BATCH: forecast_batch_job(forecaster, config.max_batch_series, timeout_s),
        },
        replica=f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
        ttl_s=config.operation_ttl_s,
        lease_s=config.operation_lease_s,
        concurrency=config.operation_concurrency,
        error_of=error_of,
    )
    servicer = OperationsServicer(store, runner, owned)
    operations_pb2_grpc.add_OperationsServicer_to_server(servicer, server)
    return servicer
