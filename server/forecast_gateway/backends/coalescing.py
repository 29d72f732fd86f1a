"""Request coalescing: concurrent forecasts for the same tensor shape share one Triton call.

Every gRPC hop costs the gateway CPU, and a Triton request per series keeps
Triton's batches small when the gateway is the bottleneck. Calls for the same
(model, version, window, horizon) are stacked into one multi-row request while
MAX_OUTSTANDING requests for that key are already at Triton, and sent as soon
as one returns. With nothing outstanding a call is sent on the next loop
iteration, so a lone caller waits for nobody. When many callers share a key
(GATHER_CALLERS or more in the coalescer) a group that forms while Triton is
busy with that key also gathers until it holds GATHER_ROWS rows or is
GATHER_S old, so that each Triton request (and the gateway's client call)
serves more callers. The rows are handed back to their callers. A request
whose callers have all gone (cancelled, or past their deadline) is
cancelled, at Triton too.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field

import numpy as np
import structlog

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, InferenceBackend, Rows, Signature
from forecast_gateway.errors import DeadlineExceeded, GatewayError, Internal

Key = tuple[str, str, int, int, int]
"""(model, version, window, steps, season)."""

log = structlog.get_logger(__name__)

# Requests per key at Triton at once: two keep Triton's pipeline full while
# the next group gathers.
MAX_OUTSTANDING = 2
# Rows waiting in the coalescer or at Triton for one key from which a new
# group gathers (below it, the behaviour above: no added wait).
GATHER_CALLERS = 8
# A gathering group is ready once it holds this many rows...
GATHER_ROWS = 8
# ...or once it is this old (seconds).
GATHER_S = 0.002


@dataclass
class _Waiting:
    rows: Rows
    deadline: float
    future: asyncio.Future[Rows]


@dataclass
class _Group:
    signature: Signature
    members: list[_Waiting] = field(default_factory=list)
    rows: int = 0
    ready: bool = True
    """False while it gathers: sent once ready and a request slot for its key is free."""
    task: asyncio.Task[None] | None = None
    """The Triton request once sent."""

    def cancel_if_abandoned(self) -> None:
        """Cancel the Triton request (gRPC cancels it at Triton too) once every caller is gone."""
        if self.task is not None and all(m.future.done() for m in self.members):
            self.task.cancel()


class Coalescer:
    """Sends the rows of concurrent calls with equal shapes as one Triton request."""

    def __init__(self, proxy: InferenceBackend) -> None:
        self.proxy = proxy
        self._groups: dict[Key, _Group] = {}
        self._outstanding: dict[Key, int] = {}
        self._rows_in: dict[Key, int] = {}
        """Rows per key whose callers wait in the coalescer (gathering or at Triton)."""
        self._sending: set[asyncio.Task[None]] = set()

    async def forecast(
        self,
        model: str,
        version: str,
        rows: Rows,
        horizon: int,
        deadline: float,
        max_rows: int,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        """Forecast `rows` (windows as the model takes them), possibly with other calls.

        A request never holds more than `max_rows` rows (the model's
        max_batch_size); `rows` itself must not exceed it. `horizon` is
        the steps the model outputs; `signature` is the version's (one
        per model and version, so it is not part of the key).
        """
        if deadline <= time.monotonic():
            raise DeadlineExceeded("the deadline passed before the request reached Triton")
        loop = asyncio.get_running_loop()
        key = (model, version, rows.shape[1], horizon, season)
        count = rows.shape[0]
        group = self._groups.get(key)
        if group is not None and group.rows + count > max_rows:
            self._flush(key, group)
            group = None
        rows_in = self._rows_in.get(key, 0)
        if group is None:
            group = self._groups[key] = _Group(signature)
            outstanding = self._outstanding.get(key, 0)
            if outstanding and rows_in + count >= GATHER_CALLERS:
                group.ready = False
                loop.call_later(GATHER_S, self._gathered, key, group)
            elif outstanding < MAX_OUTSTANDING:
                loop.call_soon(self._flush, key, group)
            # else: sent when an outstanding request for this key returns
        waiting = _Waiting(rows, deadline, loop.create_future())
        group.members.append(waiting)
        group.rows += count
        self._rows_in[key] = rows_in + count
        if group.rows >= max_rows:
            self._flush(key, group)
        elif not group.ready and group.rows >= GATHER_ROWS:
            self._gathered(key, group)
        # A timer on the future itself: cheaper than asyncio.timeout_at per call.
        expiry = loop.call_at(deadline, _expire, waiting.future)  # loop time is monotonic
        try:
            return await waiting.future
        except DeadlineExceeded:
            group.cancel_if_abandoned()
            raise
        except asyncio.CancelledError:
            group.cancel_if_abandoned()
            raise
        finally:
            expiry.cancel()
            self._rows_in[key] -= count

    def _gathered(self, key: Key, group: _Group) -> None:
        """A gathering group is full enough or old enough: send it once a slot is free."""
        if self._groups.get(key) is not group or group.ready:
            return
        group.ready = True
        if self._outstanding.get(key, 0) < MAX_OUTSTANDING:
            self._flush(key, group)

    def _flush(self, key: Key, group: _Group) -> None:
        if self._groups.get(key) is not group:
            return  # already sent
        del self._groups[key]
        if all(m.future.done() for m in group.members):
            return  # every caller already gone: nothing to send
        self._outstanding[key] = self._outstanding.get(key, 0) + 1
        task = group.task = asyncio.get_running_loop().create_task(self._send_rows(key, group))
        self._sending.add(task)
        # A done-callback, not a `finally` in the task: a task cancelled before
        # its first step never runs its body, and the key would stay counted.
        task.add_done_callback(functools.partial(self._sent, key))

    def _sent(self, key: Key, task: asyncio.Task[None]) -> None:
        """One request for `key` came back: send the group that gathered meanwhile."""
        self._sending.discard(task)
        self._outstanding[key] -= 1
        waiting = self._groups.get(key)
        if waiting is not None and waiting.ready:
            self._flush(key, waiting)

    async def _send_rows(self, key: Key, group: _Group) -> None:
        live = [m for m in group.members if not m.future.done()]  # callers gone: skip them
        if not live:
            return
        model, version, _, horizon, season = key
        timeout_s = max(m.deadline for m in live) - time.monotonic()
        try:
            if timeout_s <= 0:
                raise DeadlineExceeded("the deadline passed before the request reached Triton")
            output = await self.proxy.forecast(
                model,
                version,
                np.concatenate([m.rows for m in live]),
                horizon,
                timeout_s,
                group.signature,
                season,
            )
        except GatewayError as error:
            _fail(live, error)
            return
        except Exception as error:
            # Nobody awaits this task: the traceback is logged here, once, and
            # every caller still waiting gets a generic INTERNAL (no internals).
            log.error(
                "backend_failed", model=model, version=version, callers=len(live), exc_info=error
            )
            _fail(live, Internal("the forecast failed"))
            return
        start = 0
        for member in live:
            stop = start + member.rows.shape[0]
            if not member.future.done():
                member.future.set_result(output[start:stop])
            start = stop


def _expire(future: asyncio.Future[Rows]) -> None:
    """The caller's deadline passed before Triton answered."""
    if not future.done():
        future.set_exception(DeadlineExceeded("the deadline passed before Triton answered"))


def _fail(members: list[_Waiting], error: GatewayError) -> None:
    for member in members:
        if not member.future.done():
            member.future.set_exception(error)
