"""The A/B store's storage: its operations and every query, written once for both backends.

`Storage` is what the write-behind façade (`ab.store`) uses; `open_storage`
picks its `Backend` from `store_url`: SQLite (`ab.sqlite`) or PostgreSQL
(`ab.postgres`), which only open connections, run transactions and say
which errors are conflicts or outages. Both take the same SQL (`%s`
placeholders, `ON CONFLICT` upserts, `RETURNING`) on the schema of
`ab.schema`. The operations' SQL is in `ab.writes` (a batch, actuals, the
prune), `ab.reads` (the totals GetExperiment reads), `ab.pools` (the
calibration pools) and `ab.rows` (the row locking they share). Every
operation is one transaction:

- `write`: a batch of served forecasts and shadow predictions, request
  counters and latency buckets, and the rescoring of shadows that arrive
  after their forecast's actuals. Pruning follows in a transaction of its own.
- `report_actuals`: lock the forecast's row, merge the actuals, rescore every
  prediction of it and move the running aggregates by the difference, so two
  replicas scoring the same forecast at once are applied one after the other
  and never count it twice.
- `aggregates`: O(versions) rows (`ab.aggregates`), never the scored rows;
  each row's sums are exact (`scoring.ExactSums`), read, moved and written
  back under the row's lock.
- calibration: each newly reported step of a prediction appends its signed
  scaled error to the pool of its (model, version, step), a row holding the
  most recent `Bounds.calibration_window` scores and a revision that grows
  with every change; `calibration_pools` reads the pools whose revision moved.

Rows are locked in one order everywhere, so concurrent writers, scorers and
pruners wait for one another and never deadlock:

1. forecast rows, in id order (the existing ones a write's shadows belong
   to, then the new served ones; scoring's one row; a prune's in one pass);
2. prediction rows (a forecast's own under its forecast's lock; orphans
   last: a write adopts them, a prune deletes them, each after its others);
3. calibration pools, sorted by key;
4. the units of sticky draws (`unit_scores`), sorted by key, then the
   aggregate rows (`moments`, then `experiments`, `counters` and
   `latency_buckets`), each sorted by key;
5. last, one row of `forecast_counts`: the number of stored forecasts, kept
   in COUNT_SHARDS rows that add up to it, each store adding to a row of its
   own, so no single row serialises every replica's writes, and the count row
   is held only from the statement before COMMIT.

Pools and aggregate rows are created where missing, locked and read by one
upsert (`rows.lock_rows`): a SELECT ... FOR UPDATE would lock no row that does
not exist yet. A backend may still report a deadlock or serialization
failure, which is retried.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Protocol, TypeVar

import structlog

from forecast_gateway.ab import pools, reads, writes
from forecast_gateway.ab.pools import CalibrationPools
from forecast_gateway.ab.records import ActualsReport, Bounds, ExperimentInfo, Record
from forecast_gateway.ab.report import ModelAggregates
from forecast_gateway.ab.schema import Transaction
from forecast_gateway.ab.writes import ORPHAN_GRACE_S
from forecast_gateway.errors import Unavailable
from forecast_gateway.numerics import FloatArray
from forecast_gateway.store_urls import is_postgres, sqlite_path

__all__ = ["ORPHAN_GRACE_S", "Backend", "Bounds", "CalibrationPools", "Storage", "open_storage"]


log = structlog.get_logger(__name__)


PRUNE_INTERVAL_S = 1.0
"""How often an idle store deletes what is past its bounds."""


CONFLICT_RETRIES = 5
"""Attempts at a transaction that the database aborted for a deadlock or serialization failure."""


COUNT_SHARDS = 16
"""Rows of `forecast_counts`: each store adds its writes and prunes to one, picked at random."""


_T = TypeVar("_T")


class Backend(Protocol):
    """The connections `Storage` runs its SQL on: `ab.sqlite` or `ab.postgres`.

    Connecting (and migrating, `ab.schema`), transactions, and which errors
    are conflicts or outages: no operation of the store is a backend's own.
    """

    lock_rows: str
    """Appended to a SELECT that reads rows the transaction will change (" FOR UPDATE" or "")."""

    def describe(self) -> str:
        """Where the data lives, for logs: never a password."""
        ...

    async def open(self) -> None:
        """Connect and bring the schema to the current version."""
        ...

    async def close(self) -> None:
        """Close every connection."""
        ...

    def transaction(self, *, write: bool) -> AbstractAsyncContextManager[Transaction]:
        """A transaction, committed when the block ends, rolled back if it raises."""
        ...

    def is_conflict(self, error: BaseException) -> bool:
        """Whether `error` aborted a transaction that is safe to run again (deadlock...)."""
        ...

    def is_unavailable(self, error: BaseException) -> bool:
        """Whether `error` means the database cannot be reached (worth a retry by the caller)."""
        ...


class Storage:
    """The store's operations (what `ab.store` uses), the same SQL on either `Backend`."""

    def __init__(
        self, backend: Backend, bounds: Bounds, clock: Callable[[], float] = time.time
    ) -> None:
        self.backend = backend
        self._bounds = bounds
        self._clock = clock
        self._pruned_at = -math.inf
        self._shard = random.randrange(COUNT_SHARDS)

    def describe(self) -> str:
        """Where the data lives, for logs."""
        return self.backend.describe()

    async def open(self) -> None:
        """Connect and migrate."""
        await self.backend.open()

    async def close(self) -> None:
        """Close the connections."""
        await self.backend.close()

    async def write(self, records: Sequence[Record]) -> None:
        """Write a batch in one transaction, then prune in another.

        With no records, only prunes, and at most every PRUNE_INTERVAL_S:
        the age bound holds in a store that receives nothing.
        """
        if records:
            lock_rows, window = self.backend.lock_rows, self._bounds.calibration_window
            await self._retrying(
                lambda tx: writes.write(tx, lock_rows, window, self._shard, records), write=True
            )
        now = self._clock()
        if records or not now - PRUNE_INTERVAL_S < self._pruned_at <= now:
            self._pruned_at = now
            try:  # the records are in: a failed prune is retried with the next batch
                await self._retrying(
                    lambda tx: writes.prune(tx, self._bounds, self._shard, now), write=True
                )
            except Exception as error:
                log.warning("store_prune_failed", error=type(error).__name__)

    async def report_actuals(
        self, forecast_id: str, actuals: FloatArray, offset: int, start_ns: int | None = None
    ) -> ActualsReport | None:
        """Store actuals at [offset, offset + len) and rescore; None for an unknown/expired id.

        `start_ns`: the time of actuals[0] instead of `offset` (InvalidArgument
        on `start` unless it is one of the forecast's step times).
        """
        cutoff = self._clock() - self._bounds.max_age_s
        return await self._retrying(
            lambda tx: writes.report_actuals(
                tx,
                self.backend.lock_rows,
                self._bounds.calibration_window,
                forecast_id,
                actuals,
                offset,
                cutoff,
                start_ns,
            ),
            write=True,
        )

    async def aggregates(self, model: str, experiment: str) -> ModelAggregates:
        """The running totals of one experiment of a model."""
        return await self._retrying(
            lambda tx: reads.read_totals(tx, model, experiment), write=False
        )

    async def experiments(self, model: str) -> list[ExperimentInfo]:
        """The experiments of `model` ("" = every model), newest first within a model."""
        return await self._retrying(lambda tx: reads.read_experiments(tx, model), write=False)

    async def calibration_pools(
        self, known: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], CalibrationPools]:
        """The pools of every (model, version) whose revision is not the `known` one."""
        return await self._retrying(lambda tx: pools.calibration_pools(tx, known), write=False)

    @property
    def skip_locked(self) -> str:
        """Appended to a SELECT that claims rows other sessions may hold: "" on SQLite.

        PostgreSQL's " FOR UPDATE SKIP LOCKED" passes over rows another
        transaction holds (a queue); SQLite's BEGIN IMMEDIATE already
        serialises every writer.
        """
        return f"{self.backend.lock_rows} SKIP LOCKED" if self.backend.lock_rows else ""

    async def transact(
        self, operation: Callable[[Transaction], Awaitable[_T]], *, write: bool
    ) -> _T:
        """Run another subsystem's SQL on the shared database in one retried transaction.

        The long-running operations (`forecast_gateway.operations`) live in
        the same database as the experiments, so replicas share them too.
        """
        return await self._retrying(operation, write=write)

    async def _retrying(
        self, operation: Callable[[Transaction], Awaitable[_T]], *, write: bool
    ) -> _T:
        for attempt in range(CONFLICT_RETRIES):
            try:
                async with self.backend.transaction(write=write) as tx:
                    return await operation(tx)
            except Exception as error:
                if self.backend.is_conflict(error) and attempt < CONFLICT_RETRIES - 1:
                    pass  # rolled back whole: run it again
                elif self.backend.is_unavailable(error):
                    raise Unavailable(
                        "the A/B store is unreachable; retry later", reason="STORE_UNAVAILABLE"
                    ) from error
                else:
                    raise
                log.info(
                    "store_transaction_retried", attempt=attempt + 1, error=type(error).__name__
                )
                await asyncio.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")


def open_storage(
    url: str,
    bounds: Bounds,
    *,
    default_path: str = "",
    password_file: str = "",
    clock: Callable[[], float] = time.time,
) -> Storage:
    """The storage a store URL selects (not yet opened); the password is read from its file here."""
    if is_postgres(url):
        from forecast_gateway.ab.postgres import PostgresBackend  # psycopg only when used

        password = Path(password_file).read_text().rstrip("\r\n") if password_file else None
        return Storage(PostgresBackend(url.strip(), password), bounds, clock)
    from forecast_gateway.ab.sqlite import SQLiteBackend

    return Storage(SQLiteBackend(sqlite_path(url, default_path)), bounds, clock)
