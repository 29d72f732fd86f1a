"""The gateway's one exception hierarchy, with no transport in it.

Core modules raise these; the edge (`api/status.py`, called by the
interceptor) turns them into a gRPC status with `google.rpc` details:
`ErrorInfo` (stable reason, domain "forecast.v1") always, `BadRequest` field
violations for invalid input. Anything else that escapes becomes INTERNAL
with a generic message. `Code` holds the canonical status numbers
(google.rpc.Code), so the core and the A/B store never import grpc (below the
edge only `backends/triton.py` does, for Triton's client).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

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


class Code(enum.IntEnum):
    """The canonical status codes the gateway answers with (google.rpc.Code numbers)."""

    CANCELLED = 1
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    INTERNAL = 13
    UNAVAILABLE = 14
    UNAUTHENTICATED = 16


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key at fault."""


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: `field` is the proto field path, e.g. "history"."""

    field: str
    description: str
    reason: str = ""
    """A stable reason of its own (e.g. MISSING_VALUES); the error takes it when all share it."""


MISSING_VALUES = "MISSING_VALUES"
"""Reason of a request rejected for missing values in the window a model reads."""


class GatewayError(Exception):
    """Base of every error the gateway reports to callers."""

    code: Code = Code.INTERNAL
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


class InvalidArgument(GatewayError):
    """The request is invalid; the violations say which fields and why."""

    code = Code.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    @classmethod
    def of(cls, violations: Sequence[FieldViolation]) -> InvalidArgument:
        """One error for all violations, its message listing them."""
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        reasons = {v.reason for v in violations}
        reason = reasons.pop() if len(reasons) == 1 and "" not in reasons else None
        return cls(f"invalid request: {summary}", violations=violations, reason=reason)


class NotFound(GatewayError):
    """The model or version is not served by the gateway."""

    code = Code.NOT_FOUND
    reason = "NOT_FOUND"


class Unavailable(GatewayError):
    """Triton or the model cannot serve right now; retrying later may succeed."""

    code = Code.UNAVAILABLE
    reason = "UNAVAILABLE"


class DeadlineExceeded(GatewayError):
    """The caller's deadline passed before the forecast was ready."""

    code = Code.DEADLINE_EXCEEDED
    reason = "DEADLINE_EXCEEDED"


class ResourceExhausted(GatewayError):
    """The gateway or Triton is over capacity and shed the request."""

    code = Code.RESOURCE_EXHAUSTED
    reason = "RESOURCE_EXHAUSTED"


class Unauthenticated(GatewayError):
    """The call needs a token and carries none, or a malformed authorization header."""

    code = Code.UNAUTHENTICATED
    reason = "UNAUTHENTICATED"


class PermissionDenied(GatewayError):
    """The call carries a well-formed token that the gateway does not accept."""

    code = Code.PERMISSION_DENIED
    reason = "PERMISSION_DENIED"


class Internal(GatewayError):
    """Something failed that the caller cannot fix; details are only in the logs."""

    code = Code.INTERNAL
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
