"""The gRPC edge in process: the assembled gateway on port 0 with the fake backend.

Every error class with its status and `google.rpc` details, the request id,
tokens, load shedding, health, reflection, the request line and metrics,
the in-band errors of batches and streams, the A/B round trip, and a drain
that answers every call it received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import structlog
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.base import Rows
from forecast_gateway.errors import Unavailable
from tests.inprocess import running

HISTORY = [float(i % 7) for i in range(30)]


def details(error: grpc.aio.AioRpcError) -> tuple[error_details_pb2.ErrorInfo, list[str]]:
    """ErrorInfo and the BadRequest field names of a failed call."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), "no google.rpc status details"
    status = status_pb2.Status.FromString(raw)
    info, fields = error_details_pb2.ErrorInfo(), []
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            packed.Unpack(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return info, fields


async def failed(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


async def test_a_forecast_is_answered_with_its_route(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        response = await gw.stub.Forecast(
            pb.ForecastRequest(model="m", version="1", history=HISTORY, horizon=3)
        )
    assert (response.model, response.version, response.horizon) == ("m", "1", 3)
    assert list(response.values) == pytest.approx([HISTORY[-1]] * 3)  # the fake's last value
    assert response.forecast_id


async def test_invalid_input_lists_every_violation_with_error_info(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        error = await failed(
            gw.stub.Forecast(
                pb.ForecastRequest(
                    model="m", history=HISTORY, horizon=3000, interval_coverages=[1.5]
                )
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    info, fields = details(error)
    assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "forecast.v1")
    assert set(fields) == {"horizon", "interval_coverages[0]"}
    assert info.metadata["request_id"]


async def test_unparseable_bytes_are_malformed_request(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        raw: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = gw.channel.unary_unary(
            "/forecast.v1.ForecastService/Forecast"
        )
        error = await failed(raw(b"\xff\xff\xff not a protobuf"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error)[0].reason == "MALFORMED_REQUEST"


@pytest.mark.parametrize(
    ("model", "version", "reason"),
    [("nope", "", "MODEL_NOT_FOUND"), ("m", "9", "VERSION_NOT_FOUND")],
)
async def test_unknown_models_and_versions_are_not_found(
    tmp_path: Path, model: str, version: str, reason: str
) -> None:
    async with running(tmp_path) as gw:
        error = await failed(
            gw.stub.Forecast(pb.ForecastRequest(model=model, version=version, history=HISTORY))
        )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    assert details(error)[0].reason == reason


async def test_a_backend_that_cannot_serve_is_unavailable(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        gw.backend.errors[("m", "1")] = Unavailable("down", reason="TRITON_UNAVAILABLE")
        error = await failed(
            gw.stub.Forecast(pb.ForecastRequest(model="m", version="1", history=HISTORY))
        )
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    assert details(error)[0].reason == "TRITON_UNAVAILABLE"


async def test_an_unexpected_failure_is_a_generic_internal(tmp_path: Path) -> None:
    def broken(windows: Rows, horizon: int) -> Rows:
        raise RuntimeError("secret internals /etc/passwd")

    async with running(tmp_path) as gw:
        gw.backend.models["m"].forecasts["1"] = broken
        error = await failed(
            gw.stub.Forecast(pb.ForecastRequest(model="m", version="1", history=HISTORY))
        )
    assert error.code() is grpc.StatusCode.INTERNAL
    assert "secret" not in (error.details() or "") and "passwd" not in (error.details() or "")


async def test_a_slow_backend_is_deadline_exceeded(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        gw.backend.delay_s = 2.0
        error = await failed(
            gw.stub.Forecast(
                pb.ForecastRequest(model="m", version="1", history=HISTORY), timeout=0.2
            )
        )
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_calls_beyond_max_in_flight_are_shed_with_details(tmp_path: Path) -> None:
    async with running(tmp_path, max_in_flight=1) as gw:
        gw.backend.delay_s = 0.3
        request = pb.ForecastRequest(model="m", version="1", history=HISTORY)
        outcomes = await asyncio.gather(
            *(gw.stub.Forecast(request) for _ in range(6)), return_exceptions=True
        )
    shed = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert shed and len(shed) < 6
    assert all(e.code() is grpc.StatusCode.RESOURCE_EXHAUSTED for e in shed)
    assert details(shed[0])[0].reason


async def test_the_request_id_is_echoed_as_a_trailer(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        call = gw.stub.Forecast(
            pb.ForecastRequest(model="m", version="1", history=HISTORY),
            metadata=(("x-request-id", "edge-42"),),
        )
        await call
        trailers = dict(await call.trailing_metadata() or ())
    assert trailers["x-request-id"] == "edge-42"


async def test_tokens_guard_writes_and_reads_stay_open(tmp_path: Path) -> None:
    token = "t" * 32
    (tmp_path / "tokens").write_text(f"{token}\n")
    async with running(tmp_path, auth_token_file=str(tmp_path / "tokens")) as gw:
        forecast = await gw.stub.Forecast(pb.ForecastRequest(model="m", history=HISTORY))
        report = pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0])
        missing = await failed(gw.stub.ReportActuals(report))
        bearer = (("authorization", "Bearer " + "x" * 32),)
        wrong = await failed(gw.stub.ReportActuals(report, metadata=bearer))
        ok = await gw.stub.ReportActuals(report, metadata=(("authorization", f"Bearer {token}"),))
    assert missing.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details(missing)[0].reason == "TOKEN_MISSING"
    assert wrong.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details(wrong)[0].reason == "TOKEN_INVALID"
    assert ok.forecast_id == forecast.forecast_id


async def test_health_follows_the_backend(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        health = health_pb2_grpc.HealthStub(gw.channel)
        serving = await health.Check(health_pb2.HealthCheckRequest(service=""))
        gw.backend.up = False
        await gw.gateway.refresh()
        down = await health.Check(
            health_pb2.HealthCheckRequest(service="forecast.v1.ForecastService")
        )
    assert serving.status == health_pb2.HealthCheckResponse.SERVING
    assert down.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_reflection_lists_the_service(tmp_path: Path) -> None:
    async def one(
        request: reflection_pb2.ServerReflectionRequest,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    async with running(tmp_path) as gw:
        stub = reflection_pb2_grpc.ServerReflectionStub(gw.channel)
        answers = [
            a
            async for a in stub.ServerReflectionInfo(
                one(reflection_pb2.ServerReflectionRequest(list_services=""))
            )
        ]
    names = {s.name for s in answers[0].list_services_response.service}
    assert "forecast.v1.ForecastService" in names and "grpc.health.v1.Health" in names


def requests_counted(labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value("forecast_gateway_requests_total", labels) or 0.0


async def test_one_request_line_and_metrics_labelled_by_the_route(tmp_path: Path) -> None:
    labels = {"rpc": "Forecast", "model": "m", "version": "2", "routing": "pinned", "code": "OK"}
    before = requests_counted(labels)
    async with running(tmp_path) as gw:
        with structlog.testing.capture_logs() as logs:
            await gw.stub.Forecast(pb.ForecastRequest(model="m", version="2", history=HISTORY))
            for _ in range(100):  # the line is written on the loop turn after the response
                if any(e["event"] == "request" for e in logs):
                    break
                await asyncio.sleep(0.01)
    lines = [e for e in logs if e["event"] == "request"]
    assert len(lines) == 1
    line = lines[0]
    assert (line["model"], line["version"], line["routing"], line["status"]) == (
        "m",
        "2",
        "pinned",
        "OK",
    )
    assert line["latency_ms"] >= 0
    assert requests_counted(labels) == before + 1


async def test_a_batch_answers_each_series_in_band(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        response = await gw.stub.ForecastBatch(
            pb.ForecastBatchRequest(
                model="m",
                version="1",
                series=[
                    pb.Series(id="ok", history=HISTORY),
                    pb.Series(id="short", history=HISTORY[:3]),
                ],
            )
        )
    by_id = {r.id: r for r in response.results}
    assert by_id["ok"].WhichOneof("outcome") == "forecast"
    assert by_id["short"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_stream_answers_every_request(tmp_path: Path) -> None:
    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        for i in range(5):
            yield pb.StreamForecastRequest(
                request_id=f"r{i}", request=pb.ForecastRequest(model="m", history=HISTORY)
            )

    async with running(tmp_path) as gw:
        answers = [a async for a in gw.stub.StreamForecast(requests())]
    assert sorted(a.request_id for a in answers) == [f"r{i}" for i in range(5)]


async def test_compare_then_actuals_then_the_experiment(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        compared = await gw.stub.CompareVersions(
            pb.CompareVersionsRequest(model="m", history=HISTORY, horizon=2)
        )
        forecast = await gw.stub.Forecast(pb.ForecastRequest(model="m", history=HISTORY, horizon=2))
        scored = await gw.stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0, 2.0])
        )
        experiment = await gw.stub.GetExperiment(pb.GetExperimentRequest(model="m"))
    assert {f.version for f in compared.forecasts} == {"1", "2"}
    assert [s.version for s in scored.scores] == [forecast.version]
    assert np.isfinite(scored.scores[0].mae)
    assert forecast.version in {v.version for v in experiment.versions}


async def test_a_drain_answers_every_call_it_received(tmp_path: Path) -> None:
    async with running(tmp_path, shutdown_grace_s=5.0) as gw:
        gw.backend.delay_s = 0.3
        request = pb.ForecastRequest(model="m", version="1", history=HISTORY)
        calls = [asyncio.ensure_future(gw.stub.Forecast(request)) for _ in range(8)]
        for _ in range(500):  # until the calls have reached the backend
            if gw.backend.calls:
                break
            await asyncio.sleep(0.01)
        await gw.gateway.stop()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(not isinstance(o, BaseException) for o in outcomes), outcomes
