"""Long-running operations (AIP-151) as the client sees them: a typed `Operation`.

StartBacktest and StartForecastBatch return a `google.longrunning.Operation`
at once; its `metadata` (BacktestMetadata or ForecastBatchMetadata) says how
far it got, and once `done` it holds the response or a `google.rpc.Status`.
`operation_of` turns that message into an `Operation` (the metadata's kind
decides the progress unit); `ForecastClient.backtest_result` and
`forecast_batch_result` decode the response with the builders of the
synchronous calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import grpc
from google.longrunning import operations_pb2
from google.protobuf import any_pb2

from forecast.v1 import forecast_service_pb2
from forecast_client.errors import ForecastError, from_status
from forecast_client.times import from_timestamp

__all__ = [
    "BACKTEST",
    "FORECAST_BATCH",
    "MAX_WAIT_S",
    "RESPONSE_TYPES",
    "Operation",
    "OperationProgress",
    "operation_of",
]

BACKTEST = "backtest"
FORECAST_BATCH = "forecast_batch"
MAX_WAIT_S = 300.0
"""The longest one WaitOperation waits on the gateway: longer waits ask again."""


class _Kind(NamedTuple):
    """What an operation's metadata type says: its kind and how its progress counts."""

    name: str
    unit: str
    metadata: type[Any]
    total: str
    done: str
    response: str


_KINDS = {
    kind.metadata.DESCRIPTOR.full_name: kind
    for kind in (
        _Kind(
            BACKTEST,
            "windows",
            forecast_service_pb2.BacktestMetadata,
            "windows_total",
            "windows_done",
            forecast_service_pb2.BacktestResponse.DESCRIPTOR.full_name,
        ),
        _Kind(
            FORECAST_BATCH,
            "series",
            forecast_service_pb2.ForecastBatchMetadata,
            "series_total",
            "series_done",
            forecast_service_pb2.ForecastBatchResponse.DESCRIPTOR.full_name,
        ),
    )
}
RESPONSE_TYPES = {kind.name: kind.response for kind in _KINDS.values()}
"""The full name of each kind's response message."""


@dataclass(frozen=True)
class OperationProgress:
    """How much of an operation is done: `done` of `total` `unit` ("windows", "series")."""

    done: int
    total: int
    unit: str

    @property
    def fraction(self) -> float:
        """The part done, in [0, 1] (0 while the total is unknown)."""
        return min(1.0, self.done / self.total) if self.total > 0 else 0.0


@dataclass(frozen=True)
class Operation:
    """A long-running operation as the gateway last reported it.

    `name` ("operations/...") is what the other calls take. `kind` is
    "backtest" or "forecast_batch" (from the metadata's type). `attempt`
    counts its runs: 0 while queued, more than 1 when a replica stopped
    while running it and another took over. Times are timezone-aware UTC
    datetimes; `expire_time` (when a finished operation is deleted) is None
    until done. A failed operation (cancelled included) has `error`, with
    the reason and field violations the gateway sent; a succeeded one has a
    response that `ForecastClient.backtest_result` or
    `forecast_batch_result` decodes.
    """

    name: str
    kind: str
    done: bool
    progress: OperationProgress
    attempt: int
    create_time: datetime | None
    update_time: datetime | None
    expire_time: datetime | None
    error: ForecastError | None
    response_type: str = ""
    """The full name of the response message ("" until done, or when it failed)."""
    response: bytes = field(default=b"", repr=False)
    """The serialized response message."""

    @property
    def state(self) -> str:
        """Queued, running, succeeded, cancelled or failed (in those words, lowercase)."""
        if not self.done:
            return "running" if self.attempt > 0 else "queued"
        if self.error is None:
            return "succeeded"
        return "cancelled" if self.error.code is grpc.StatusCode.CANCELLED else "failed"


def operation_of(message: operations_pb2.Operation) -> Operation:
    """The `Operation` of a google.longrunning.Operation message."""
    known = _metadata(message.metadata)
    kind, metadata = known if known is not None else (None, None)
    result = message.WhichOneof("result")
    response = message.response if result == "response" else None
    return Operation(
        name=message.name,
        kind=kind.name if kind is not None else message.metadata.TypeName(),
        done=message.done,
        progress=OperationProgress(
            done=getattr(metadata, kind.done), total=getattr(metadata, kind.total), unit=kind.unit
        )
        if kind is not None
        else OperationProgress(0, 0, ""),
        attempt=metadata.attempt if metadata is not None else 0,
        create_time=_time(metadata, "create_time"),
        update_time=_time(metadata, "update_time"),
        expire_time=_time(metadata, "expire_time"),
        error=from_status(message.error) if result == "error" else None,
        response_type=response.TypeName() if response is not None else "",
        response=response.value if response is not None else b"",
    )


def _metadata(packed: any_pb2.Any) -> tuple[_Kind, Any] | None:
    """The kind and the unpacked metadata; None for a metadata type this client does not know."""
    kind = _KINDS.get(packed.TypeName())
    if kind is None:
        return None
    metadata = kind.metadata()
    return (kind, metadata) if packed.Unpack(metadata) else None


def _time(metadata: Any, name: str) -> datetime | None:
    if metadata is None or not metadata.HasField(name):
        return None
    return from_timestamp(getattr(metadata, name))
