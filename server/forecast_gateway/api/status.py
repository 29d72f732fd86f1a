"""A GatewayError as a gRPC status: code, message and `google.rpc` details.

The one place that turns the core's errors into what travels on the wire
(the interceptor aborts with it; in-band errors of batches and streams use
the same clipping).
"""

from __future__ import annotations

import collections

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from forecast_gateway.errors import (
    ERROR_DOMAIN,
    MAX_DESCRIPTION_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    REQUEST_ID_HEADER,
    Code,
    GatewayError,
    clip,
)


class _Status(
    collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status
):
    """A concrete grpc.Status (grpc only defines the interface)."""


def grpc_code(code: Code) -> grpc.StatusCode:
    """The grpc.StatusCode of a gateway `Code`."""
    return _GRPC_CODES[code]


_GRPC_CODES = {code: grpc.StatusCode[code.name] for code in Code}


def to_status(error: GatewayError, request_id: str = "") -> grpc.Status:
    """The gRPC status, with ErrorInfo and (if any) BadRequest details packed in.

    The request id goes into ErrorInfo metadata and the `x-request-id`
    trailer, so a caller can quote it when reporting a problem.
    """
    converted = rpc_status.to_status(status_message(error, request_id))
    trailers = tuple(converted.trailing_metadata)
    if request_id:
        trailers += ((REQUEST_ID_HEADER, request_id),)
    return _Status(converted.code, converted.details, trailers)


def status_message(error: GatewayError, request_id: str = "") -> status_pb2.Status:
    """The google.rpc.Status of `error` (also an operation's `error`), details packed in."""
    details: list[any_pb2.Any] = []
    metadata = {key: clip(value, MAX_METADATA_BYTES) for key, value in error.metadata.items()}
    if request_id:
        metadata["request_id"] = request_id
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    details.append(_pack(info))
    if error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=clip(v.field, MAX_METADATA_BYTES),
                    description=clip(v.description, MAX_DESCRIPTION_BYTES),
                )
                for v in error.violations
            ]
        )
        details.append(_pack(bad_request))
    return status_pb2.Status(
        code=int(error.code),
        message=clip(error.message, MAX_MESSAGE_BYTES),
        details=details,
    )


def _pack(message: error_details_pb2.ErrorInfo | error_details_pb2.BadRequest) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
