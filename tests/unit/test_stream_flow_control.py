"""StreamForecast's flow control, on the servicer alone (the forecaster is a stand-in)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import numpy as np

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.api.service import ForecastServicer
from forecast_gateway.core.forecaster import ForecastResult
from forecast_gateway.core.routing import Decision
from forecast_gateway.core.validation import ForecastQuery
from tests.polling import eventually

MAX_PENDING = 4


class SlowForecaster:
    """Answers only when released, so requests stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        """Calls waiting to be released."""
        self.answered = 0

    async def forecast(self, query: ForecastQuery, deadline: float) -> ForecastResult:
        self.waiting += 1
        await self.release.wait()
        self.waiting -= 1
        self.answered += 1
        return ForecastResult("id", query.model, "1", Decision.DEFAULT, np.zeros(1), 1, 1)


async def loop_turns(turns: int = 20) -> None:
    """Let every runnable task run a few steps: what the servicer would read next, it reads here.

    Everything here is in process and waits on nothing else, so a reader not
    held by flow control pulls its next request within a turn or two.
    """
    for _ in range(turns):
        await asyncio.sleep(0)


class Context:
    def time_remaining(self) -> None:
        return None


def make_servicer(forecaster: SlowForecaster) -> ForecastServicer:
    return ForecastServicer(
        forecaster,  # type: ignore[arg-type]
        catalog=None,  # type: ignore[arg-type]
        store=None,  # type: ignore[arg-type]
        default_timeout_s=5.0,
        max_batch_series=10,
        max_operation_series=100,
        stream_max_pending=MAX_PENDING,
        backtester=None,  # type: ignore[arg-type]
        backtest_timeout_s=300.0,
    )


async def test_reading_stops_while_answers_wait_for_the_caller() -> None:
    pulled = 0

    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield pb.StreamForecastRequest(
                request_id=str(i), request=pb.ForecastRequest(model="m", history=[1.0])
            )

    forecaster = SlowForecaster()
    responses: Any = make_servicer(forecaster).StreamForecast(requests(), Context())  # type: ignore[arg-type]
    first = asyncio.ensure_future(responses.__anext__())
    await eventually(lambda: forecaster.waiting >= MAX_PENDING, interval_s=0)
    await loop_turns()
    assert pulled == MAX_PENDING  # the forecaster is stuck: no more requests are read
    forecaster.release.set()
    await first
    await eventually(lambda: forecaster.answered == pulled, interval_s=0)
    await loop_turns()
    # Answers are done but the caller took only one: reading stays bounded.
    assert pulled <= MAX_PENDING + 1
    received = 1 + len([r async for r in responses])
    assert received == 1000 and pulled == 1000
