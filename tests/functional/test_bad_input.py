"""Bad input through the real gateway: the right status, a field violation, and still serving."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from forecast.v1 import forecast_service_pb2, forecast_service_pb2_grpc

Stub = forecast_service_pb2_grpc.ForecastServiceStub
CO2_LIKE = [315.0 + 0.1 * i for i in range(60)]


def details(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """ErrorInfo and the BadRequest violated fields of a failed call."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status details"
    info, fields = error_details_pb2.ErrorInfo(), []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields += [v.field for v in bad_request.field_violations]
    return info, fields


@pytest.fixture(autouse=True)
def still_serving_afterwards(stub: Stub) -> Iterator[None]:
    """After every bad request a good one is still answered."""
    yield
    ok = stub.Forecast(
        forecast_service_pb2.ForecastRequest(model="moving_average", history=CO2_LIKE), timeout=10
    )
    assert len(ok.values) == ok.horizon > 0


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"model": "lstm_timeseries", "history": []}, "history"),
        ({"model": "lstm_timeseries", "history": [*CO2_LIKE[:-1], math.nan]}, "history"),
        ({"model": "lstm_timeseries", "history": [math.inf, *CO2_LIKE]}, "history"),
        ({"model": "lstm_timeseries", "version": "2", "history": CO2_LIKE[:30]}, "history"),
        ({"model": "moving_average", "history": [1.0] * 10_001}, "history"),
        ({"model": "lstm_timeseries", "history": CO2_LIKE, "horizon": -1}, "horizon"),
        ({"model": "lstm_timeseries", "history": CO2_LIKE, "horizon": 10_000}, "horizon"),
        (
            {"model": "lstm_timeseries", "history": CO2_LIKE, "sequence_length": 20},
            "sequence_length",
        ),
        (
            {"model": "moving_average", "history": CO2_LIKE, "sequence_length": -3},
            "sequence_length",
        ),
        ({"model": "", "history": CO2_LIKE}, "model"),
        ({"model": "lstm_timeseries", "version": "latest", "history": CO2_LIKE}, "version"),
    ],
)
def test_invalid_request_names_the_field(stub: Stub, fields: dict[str, Any], violated: str) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(forecast_service_pb2.ForecastRequest(**fields), timeout=10)
    error = raised.value
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details(error)
    assert violations == [violated]
    assert violated in (error.details() or "")
    missing = any(v != v for v in fields.get("history", []))  # NaN in the window
    assert info.domain == "forecast.v1"
    assert info.reason == ("MISSING_VALUES" if missing else "INVALID_ARGUMENT")
    assert info.metadata["request_id"]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"model": "no_such_model", "history": CO2_LIKE}, "MODEL_NOT_FOUND"),
        ({"model": "lstm_timeseries", "version": "9", "history": CO2_LIKE}, "VERSION_NOT_FOUND"),
    ],
)
def test_unknown_model_or_version_is_not_found(
    stub: Stub, fields: dict[str, Any], reason: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(forecast_service_pb2.ForecastRequest(**fields), timeout=10)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    info, _ = details(raised.value)
    assert info.reason == reason
    assert "lstm_timeseries" in (raised.value.details() or "")  # tells the caller what does exist


def test_get_unknown_model_is_not_found(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetModel(forecast_service_pb2.GetModelRequest(name="nope"), timeout=10)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND


def test_message_over_the_size_limit_is_resource_exhausted(stub: Stub) -> None:
    # 1 MiB is the configured limit; 200k doubles are ~1.6 MB on the wire.
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(
            forecast_service_pb2.ForecastRequest(model="moving_average", history=[1.0] * 200_000),
            timeout=10,
        )
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_caller_request_id_is_echoed(stub: Stub) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.Forecast(
            forecast_service_pb2.ForecastRequest(model="nope", history=CO2_LIKE),
            timeout=10,
            metadata=(("x-request-id", "trace-abc-123"),),
        )
    info, _ = details(raised.value)
    assert info.metadata["request_id"] == "trace-abc-123"
    trailers: list[tuple[str, str | bytes]] = [
        (item.key, item.value) for item in raised.value.trailing_metadata() or ()
    ]
    assert ("x-request-id", "trace-abc-123") in trailers
