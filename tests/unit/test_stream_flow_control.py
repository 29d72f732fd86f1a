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

MAX_PENDING = 4


class SlowForecaster:
    """Answers only when released, so requests stay in flight."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def forecast(self, query: ForecastQuery, deadline: float) -> ForecastResult:
        await self.release.wait()
        return ForecastResult("id", query.model, "1", Decision.DEFAULT, np.zeros(1), 1, 1)


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
        stream_max_pending=MAX_PENDING,
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
    await asyncio.sleep(0.2)
    assert pulled == MAX_PENDING  # the forecaster is stuck: no more requests are read
    forecaster.release.set()
    await first
    await asyncio.sleep(0.2)
    # Answers are done but the caller took only one: reading stays bounded.
    assert pulled <= MAX_PENDING + 1
    received = 1 + len([r async for r in responses])
    assert received == 1000 and pulled == 1000
