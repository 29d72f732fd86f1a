"""Health as the catalog refresh sees the backend, and server reflection (v1alpha and v1)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from tests.edge import (
    LSTM,
    LSTM_PARAMETERS,
    MA,
    SERVICE,
    Edge,
    details,
    failure,
    fake_backend,
    forecast_request,
    sample,
    serving,
    until_answers,
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICES = {
    SERVICE,
    "google.longrunning.Operations",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


async def statuses(edge: Edge) -> tuple[int, int]:
    """The health of the server ("") and of the ForecastService."""
    stub = health_pb2_grpc.HealthStub(edge.channel)
    server = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    service = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    return server.status, service.status


async def test_serving_while_every_model_has_a_ready_version(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        status = await statuses(edge)
        up = sample("forecast_gateway_triton_up")
        ready = sample("forecast_gateway_model_ready_versions", {"model": LSTM})
    assert status == (SERVING, SERVING)
    assert (up, ready) == (1.0, 2.0)


async def test_the_background_refresh_turns_health_with_the_backend(tmp_path: Path) -> None:
    async with serving(tmp_path, catalog_refresh_s=0.02) as edge:
        before = await statuses(edge)
        edge.backend.up = False
        stub = health_pb2_grpc.HealthStub(edge.channel)

        async def serving_is(status: int) -> bool:
            answer = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE))
            return bool(answer.status == status)

        await until_answers(lambda: serving_is(NOT_SERVING), "NOT_SERVING")
        down = await statuses(edge)
        gauges = (
            sample("forecast_gateway_triton_up"),
            sample("forecast_gateway_model_ready_versions", {"model": MA}),
        )
        refused = await failure(edge.stub.Forecast(forecast_request()))
        edge.backend.up = True
        await until_answers(lambda: serving_is(SERVING), "SERVING again")
        after = await statuses(edge)
        answered = await edge.stub.Forecast(forecast_request())
    assert before == (SERVING, SERVING)
    assert down == (NOT_SERVING, NOT_SERVING)
    assert gauges == (0.0, 0.0)
    assert refused.code() is grpc.StatusCode.UNAVAILABLE
    assert details(refused).info.reason == "MODEL_UNAVAILABLE"
    assert after == (SERVING, SERVING)
    assert answered.version == "2"


async def test_a_model_without_a_ready_version_is_not_serving(tmp_path: Path) -> None:
    backend = fake_backend(**{MA: {"1": "LOADING", "2": "UNAVAILABLE"}})
    async with serving(tmp_path, backend) as edge:
        status = await statuses(edge)
        other_model = await edge.stub.Forecast(forecast_request())
        error = await failure(edge.stub.Forecast(forecast_request(model=MA)))
        model = (await edge.stub.GetModel(pb.GetModelRequest(name=MA))).model
    assert status == (NOT_SERVING, NOT_SERVING)
    assert other_model.version == "2"  # what can be served still is
    assert details(error).info.reason == "MODEL_UNAVAILABLE"
    assert {v.version: v.state for v in model.versions} == {
        "1": forecast_pb2.MODEL_VERSION_STATE_LOADING,
        "2": forecast_pb2.MODEL_VERSION_STATE_UNAVAILABLE,
    }


async def test_a_configured_model_the_backend_does_not_report_is_not_serving(
    tmp_path: Path,
) -> None:
    backend = FakeBackend({LSTM: FakeModel(dict(LSTM_PARAMETERS), {"1": "READY", "2": "READY"})})
    async with serving(tmp_path, backend) as edge:
        status = await statuses(edge)
        error = await failure(edge.stub.Forecast(forecast_request(model=MA)))
        listed = await edge.stub.ListModels(pb.ListModelsRequest())
    assert status == (NOT_SERVING, NOT_SERVING)
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert details(error).info.reason == "MODEL_UNAVAILABLE"
    assert [m.name for m in listed.models] == [LSTM]


async def test_watch_sees_the_backend_go_down(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        watch = health_pb2_grpc.HealthStub(edge.channel).Watch(
            health_pb2.HealthCheckRequest(service=SERVICE)
        )
        try:
            first = await watch.read()
            edge.backend.up = False
            await edge.gateway.refresh()
            second = await watch.read()
        finally:
            watch.cancel()
    assert isinstance(first, health_pb2.HealthCheckResponse) and first.status == SERVING
    assert isinstance(second, health_pb2.HealthCheckResponse) and second.status == NOT_SERVING


async def test_health_of_an_unknown_service_is_not_found(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(
            health_pb2_grpc.HealthStub(edge.channel).Check(
                health_pb2.HealthCheckRequest(service="no.such.Service")
            )
        )
    assert error.code() is grpc.StatusCode.NOT_FOUND


def reflection_calls(
    edge: Edge,
) -> dict[
    str,
    grpc.aio.StreamStreamMultiCallable[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ],
]:
    """ServerReflectionInfo under both names (v1 has v1alpha's wire format)."""
    v1: grpc.aio.StreamStreamMultiCallable[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ] = edge.channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    v1alpha = reflection_pb2_grpc.ServerReflectionStub(edge.channel).ServerReflectionInfo
    return {"v1alpha": v1alpha, "v1": v1}


async def ask(
    call: grpc.aio.StreamStreamMultiCallable[
        reflection_pb2.ServerReflectionRequest, reflection_pb2.ServerReflectionResponse
    ],
    request: reflection_pb2.ServerReflectionRequest,
) -> reflection_pb2.ServerReflectionResponse:
    async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    (answer,) = [a async for a in call(one())]
    return answer


async def test_reflection_lists_the_services_under_v1alpha_and_v1(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        listed = {
            name: await ask(call, reflection_pb2.ServerReflectionRequest(list_services=""))
            for name, call in reflection_calls(edge).items()
        }
        described = {
            name: await ask(
                call, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
            )
            for name, call in reflection_calls(edge).items()
        }
    for name, answer in listed.items():
        assert {s.name for s in answer.list_services_response.service} == SERVICES, name
    for name, answer in described.items():
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in answer.file_descriptor_response.file_descriptor_proto
        ]
        service_file = next(f for f in files if f.package == "forecast.v1" and f.service)
        assert service_file.name == "forecast/v1/forecast_service.proto", name
        assert "Forecast" in {m.name for m in service_file.service[0].method}
