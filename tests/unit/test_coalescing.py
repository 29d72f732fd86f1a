"""The coalescer on its own, with a stand-in proxy that records the requests it gets."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from structlog.testing import capture_logs

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, Rows, Signature
from forecast_gateway.backends.coalescing import (
    GATHER_CALLERS,
    GATHER_ROWS,
    MAX_OUTSTANDING,
    Coalescer,
)
from forecast_gateway.errors import DeadlineExceeded, Internal, Unavailable
from tests.backend_double import PartialBackend
from tests.polling import eventually


class RecordingProxy(PartialBackend):
    """Answers each row with its own first value, after `delay` seconds."""

    def __init__(self, delay: float = 0.01, fail: bool = False) -> None:
        self.delay = delay
        self.fail = fail
        self.requests: list[int] = []

    async def forecast(
        self,
        model: str,
        version: str,
        windows: Rows,
        horizon: int,
        timeout_s: float,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        self.requests.append(windows.shape[0])
        await asyncio.sleep(self.delay)
        if self.fail:
            raise Unavailable("Triton is unreachable", reason="TRITON_UNAVAILABLE")
        return np.repeat(windows[:, :1], horizon, axis=1)


def rows(value: float, count: int = 1) -> Rows:
    return np.full((count, 4), value, dtype=np.float32)


def later(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


async def test_a_lone_call_is_sent_at_once() -> None:
    proxy = RecordingProxy()
    out = await Coalescer(proxy).forecast("m", "1", rows(3.0), 2, later(), 256)
    assert out.tolist() == [[3.0, 3.0]] and proxy.requests == [1]


async def test_calls_arriving_while_triton_is_busy_share_a_request() -> None:
    proxy = RecordingProxy(delay=0.05)
    coalescer = Coalescer(proxy)
    calls = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(float(i)), 2, later(), 256))
        for i in range(50)
    ]
    results = await asyncio.gather(*calls)
    # Every caller gets its own row back...
    assert [r[0, 0] for r in results] == [float(i) for i in range(50)]
    # ...and the 50 rows went in far fewer requests than 50.
    assert sum(proxy.requests) == 50 and len(proxy.requests) <= MAX_OUTSTANDING + 2


async def test_a_request_never_exceeds_max_rows() -> None:
    proxy = RecordingProxy(delay=0.02)
    coalescer = Coalescer(proxy)
    calls = [coalescer.forecast("m", "1", rows(1.0, 3), 2, later(), 8) for _ in range(20)]
    await asyncio.gather(*calls)
    assert sum(proxy.requests) == 60 and max(proxy.requests) <= 8


async def test_different_shapes_are_not_mixed() -> None:
    proxy = RecordingProxy()
    coalescer = Coalescer(proxy)
    await asyncio.gather(
        coalescer.forecast("m", "1", rows(1.0), 2, later(), 256),
        coalescer.forecast("m", "1", rows(1.0), 3, later(), 256),
        coalescer.forecast("m", "2", rows(1.0), 2, later(), 256),
    )
    assert proxy.requests == [1, 1, 1]


async def test_an_error_reaches_every_caller_of_the_request() -> None:
    coalescer = Coalescer(RecordingProxy(fail=True))
    results = await asyncio.gather(
        *(coalescer.forecast("m", "1", rows(1.0), 2, later(), 256) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(r, Unavailable) for r in results)


class RaisingProxy(PartialBackend):
    """A backend with a bug: raises a plain exception, not a GatewayError."""

    def __init__(self) -> None:
        self.sends: list[asyncio.Task[object]] = []

    async def forecast(
        self,
        model: str,
        version: str,
        windows: Rows,
        horizon: int,
        timeout_s: float,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        task = asyncio.current_task()
        assert task is not None
        self.sends.append(task)
        await asyncio.sleep(0)
        raise RuntimeError("a bug in the backend")


async def test_an_unexpected_error_is_internal_for_every_caller_and_logged_once() -> None:
    proxy = RaisingProxy()
    coalescer = Coalescer(proxy)
    with capture_logs() as logs:
        results = await asyncio.gather(
            *(coalescer.forecast("m", "1", rows(1.0), 2, later(), 256) for _ in range(5)),
            return_exceptions=True,
        )
    assert all(isinstance(r, Internal) for r in results), results
    assert len(proxy.sends) == 1  # the five shared one request
    (send,) = proxy.sends
    # The send task ends cleanly: no exception left for nobody to retrieve...
    assert send.done() and not send.cancelled() and send.exception() is None
    # ...because its traceback went to the log, once.
    (logged,) = [e for e in logs if e["log_level"] == "error"]
    assert (logged["event"], logged["callers"]) == ("backend_failed", 5)
    assert isinstance(logged["exc_info"], RuntimeError)


async def test_expired_deadline_is_not_sent() -> None:
    proxy = RecordingProxy()
    with pytest.raises(DeadlineExceeded):
        await Coalescer(proxy).forecast("m", "1", rows(1.0), 2, time.monotonic() - 1, 256)
    assert proxy.requests == []


async def test_a_cancelled_caller_does_not_block_the_others() -> None:
    proxy = RecordingProxy(delay=0.05)
    coalescer = Coalescer(proxy)
    first = asyncio.ensure_future(coalescer.forecast("m", "1", rows(0.0), 2, later(), 256))
    await asyncio.sleep(0)  # first is outstanding; the next ones gather
    waiting = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(float(i)), 2, later(), 256))
        for i in range(1, 4)
    ]
    await asyncio.sleep(0)
    waiting[0].cancel()
    await first
    results = await asyncio.gather(*waiting[1:])
    assert [r[0, 0] for r in results] == [2.0, 3.0]


async def test_a_request_is_cancelled_once_all_its_callers_are_gone() -> None:
    proxy = RecordingProxy(delay=0.05)
    coalescer = Coalescer(proxy)
    shared = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(float(i)), 2, later(), 256))
        for i in range(2)
    ]
    await eventually(lambda: proxy.requests, interval_s=0, message="the request at the proxy")
    assert proxy.requests == [2]  # both sent in one request
    (sending,) = coalescer._sending
    shared[0].cancel()
    await asyncio.sleep(0)
    assert not sending.done()  # one caller still waits for it
    shared[1].cancel()
    await asyncio.wait([sending], timeout=0.04)  # well before the proxy's 0.05 s answer
    assert sending.cancelled()
    out = await coalescer.forecast("m", "1", rows(7.0), 2, later(), 256)
    assert out[0, 0] == 7.0 and proxy.requests == [2, 1]  # the key is free again


async def test_a_send_cancelled_before_it_starts_frees_its_key() -> None:
    """The caller goes away in the iteration its request is created: the key is not leaked."""
    proxy = RecordingProxy(delay=0.01)
    coalescer = Coalescer(proxy)
    loop = asyncio.get_running_loop()
    for _ in range(MAX_OUTSTANDING + 1):
        call = loop.create_task(coalescer.forecast("m", "1", rows(1.0), 2, later(), 256))
        loop.call_soon(call.cancel)  # right after the call's first step queued the flush
        for _ in range(5):
            await asyncio.sleep(0)
        assert call.cancelled()
    assert sum(coalescer._outstanding.values()) == 0 and not coalescer._sending
    out = await asyncio.wait_for(coalescer.forecast("m", "1", rows(7.0), 2, later(), 256), 2)
    assert out[0, 0] == 7.0


async def test_a_caller_waiting_behind_a_stuck_request_gets_its_deadline() -> None:
    proxy = RecordingProxy(delay=5.0)  # Triton never answers in time
    coalescer = Coalescer(proxy)
    stuck = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(0.0), 2, later(), 256))
        for _ in range(MAX_OUTSTANDING)
    ]
    for _ in range(MAX_OUTSTANDING):  # one request per iteration: both slots taken
        await asyncio.sleep(0)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await coalescer.forecast("m", "1", rows(1.0), 2, later(0.1), 256)
    assert time.monotonic() - started < 1.0
    for call in stuck:
        call.cancel()


async def test_many_callers_gather_while_triton_is_busy() -> None:
    proxy = RecordingProxy(delay=0.2)
    coalescer = Coalescer(proxy)
    first = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(0.0), 2, later(), 256))
        for _ in range(GATHER_CALLERS)
    ]
    for _ in range(3):  # the calls start, then their request is sent
        await asyncio.sleep(0)
    assert proxy.requests == [GATHER_CALLERS]  # one request, now at Triton
    # A slot is free (MAX_OUTSTANDING > 1), but many callers share the key: the
    # next calls gather into one request of GATHER_ROWS rows instead of going one by one.
    more = []
    for i in range(GATHER_ROWS):
        more.append(
            asyncio.ensure_future(coalescer.forecast("m", "1", rows(float(i)), 2, later(), 256))
        )
        await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert proxy.requests == [GATHER_CALLERS, GATHER_ROWS]
    assert [r[0, 0] for r in await asyncio.gather(*more)] == [float(i) for i in range(GATHER_ROWS)]
    await asyncio.gather(*first)


async def test_a_gathering_group_is_sent_after_gather_s_at_most() -> None:
    proxy = RecordingProxy(delay=0.5)
    coalescer = Coalescer(proxy)
    first = [
        asyncio.ensure_future(coalescer.forecast("m", "1", rows(0.0), 2, later(), 256))
        for _ in range(GATHER_CALLERS)
    ]
    for _ in range(3):
        await asyncio.sleep(0)
    started = time.monotonic()
    out = await coalescer.forecast("m", "1", rows(5.0), 2, later(), 256)  # gathers alone
    assert out[0, 0] == 5.0 and proxy.requests == [GATHER_CALLERS, 1]
    # Sent once GATHER_S passed (plus the proxy's delay), not after the busy request.
    assert time.monotonic() - started < 0.5 + 0.3
    await asyncio.gather(*first)
