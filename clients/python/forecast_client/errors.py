"""The client's one exception type, built from the gateway's rich gRPC status.

The gateway puts a `google.rpc.Status` in the `grpc-status-details-bin` trailer
with `BadRequest` (one field violation per invalid field) and `ErrorInfo`
(a stable reason such as "MODEL_NOT_FOUND" in the domain "forecast.v1").
`from_status` is the only place that decodes it: `from_rpc_error` for a
failed call, and for a failed long-running operation, whose `error` is the
same Status. Batch and stream calls carry per-series errors in-band instead
(`forecast.v1.ForecastError`, the same content); `from_proto_error` turns
those into the same exception type.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from forecast.v1 import forecast_pb2

__all__ = [
    "FieldViolation",
    "ForecastError",
    "from_proto_error",
    "from_rpc_error",
    "from_status",
]

ERROR_DOMAIN = "forecast.v1"
_STATUS_CODES = {code.value[0]: code for code in grpc.StatusCode}


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field: the field path and why it is invalid."""

    field: str
    description: str


class ForecastError(Exception):
    """An RPC to the gateway failed.

    `code` and `message` are the gRPC status; `reason` and `domain` come from
    `google.rpc.ErrorInfo` and `field_violations` from `google.rpc.BadRequest`
    when the gateway sent them (client-side failures such as UNAVAILABLE carry
    neither).
    """

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str | None = None,
        field_violations: tuple[FieldViolation, ...] = (),
        *,
        domain: str | None = None,
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.reason = reason
        self.domain = domain
        self.field_violations = field_violations

    def __repr__(self) -> str:
        return (
            f"ForecastError(code={self.code.name}, message={self.message!r}, "
            f"reason={self.reason!r}, field_violations={self.field_violations!r})"
        )


def from_rpc_error(error: grpc.RpcError) -> ForecastError:
    """Convert a failed call (sync `grpc` or `grpc.aio`) into a `ForecastError`."""
    if isinstance(error, grpc.aio.AioRpcError):
        # from_call only reads code(), details() and trailing_metadata(), which
        # the aio error has with the same meaning.
        call = cast(grpc.Call, error)
    elif isinstance(error, grpc.Call):
        call = error
    else:
        return ForecastError(grpc.StatusCode.UNKNOWN, str(error))
    code, message = call.code(), call.details() or ""
    status = _rich_status(call)
    if status is None:
        return ForecastError(code, message)
    rich = from_status(status)
    return ForecastError(
        code, status.message or message, rich.reason, rich.field_violations, domain=rich.domain
    )


def from_status(status: status_pb2.Status) -> ForecastError:
    """Convert a `google.rpc.Status` (a failed operation's `error`) with its details."""
    reason: str | None = None
    domain: str | None = None
    violations: list[FieldViolation] = []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain = info.reason or None, info.domain or None
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
    code = _STATUS_CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    return ForecastError(code, status.message, reason, tuple(violations), domain=domain)


def from_proto_error(error: forecast_pb2.ForecastError) -> ForecastError:
    """Convert an in-band error (one series of a batch, stream or comparison)."""
    code = _STATUS_CODES.get(error.code, grpc.StatusCode.UNKNOWN)
    violations = tuple(FieldViolation(v.field, v.description) for v in error.field_violations)
    reason = error.reason or None
    domain = ERROR_DOMAIN if reason is not None else None
    return ForecastError(code, error.message, reason, violations, domain=domain)


def _rich_status(call: grpc.Call) -> status_pb2.Status | None:
    """Decode the details trailer; None when absent, malformed or inconsistent."""
    try:
        status: status_pb2.Status | None = rpc_status.from_call(call)
    except (ValueError, DecodeError):
        # ValueError: the trailer's code or message disagrees with the call's.
        return None
    return status
