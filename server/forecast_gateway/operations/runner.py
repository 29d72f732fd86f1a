"""Each replica's runner: claim queued operations, run their jobs under a lease, end them.

The runner polls the store (and wakes at once for an operation created on
this replica), keeps at most `concurrency` jobs running, and renews each
job's lease every third of `lease_s` while recording its progress. A renewal
that finds the lease gone (taken over after a stall, or the operation
deleted) stops the job without writing; one that finds a cancel request
stops it and ends it CANCELLED. On a clean stop the runner cancels its jobs
and hands their leases back, so another replica starts them at once instead
of after the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import structlog

from forecast_gateway.operations.store import CANCELLED, Operation, OperationStore

log = structlog.get_logger(__name__)

Progress = Callable[[int], None]
"""Called by a job with the units (e.g. windows) it has just finished."""
Job = Callable[[bytes, Progress], Coroutine[Any, Any, bytes]]
"""Runs one operation: its request bytes in, its result bytes out (raises on failure)."""
ErrorOf = Callable[[BaseException], tuple[int, str, bytes | None]]
"""What an operation ends with when its job raised: the google.rpc code, the message,
and (optionally) the whole google.rpc.Status with its details, serialized."""

INTERNAL = 13
PRUNE_EVERY_S = 60.0


def internal_error(error: BaseException) -> tuple[int, str, bytes | None]:
    """The default ending of a failed job: INTERNAL, with no detail (the log has it)."""
    return INTERNAL, "the operation failed; see the gateway's log", None


class OperationRunner:
    """Runs the operations this replica claims (see the module docstring)."""

    def __init__(
        self,
        store: OperationStore,
        jobs: Mapping[str, Job],
        *,
        replica: str,
        ttl_s: float,
        lease_s: float = 15.0,
        poll_s: float = 1.0,
        concurrency: int = 1,
        error_of: ErrorOf = internal_error,
    ) -> None:
        self.store = store
        self.jobs = dict(jobs)
        self.replica = replica
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.concurrency = concurrency
        self.error_of = error_of
        self.stopping = asyncio.Event()
        """Set when the replica stops: callers waiting on an operation are answered now."""
        self._wakeup = asyncio.Event()
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._loop: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin claiming (in the running event loop)."""
        self._loop = asyncio.create_task(self._claim_forever(), name="operations")

    def wake(self) -> None:
        """An operation was just created: look for work now rather than at the next poll."""
        self._wakeup.set()

    async def stop(self) -> None:
        """Stop claiming, cancel this replica's jobs and hand their leases back."""
        self.stopping.set()
        self._wakeup.set()
        if self._loop is not None:  # it ends between store calls: none is cut mid-transaction
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop
            self._loop = None
        runs = list(self._runs.values())
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, return_exceptions=True)
        # Every lease of this replica, also one claimed just as the claim loop was
        # cancelled (before its job began): queued again, those runs not counted.
        try:
            handed = await self.store.release_all(self.replica)
        except Exception:  # their leases run out instead, and another replica takes them
            log.exception("operations_not_handed_back")
        else:
            if handed:
                log.info("operations_handed_back", operations=handed)

    async def _claim_forever(self) -> None:
        pruned = -PRUNE_EVERY_S
        while not self.stopping.is_set():
            try:
                if time.monotonic() - pruned >= PRUNE_EVERY_S:
                    pruned = time.monotonic()
                    if await self.store.prune():
                        log.info("operations_expired")
                while len(self._runs) < self.concurrency and not self.stopping.is_set():
                    claimed = await self.store.claim(self.replica, self.lease_s, self.ttl_s)
                    if claimed is None:
                        break
                    operation, request = claimed
                    self._runs[operation.name] = asyncio.create_task(self._run(operation, request))
            except Exception:
                log.exception("operations_claim_failed")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), self.poll_s)

    async def _run(self, operation: Operation, request: bytes) -> None:
        """Run one job to its end (or this replica's), renewing its lease meanwhile."""
        try:
            await self._run_job(operation, request)
        finally:
            self._runs.pop(operation.name, None)

    async def _run_job(self, operation: Operation, request: bytes) -> None:
        name = operation.name
        job = self.jobs.get(operation.kind)
        log.info(
            "operation_started", operation=name, kind=operation.kind, attempt=operation.attempts
        )
        if job is None:
            await self._end(name, error=(INTERNAL, f"unknown operation kind {operation.kind!r}"))
            return
        done = [0]

        def progress(units: int) -> None:
            done[0] += units

        task = asyncio.create_task(job(request, progress))
        try:
            if not await self._watch(name, task, done):
                return
        except asyncio.CancelledError:  # this replica is stopping: `stop` hands it back
            await _cancelled(task)
            raise
        error = task.exception()
        if error is None:
            await self._end(name, result=task.result(), done_units=done[0])
        else:
            code, message, status = self.error_of(error)
            if code == INTERNAL:
                log.error("operation_failed", operation=name, exc_info=error)
            await self._end(name, result=status, error=(code, message))
        log.info("operation_done", operation=name, error=error is not None)

    async def _watch(self, name: str, task: asyncio.Task[bytes], done: list[int]) -> bool:
        """Renew the lease until `task` ends: True, or False once it was stopped here.

        Stopped when the lease is gone (taken over, or the operation deleted:
        nothing more is written) or its caller asked to cancel it.
        """
        while True:
            await asyncio.wait({task}, timeout=self.lease_s / 3)
            if task.done():
                return True
            # Shielded: a stop arriving meanwhile must not cut the transaction short.
            renewal = self.store.renew(name, self.replica, self.lease_s, done[0])
            ours, cancel = await asyncio.shield(renewal)
            if ours and not cancel:
                continue
            await _cancelled(task)
            if cancel:
                await self._end(name, error=(CANCELLED, "cancelled by its caller"))
            log.info("operation_stopped", operation=name, cancelled=cancel, lost=not ours)
            return False

    async def _end(
        self,
        name: str,
        *,
        result: bytes | None = None,
        error: tuple[int, str] | None = None,
        done_units: int | None = None,
    ) -> None:
        try:
            await asyncio.shield(
                self.store.finish(
                    name,
                    self.replica,
                    self.ttl_s,
                    result=result,
                    error=error,
                    done_units=done_units,
                )
            )
        except Exception:  # the lease runs out and another replica runs it again
            log.exception("operation_finish_failed", operation=name)


async def _cancelled(task: asyncio.Task[bytes]) -> None:
    """Cancel a job and wait until it has stopped."""
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
