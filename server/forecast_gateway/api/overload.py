"""Load shedding: a bound on requests in progress in the gateway.

Past `max_in_flight` concurrent calls, a new call is refused at once with
RESOURCE_EXHAUSTED instead of queueing without bound: at 10x capacity the
accepted calls keep a bounded latency and memory stays bounded. This bound is
also what bounds Triton's queue: the shipped model configs set no Triton queue
policy (it stalled Triton's batcher; see model_repository/*/config.pbtxt).

The same count sees every call arrive, which the shutdown drain needs:
gRPC's stop cancels the calls it has received but no handler has picked up
yet, so before it the gateway holds new calls at the door (`hold_until_quiet`)
until callers stop sending, then lets them in (`release`) once gRPC's stop has
begun; `wait_idle` returns when every call has finished.
"""

from __future__ import annotations

import asyncio
import time

from forecast_gateway import metrics
from forecast_gateway.errors import ResourceExhausted

QUIET_POLL_S = 0.01


class LoadShedder:
    """Counts ForecastService calls in progress and sheds those over the limit.

    The request wrapper (`interceptors.RequestInterceptor`) calls `enter()`
    after its access check and `leave()` when the call ends, so a refusal is
    reported like any other GatewayError (status, ErrorInfo, log line,
    metrics), without a second interceptor layer per call.
    """

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self.held = 0
        self._door: asyncio.Event | None = None  # set: open; None: never held
        self._idle = asyncio.Event()
        self._idle.set()
        self._last_activity = 0.0

    async def hold_until_quiet(self, quiet_s: float, max_hold_s: float) -> bool:
        """Hold new calls until nothing has arrived or finished for `quiet_s`.

        A caller waiting on a held call sends nothing else, so closed-loop
        callers go quiet. Returns False if calls kept coming for `max_hold_s`.
        """
        if self._door is None:
            self._door = asyncio.Event()
        self._door.clear()
        started = self._last_activity = time.monotonic()
        while time.monotonic() - self._last_activity < quiet_s:
            if time.monotonic() - started >= max_hold_s:
                return False
            await asyncio.sleep(QUIET_POLL_S)
        return True

    def release(self) -> None:
        """Let the held calls in (and every later one)."""
        if self._door is not None:
            self._door.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no call is held or in progress; False if some still are after `timeout_s`."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def enter(self) -> None:
        """Admit a call (after the door, if held), or raise ResourceExhausted over the limit."""
        self._last_activity = time.monotonic()
        if self._door is not None and not self._door.is_set():
            self.held += 1
            self._idle.clear()
            try:
                await self._door.wait()
            except BaseException:  # the caller went away while held
                self.held -= 1
                self._set_idle_if_done()
                raise
            self.held -= 1
        if self.in_flight >= self.max_in_flight:
            self._set_idle_if_done()
            metrics.SHED.inc()
            raise ResourceExhausted(
                f"the gateway is at its limit of {self.max_in_flight} requests in progress; "
                "retry with backoff",
                reason="GATEWAY_OVERLOADED",
            )
        self.in_flight += 1
        self._idle.clear()
        metrics.IN_FLIGHT.set(self.in_flight)

    def leave(self) -> None:
        """A call admitted by `enter` has ended."""
        self.in_flight -= 1
        self._last_activity = time.monotonic()
        self._set_idle_if_done()
        metrics.IN_FLIGHT.set(self.in_flight)

    def _set_idle_if_done(self) -> None:
        if self.in_flight == 0 and self.held == 0:
            self._idle.set()
