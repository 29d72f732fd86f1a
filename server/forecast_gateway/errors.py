"""The gateway's one exception hierarchy and its mapping to gRPC statuses.

Core modules raise these; the interceptor (`interceptors.py`) turns them into
a status with `google.rpc` details: `ErrorInfo` (stable reason, domain
"forecast.v1") always, `BadRequest` field violations for invalid input.
Anything else that escapes becomes INTERNAL with a generic message.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "forecast.v1"
REQUEST_ID_HEADER = "x-request-id"
# Byte budgets of the texts a status carries. The status travels in HTTP/2
# trailers (grpc-message and grpc-status-details-bin), and a client drops
# trailers over 8 KiB (RESOURCE_EXHAUSTED instead of the real status). Messages
# echo caller input (a model name, a version), so they are clipped here, in the
# middle, keeping the start and the end of the text.
MAX_MESSAGE_BYTES = 512
MAX_DESCRIPTION_BYTES = 256
MAX_METADATA_BYTES = 128
# Longest piece of caller input quoted in an error message (see `shown`).
MAX_SHOWN_CHARS = 64


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    """A concrete grpc.Status (grpc only defines the interface)."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: `field` is the proto field path, e.g. "history"."""

    field: str
    description: str


class GatewayError(Exception):
    """Base of every error the gateway reports to callers."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        violations: Sequence[FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.violations = tuple(violations)
        self.metadata = dict(metadata or {})

    def to_status(self, request_id: str = "") -> grpc.Status:
        """The gRPC status, with ErrorInfo and (if any) BadRequest details packed in.

        The request id goes into ErrorInfo metadata and the `x-request-id`
        trailer, so a caller can quote it when reporting a problem.
        """
        details: list[any_pb2.Any] = []
        metadata = {key: clip(value, MAX_METADATA_BYTES) for key, value in self.metadata.items()}
        if request_id:
            metadata["request_id"] = request_id
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=metadata
        )
        details.append(_pack(info))
        if self.violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=clip(v.field, MAX_METADATA_BYTES),
                        description=clip(v.description, MAX_DESCRIPTION_BYTES),
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad_request))
        status = status_pb2.Status(
            code=ERROR_CODES[self.code],
            message=clip(self.message, MAX_MESSAGE_BYTES),
            details=details,
        )
        converted = rpc_status.to_status(status)
        trailers = tuple(converted.trailing_metadata)
        if request_id:
            trailers += ((REQUEST_ID_HEADER, request_id),)
        return _Status(converted.code, converted.details, trailers)


class InvalidArgument(GatewayError):
    """The request is invalid; the violations say which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    @classmethod
    def of(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """One error for all violations, its message listing them."""
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        return cls(f"invalid request: {summary}", violations=violations)


class NotFound(GatewayError):
    """The model or version is not served by the gateway."""

    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


class Unavailable(GatewayError):
    """Triton or the model cannot serve right now; retrying later may succeed."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(GatewayError):
    """The caller's deadline passed before the forecast was ready."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(GatewayError):
    """The gateway or Triton is over capacity and shed the request."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(GatewayError):
    """The call needs a token and carries none, or a malformed authorization header."""

    code = grpc.StatusCode.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    """The call carries a well-formed token that the gateway does not accept."""

    code = grpc.StatusCode.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Internal(GatewayError):
    """Something failed that the caller cannot fix; details are only in the logs."""

    code = grpc.StatusCode.INTERNAL
    reason = "INTERNAL"


def shown(value: str) -> str:
    """repr() of caller input for an error message, cut to MAX_SHOWN_CHARS characters.

    A batch repeats a per-series error for every series: quoting a 500 KB
    version in each of 4,096 errors would build gigabytes from one request.
    """
    if len(value) > MAX_SHOWN_CHARS:
        value = value[:MAX_SHOWN_CHARS] + "\u2026"
    return repr(value)


def clip(text: str, limit: int) -> str:
    """`text` if its UTF-8 form fits in `limit` bytes, else its start and end around an ellipsis."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    half = (limit - 3) // 2  # the ellipsis takes 3 bytes
    head = data[:half].decode("utf-8", errors="ignore")
    tail = data[len(data) - half :].decode("utf-8", errors="ignore")
    return f"{head}\u2026{tail}"


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


ERROR_CODES: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: code_pb2.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND: code_pb2.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE: code_pb2.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: code_pb2.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED: code_pb2.RESOURCE_EXHAUSTED,
    grpc.StatusCode.INTERNAL: code_pb2.INTERNAL,
    grpc.StatusCode.UNAUTHENTICATED: code_pb2.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED: code_pb2.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION: code_pb2.FAILED_PRECONDITION,
    grpc.StatusCode.CANCELLED: code_pb2.CANCELLED,
}
