"""Triton's errors read in one place: which gateway error each becomes, and which to retry.

Triton reports trouble as a gRPC status name and a message; a few messages
say more than their status ("Exceeds maximum queue size" arrives as
UNAVAILABLE, so does a version that is not loaded). These functions take
the status name and message as plain strings, so they need no grpc.
"""

from __future__ import annotations

import structlog

from forecast_gateway.backends.base import VERSION_GONE
from forecast_gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    Internal,
    ResourceExhausted,
    Unavailable,
)

log = structlog.get_logger(__name__)

QUEUE_FULL = "Exceeds maximum queue size"
"""Triton's message when a model's queue is full (sent as UNAVAILABLE)."""


def convert_error(status: str, message: str, **context: str) -> GatewayError:
    """Map a Triton error (gRPC status name and message) to the gateway's exception.

    The only place that interprets Triton's errors; logs each one it converts.
    """
    log.warning("triton_error", triton_status=status, triton_message=message, **context)
    return gateway_error(status, message, **context)


def gateway_error(status: str, message: str, **context: str) -> GatewayError:
    """`convert_error` without the log line (for errors logged once per outage elsewhere)."""
    if status.endswith("RESOURCE_EXHAUSTED") or QUEUE_FULL in message:
        return ResourceExhausted(
            "Triton's queue for this model is full; retry later with backoff",
            reason="TRITON_OVERLOADED",
        )
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceeded("the deadline passed while Triton was computing the forecast")
    if status.endswith("NOT_FOUND") or version_not_ready(message):
        return Unavailable(
            "the model version is not loaded in Triton right now; retry later",
            reason=VERSION_GONE,
            metadata=dict(context),
        )
    if status.endswith("UNAVAILABLE"):
        return Unavailable("Triton is unreachable; retry later", reason="TRITON_UNAVAILABLE")
    if status.endswith("CANCELLED"):
        return Unavailable("the call to Triton was cancelled", reason="TRITON_CANCELLED")
    return Internal("Triton failed to compute the forecast", reason="TRITON_ERROR")


def version_not_ready(message: str) -> bool:
    """Triton's words for a model or version it does not serve now (sent as UNAVAILABLE).

    e.g. "Request for unknown model: 'lstm_timeseries' version 1 is not at ready state".
    """
    # Not a bare "not ready": Triton says "Server not ready" when it is not
    # serving at all, which is TRITON_UNAVAILABLE and worth a retry.
    return "unknown model" in message or "is not at ready state" in message


def retryable(status: str, message: str, balanced: bool = False) -> bool:
    """UNAVAILABLE from a Triton that is down, not one that answered "queue full" or "not ready".

    A full queue is shed on purpose, and a version being unloaded will not be
    back within a retry's backoff: the caller (or the router) should go elsewhere.
    With several replicas (`balanced`) the retry goes to the next replica,
    which may serve the version: the catalog counts a version ready while any
    replica serves it, so a call must be able to reach that replica.
    """
    return (
        status.endswith("UNAVAILABLE")
        and QUEUE_FULL not in message
        and (balanced or not version_not_ready(message))
    )
