"""Gateway.stop() with calls in flight: every call it received is answered, none CANCELLED.

The order stop() follows (server.py): health NOT_SERVING, the drain period
served as usual, new calls held at the door until callers go quiet, gRPC's
stop (GOAWAY), the held calls let in, every call finished, then the store
flushed and the backend closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forecast.v1 import forecast_service_pb2 as pb
from tests.edge import (
    LAST,
    SERVICE,
    Edge,
    calls_in_progress,
    captured_logs,
    failure,
    forecast_request,
    request_lines,
    serving,
    until,
    until_answers,
)

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def not_serving(edge: Edge) -> bool:
    answer = await health_pb2_grpc.HealthStub(edge.channel).Check(
        health_pb2.HealthCheckRequest(service=SERVICE)
    )
    return bool(answer.status == NOT_SERVING)


async def test_calls_in_flight_at_stop_are_all_answered(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        gate = edge.backend.gate = asyncio.Event()
        with captured_logs() as logs:
            calls = await calls_in_progress(edge, 8)
            stopping = asyncio.ensure_future(edge.stop())
            # Still in flight when gRPC's stop begins (GOAWAY), then answered.
            await until(lambda: any(e["event"] == "gateway_stopping" for e in logs), "the stop")
            assert not any(call.done() for call in calls)
            gate.set()
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            await stopping
            after = await failure(edge.stub.Forecast(forecast_request(version="1"), timeout=5))
        closed = edge.backend.closed
    assert [type(o) for o in outcomes] == [pb.ForecastResponse] * 8, outcomes
    assert all(list(o.values) == pytest.approx([LAST] * 5) for o in outcomes)  # type: ignore[union-attr]
    assert [line["status"] for line in request_lines(logs, "Forecast")] == ["OK"] * 8
    assert after.code() is grpc.StatusCode.UNAVAILABLE  # stopped: callers go elsewhere
    assert closed


async def test_a_slow_backend_at_stop_is_waited_for(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.delay_s = 0.2
        call = asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="1")))
        await until(lambda: edge.backend.calls, "the call at the backend")
        await edge.stop()
        answered = await call
    assert list(answered.values) == pytest.approx([LAST] * 5)


async def test_calls_arriving_while_it_stops_are_held_then_served(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        gate = edge.backend.gate = asyncio.Event()
        with captured_logs() as logs:
            early = await calls_in_progress(edge, 4)
            stopping = asyncio.ensure_future(edge.stop())
            await until_answers(lambda: not_serving(edge), "NOT_SERVING")
            late = [
                asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="2")))
                for _ in range(2)
            ]
            await until(lambda: edge.gateway.shedder.held == 2, "two calls held at the door")
            gate.set()
            outcomes = await asyncio.gather(*early, *late, return_exceptions=True)
            await stopping
    assert [type(o) for o in outcomes] == [pb.ForecastResponse] * 6, outcomes
    statuses = [line["status"] for line in request_lines(logs, "Forecast")]
    assert statuses == ["OK"] * 6


async def test_the_drain_period_serves_while_health_says_not_serving(tmp_path: Path) -> None:
    async with serving(tmp_path, shutdown_drain_s=0.3) as edge:
        stopping = asyncio.ensure_future(edge.stop())
        await until_answers(lambda: not_serving(edge), "NOT_SERVING")
        during = await edge.stub.Forecast(forecast_request())
        await stopping
    assert during.version == "2"


async def test_a_stream_in_flight_at_stop_gets_every_answer(tmp_path: Path) -> None:
    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        for i in range(3):
            yield pb.StreamForecastRequest(request_id=f"s{i}", request=forecast_request())

    async with serving(tmp_path) as edge:
        gate = edge.backend.gate = asyncio.Event()
        with captured_logs() as logs:
            stream = edge.stub.StreamForecast(requests())
            answers = asyncio.ensure_future(_all(stream))
            await until(lambda: len(edge.backend.calls) >= 1, "the stream at the backend")
            stopping = asyncio.ensure_future(edge.stop())
            await until_answers(lambda: not_serving(edge), "NOT_SERVING")
            gate.set()
            received = await answers
            await stopping
            code = await stream.code()
    assert sorted(a.request_id for a in received) == ["s0", "s1", "s2"]
    assert all(a.WhichOneof("outcome") == "forecast" for a in received)
    assert code is grpc.StatusCode.OK
    (line,) = request_lines(logs, "StreamForecast")
    assert (line["status"], line["responses"]) == ("OK", 3)


async def _all(
    stream: AsyncIterable[pb.StreamForecastResponse],
) -> list[pb.StreamForecastResponse]:
    return [a async for a in stream]


async def test_forecasts_awaiting_actuals_survive_the_stop(tmp_path: Path) -> None:
    async with serving(tmp_path) as first:
        forecast = await first.stub.Forecast(forecast_request(version="1", horizon=3))
    async with serving(tmp_path) as second:  # the same SQLite file
        scored = await second.stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0, 2.0, 3.0])
        )
    assert (scored.forecast_id, scored.model, scored.steps_received) == (
        forecast.forecast_id,
        "lstm_timeseries",
        3,
    )
    assert [s.version for s in scored.scores] == ["1"]


class GatedPeers:
    """`api.server.Peers` whose other workers begin their stop when the test says."""

    def __init__(self, *, arrive: bool = True) -> None:
        self.waiting = asyncio.Event()
        self.others_stopping = asyncio.Event()
        self.arrive = arrive

    async def all_stopping(self, timeout_s: float) -> bool:
        self.waiting.set()
        if not self.arrive:
            return False  # what a barrier broken by a dead worker answers
        await self.others_stopping.wait()
        return True


async def test_held_calls_wait_until_every_worker_has_begun_stopping(tmp_path: Path) -> None:
    # Served earlier, their callers would reconnect to a worker still listening,
    # whose stop could then cancel their next call (tests/functional/test_workers.py).
    peers = GatedPeers()
    async with serving(tmp_path) as edge:
        edge.gateway.peers = peers
        stopping = asyncio.ensure_future(edge.stop())
        await until_answers(lambda: not_serving(edge), "NOT_SERVING")
        held = asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="2")))
        await until(lambda: edge.gateway.shedder.held == 1, "the call held at the door")
        await asyncio.wait_for(peers.waiting.wait(), 5)
        await asyncio.sleep(0.2)
        assert not held.done() and edge.gateway.shedder.held == 1
        peers.others_stopping.set()
        answered = await held
        await stopping
    assert answered.version == "2"


async def test_a_missing_worker_does_not_keep_held_calls_waiting(tmp_path: Path) -> None:
    peers = GatedPeers(arrive=False)
    async with serving(tmp_path) as edge:
        edge.gateway.peers = peers
        with captured_logs() as logs:
            stopping = asyncio.ensure_future(edge.stop())
            await until_answers(lambda: not_serving(edge), "NOT_SERVING")
            held = asyncio.ensure_future(edge.stub.Forecast(forecast_request(version="2")))
            answered = await held
            await stopping
    assert answered.version == "2"
    assert any(e["event"] == "workers_not_stopping_together" for e in logs)
