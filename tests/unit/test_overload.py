"""LoadShedder's shutdown hold: calls held at the door until released, quiet detection, idle."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import grpc
import pytest

from forecast_gateway.api.interceptors import wrap_unary
from forecast_gateway.api.overload import LoadShedder
from tests.polling import eventually


class Aborted(Exception):
    """What the test context raises where gRPC would end the call with `status`."""

    def __init__(self, status: grpc.Status) -> None:
        super().__init__(status.code)
        self.status = status


class Context:
    """The ServicerContext calls the request wrapper makes."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def set_trailing_metadata(self, metadata: object) -> None:
        pass

    async def abort_with_status(self, status: grpc.Status) -> None:
        raise Aborted(status)


def unary(shedder: LoadShedder, served: list[int]) -> Callable[[int, object], Awaitable[int]]:
    """A handler served by the interceptor's own request wrapper (admitted by `shedder`)."""

    async def behavior(request: int, context: object) -> int:
        await asyncio.sleep(0.01)
        served.append(request)
        return request

    wrapped = wrap_unary("Forecast", behavior, shedder=shedder)

    async def call(request: int, context: object) -> int:
        result: int = await wrapped(request, Context())  # type: ignore[arg-type]
        return result

    return call


def shed(outcome: object) -> bool:
    """Whether a call ended as the shedder ends one: RESOURCE_EXHAUSTED."""
    return (
        isinstance(outcome, Aborted) and outcome.status.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    )


def test_held_calls_wait_for_release_and_are_then_served() -> None:
    async def scenario() -> None:
        shedder, served = LoadShedder(max_in_flight=8), list[int]()
        call = unary(shedder, served)
        holding = asyncio.ensure_future(shedder.hold_until_quiet(0.05, 5.0))
        await asyncio.sleep(0)
        calls = [asyncio.ensure_future(call(i, None)) for i in range(3)]
        assert await holding is True  # quiet once nothing arrives for 50 ms
        assert (shedder.held, served) == (3, [])
        assert not await shedder.wait_idle(0.05)  # held calls count
        shedder.release()
        assert await asyncio.gather(*calls) == [0, 1, 2]
        assert await shedder.wait_idle(1.0)
        assert (shedder.held, shedder.in_flight) == (0, 0)

    asyncio.run(scenario())


def test_hold_gives_up_when_calls_keep_arriving() -> None:
    async def scenario() -> None:
        shedder, served = LoadShedder(max_in_flight=64), list[int]()
        call = unary(shedder, served)
        holding = asyncio.ensure_future(shedder.hold_until_quiet(0.05, 0.3))
        calls: list[asyncio.Future[int]] = []
        while not holding.done():
            calls.append(asyncio.ensure_future(call(len(calls), None)))
            await asyncio.sleep(0.02)
        assert holding.result() is False
        shedder.release()
        await asyncio.gather(*calls)
        assert sorted(served) == list(range(len(calls)))

    asyncio.run(scenario())


def test_a_held_call_that_is_cancelled_leaves_the_count() -> None:
    async def scenario() -> None:
        shedder = LoadShedder(max_in_flight=8)
        call = unary(shedder, [])
        holding = asyncio.ensure_future(shedder.hold_until_quiet(10.0, 10.0))
        await asyncio.sleep(0)
        held = asyncio.ensure_future(call(1, None))
        await eventually(lambda: shedder.held == 1, interval_s=0)  # it reached the door
        assert shedder.held == 1
        held.cancel()
        assert await shedder.wait_idle(1.0)
        assert shedder.held == 0
        holding.cancel()

    asyncio.run(scenario())


def test_released_calls_over_the_limit_are_shed() -> None:
    async def scenario() -> None:
        shedder = LoadShedder(max_in_flight=2)
        call = unary(shedder, [])
        holding = asyncio.ensure_future(shedder.hold_until_quiet(0.02, 5.0))
        await asyncio.sleep(0)
        calls = [asyncio.ensure_future(call(i, None)) for i in range(3)]
        await holding
        shedder.release()
        results = await asyncio.gather(*calls, return_exceptions=True)
        assert sum(shed(r) for r in results) == 1
        assert await shedder.wait_idle(1.0)

    asyncio.run(scenario())


@pytest.mark.parametrize("released", [False, True])
def test_without_a_hold_calls_pass_straight_through(released: bool) -> None:
    async def scenario() -> None:
        shedder, served = LoadShedder(max_in_flight=2), list[int]()
        if released:
            shedder.release()  # release() before any hold is harmless
        assert await unary(shedder, served)(7, None) == 7
        assert served == [7] and await shedder.wait_idle(0.1)

    asyncio.run(scenario())
