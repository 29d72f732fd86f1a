"""Load shedding at the gRPC edge: past max_in_flight calls in progress, RESOURCE_EXHAUSTED at once.

Calls are held at the fake backend (`gate`) so that exactly the calls the
test means are in progress; the shed call is answered while they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forecast.v1 import forecast_service_pb2 as pb
from tests.edge import (
    LAST,
    LSTM,
    calls_in_progress,
    captured_logs,
    details,
    failure,
    forecast_request,
    one_request_line,
    requests_counted,
    sample,
    serving,
    until,
)

SHED = "forecast_gateway_shed_requests_total"
IN_FLIGHT = "forecast_gateway_in_flight_requests"


async def test_a_call_over_the_limit_is_shed_with_details_and_counted(tmp_path: Path) -> None:
    async with serving(tmp_path, max_in_flight=2) as edge:
        gate = edge.backend.gate = asyncio.Event()
        shed_before = sample(SHED)
        counted_before = requests_counted("Forecast", "RESOURCE_EXHAUSTED")
        held = await calls_in_progress(edge, 2)
        in_flight = sample(IN_FLIGHT)
        with captured_logs() as logs:
            error = await failure(edge.stub.Forecast(forecast_request(version="1")))
            line = await one_request_line(logs)
        assert not any(call.done() for call in held)
        gate.set()
        answered = await asyncio.gather(*held)
        admitted = await edge.stub.Forecast(forecast_request(version="1"))
        await until(lambda: edge.gateway.shedder.in_flight == 0, "no call in progress")
        idle = sample(IN_FLIGHT)
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    found = details(error)
    assert (found.info.reason, found.info.domain) == ("GATEWAY_OVERLOADED", "forecast.v1")
    assert error.details() == (
        "the gateway is at its limit of 2 requests in progress; retry with backoff"
    )
    assert sample(SHED) == shed_before + 1
    # Shed before the servicer ran: no model, version or routing label.
    assert requests_counted("Forecast", "RESOURCE_EXHAUSTED") == counted_before + 1
    assert (line["status"], line["reason"]) == ("RESOURCE_EXHAUSTED", "GATEWAY_OVERLOADED")
    assert "model" not in line
    assert [list(a.values) for a in answered] == [pytest.approx([LAST] * 5)] * 2
    assert admitted.version == "1"
    assert (in_flight, idle) == (2.0, 0.0)


async def test_a_burst_gets_exactly_the_limit_admitted(tmp_path: Path) -> None:
    async with serving(tmp_path, max_in_flight=3) as edge:
        gate = edge.backend.gate = asyncio.Event()
        calls = [
            asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="1")))
            for _ in range(10)
        ]
        await until(lambda: sum(c.done() for c in calls) == 7, "seven calls shed")
        assert edge.gateway.shedder.in_flight == 3
        gate.set()
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    shed = [o for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    served = [o for o in outcomes if isinstance(o, pb.ForecastResponse)]
    assert len(served) == 3 and len(shed) == 7
    assert {(e.code(), details(e).info.reason) for e in shed} == {
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "GATEWAY_OVERLOADED")
    }


async def test_the_delay_of_a_slow_backend_fills_the_limit(tmp_path: Path) -> None:
    async with serving(tmp_path, max_in_flight=1) as edge:
        edge.backend.delay_s = 0.3
        slow = asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="1")))
        await until(lambda: edge.backend.calls, "the slow call at the backend")
        error = await failure(edge.stub.Forecast(forecast_request(version="2")))
        answered = await slow
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert answered.version == "1"


async def test_an_open_stream_holds_its_slot_until_it_ends(tmp_path: Path) -> None:
    finish = asyncio.Event()

    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        yield pb.StreamForecastRequest(request_id="r1", request=forecast_request(version="1"))
        await finish.wait()

    async with serving(tmp_path, max_in_flight=1) as edge:
        stream = edge.stub.StreamForecast(requests())
        first = await stream.read()
        assert edge.gateway.shedder.in_flight == 1
        shed = await failure(edge.stub.ListModels(pb.ListModelsRequest()))
        finish.set()
        end = await stream.read()
        code = await stream.code()
        await until(lambda: edge.gateway.shedder.in_flight == 0, "the stream's slot freed")
        models = await edge.stub.ListModels(pb.ListModelsRequest())
    assert isinstance(first, pb.StreamForecastResponse) and first.request_id == "r1"
    assert shed.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert end is grpc.aio.EOF and code is grpc.StatusCode.OK
    assert [m.name for m in models.models] == [LSTM, "moving_average"]


async def test_health_is_never_shed(tmp_path: Path) -> None:
    async with serving(tmp_path, max_in_flight=1) as edge:
        gate = edge.backend.gate = asyncio.Event()
        (held,) = await calls_in_progress(edge, 1)
        health = await health_pb2_grpc.HealthStub(edge.channel).Check(
            health_pb2.HealthCheckRequest(service="forecast.v1.ForecastService")
        )
        gate.set()
        await held
    assert health.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_call_without_its_token_is_refused_before_it_takes_a_slot(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("t" * 32 + "\n")
    async with serving(tmp_path, max_in_flight=1, auth_token_file=str(tokens)) as edge:
        gate = edge.backend.gate = asyncio.Event()
        (held,) = await calls_in_progress(edge, 1)
        error = await failure(
            edge.stub.ReportActuals(pb.ReportActualsRequest(forecast_id="f", actuals=[1.0]))
        )
        gate.set()
        await held
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
