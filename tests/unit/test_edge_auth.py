"""Bearer tokens at the gRPC edge, as auth.py's rule says.

With a token file, ReportActuals (state-changing) needs a valid token and
reads stay open; with auth_required_for_reads every ForecastService call
needs one. No authorization metadata: UNAUTHENTICATED TOKEN_MISSING; not one
`Bearer <token>`: UNAUTHENTICATED TOKEN_MALFORMED; an unknown token:
PERMISSION_DENIED TOKEN_INVALID. Health and reflection are never checked.
No token ever appears in a log line or an error.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.api.server import create_gateway
from forecast_gateway.errors import ConfigError
from tests.edge import (
    HISTORY,
    MA,
    Edge,
    captured_logs,
    details,
    failure,
    fake_backend,
    forecast_request,
    gateway_config,
    request_lines,
    serving,
    until,
)

TOKEN = "tok-6f1d0c7a9b3e4f2a8c5d7e9f01234567"
ROTATED = "tok-new-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WRONG = "tok-wrong-ffffffffffffffffffffffffffff"
Metadata = tuple[tuple[str, str], ...]


def bearer(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "tokens"
    path.write_text(f"# rotated in May\n\n{TOKEN}\n  {ROTATED}  \n")
    return str(path)


async def report(edge: Edge, metadata: Metadata = ()) -> pb.ReportActualsResponse:
    """A forecast (with the same metadata), then its actuals."""
    forecast = await edge.stub.Forecast(forecast_request(model=MA, horizon=2), metadata=metadata)
    reply: pb.ReportActualsResponse = await edge.stub.ReportActuals(
        pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0, 2.0]),
        metadata=metadata,
    )
    return reply


def reads(edge: Edge, metadata: Metadata) -> dict[str, Callable[[], Awaitable[object]]]:
    """One call of every read RPC, ready to run."""

    async def stream() -> list[pb.StreamForecastResponse]:
        requests = [pb.StreamForecastRequest(request_id="r1", request=forecast_request(model=MA))]
        return [a async for a in edge.stub.StreamForecast(iter(requests), metadata=metadata)]

    return {
        "Forecast": lambda: edge.stub.Forecast(forecast_request(model=MA), metadata=metadata),
        "ForecastBatch": lambda: edge.stub.ForecastBatch(
            pb.ForecastBatchRequest(model=MA, series=[pb.Series(id="a", history=HISTORY)]),
            metadata=metadata,
        ),
        "StreamForecast": stream,
        "CompareVersions": lambda: edge.stub.CompareVersions(
            pb.CompareVersionsRequest(model=MA, history=HISTORY), metadata=metadata
        ),
        "GetExperiment": lambda: edge.stub.GetExperiment(
            pb.GetExperimentRequest(model=MA), metadata=metadata
        ),
        "ListExperiments": lambda: edge.stub.ListExperiments(
            pb.ListExperimentsRequest(), metadata=metadata
        ),
        "ListModels": lambda: edge.stub.ListModels(pb.ListModelsRequest(), metadata=metadata),
        "GetModel": lambda: edge.stub.GetModel(pb.GetModelRequest(name=MA), metadata=metadata),
    }


async def test_writes_need_a_valid_token_and_reads_stay_open(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        for name, call in reads(edge, ()).items():
            assert await call(), name  # no token needed
        forecast = await edge.stub.Forecast(forecast_request(model=MA, horizon=2))
        request = pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0])
        missing = await failure(edge.stub.ReportActuals(request))
        wrong = await failure(edge.stub.ReportActuals(request, metadata=bearer(WRONG)))
        accepted = await edge.stub.ReportActuals(request, metadata=bearer(TOKEN))
        rotated = await edge.stub.ReportActuals(request, metadata=bearer(ROTATED))
    assert missing.code() is grpc.StatusCode.UNAUTHENTICATED
    assert (details(missing).info.reason, details(missing).info.domain) == (
        "TOKEN_MISSING",
        "forecast.v1",
    )
    assert wrong.code() is grpc.StatusCode.PERMISSION_DENIED
    assert details(wrong).info.reason == "TOKEN_INVALID"
    assert wrong.details() == "the token is not valid for this gateway"
    assert accepted.forecast_id == rotated.forecast_id == forecast.forecast_id
    assert accepted.steps_received == 1


@pytest.mark.parametrize(
    "metadata",
    [
        (("authorization", TOKEN),),
        (("authorization", f"Basic {TOKEN}"),),
        (("authorization", "Bearer"),),
        (("authorization", "Bearer two words"),),
        (("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")),
    ],
    ids=["no-scheme", "basic", "no-token", "spaces", "twice"],
)
async def test_authorization_that_is_not_one_bearer_token_is_malformed(
    tmp_path: Path, metadata: Metadata
) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        error = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id="f", actuals=[1.0]), metadata=metadata
            )
        )
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details(error).info.reason == "TOKEN_MALFORMED"


async def test_the_scheme_is_case_insensitive(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        reply = await report(edge, (("authorization", f"bearer {TOKEN}"),))
    assert reply.steps_received == 2


async def test_reads_need_a_token_when_required_for_reads(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "auth_token_file": token_file(tmp_path),
        "auth_required_for_reads": True,
    }
    async with serving(tmp_path, **config) as edge:
        refused = {name: await failure(call()) for name, call in reads(edge, ()).items()}
        wrong = {name: await failure(call()) for name, call in reads(edge, bearer(WRONG)).items()}
        for name, call in reads(edge, bearer(TOKEN)).items():
            assert await call(), name
        written = await report(edge, bearer(TOKEN))
    assert {n: (e.code(), details(e).info.reason) for n, e in refused.items()} == dict.fromkeys(
        refused, (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    )
    assert {n: e.code() for n, e in wrong.items()} == dict.fromkeys(
        wrong, grpc.StatusCode.PERMISSION_DENIED
    )
    assert len(refused) == 8
    assert written.steps_received == 2


async def test_health_and_reflection_are_open_even_when_reads_are_guarded(tmp_path: Path) -> None:
    async def one(
        request: reflection_pb2.ServerReflectionRequest,
    ) -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield request

    config: dict[str, Any] = {
        "auth_token_file": token_file(tmp_path),
        "auth_required_for_reads": True,
    }
    async with serving(tmp_path, **config) as edge:
        health = await health_pb2_grpc.HealthStub(edge.channel).Check(
            health_pb2.HealthCheckRequest()
        )
        reflection = reflection_pb2_grpc.ServerReflectionStub(edge.channel)
        answers = [
            a
            async for a in reflection.ServerReflectionInfo(
                one(reflection_pb2.ServerReflectionRequest(list_services=""))
            )
        ]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert "forecast.v1.ForecastService" in {
        s.name for s in answers[0].list_services_response.service
    }


async def test_the_token_is_checked_before_the_request_is_parsed(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        anonymous = await failure(edge.raw("ReportActuals")(b"\xff\xff\xff"))
        authorized = await failure(
            edge.raw("ReportActuals")(b"\xff\xff\xff", metadata=bearer(TOKEN))
        )
    assert anonymous.code() is grpc.StatusCode.UNAUTHENTICATED
    assert details(anonymous).info.reason == "TOKEN_MISSING"
    assert authorized.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(authorized).info.reason == "MALFORMED_REQUEST"


async def test_no_token_is_ever_logged_or_echoed(tmp_path: Path) -> None:
    async with serving(tmp_path, auth_token_file=token_file(tmp_path)) as edge:
        with captured_logs() as logs:
            await report(edge, bearer(TOKEN))
            wrong = await failure(
                edge.stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id="f", actuals=[1.0]),
                    metadata=bearer(WRONG),
                )
            )
            await until(lambda: len(request_lines(logs)) == 3, "three request lines")
    refused = request_lines(logs, "ReportActuals")[-1]
    assert (refused["status"], refused["reason"]) == ("PERMISSION_DENIED", "TOKEN_INVALID")
    text = repr(logs) + (wrong.details() or "") + repr(wrong.trailing_metadata())
    assert TOKEN not in text and WRONG not in text


def test_a_missing_token_file_stops_the_gateway_from_being_built(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        create_gateway(
            gateway_config(tmp_path, auth_token_file=str(tmp_path / "absent")), fake_backend()
        )
    with pytest.raises(ConfigError, match="auth_required_for_reads needs auth_token_file"):
        create_gateway(gateway_config(tmp_path, auth_required_for_reads=True), fake_backend())
