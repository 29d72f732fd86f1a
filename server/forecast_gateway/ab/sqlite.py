"""SQLite backend of the A/B store: the embedded default, one file per host.

Every SQLite call runs on one dedicated thread that owns the connection, so
the event loop never waits on disk. WAL mode and `BEGIN IMMEDIATE` let
several processes on one host (the gateway's worker processes) share the
file: writers take the database lock in turn (waiting up to BUSY_TIMEOUT_MS)
and readers never block them. The schema version is SQLite's user_version.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from forecast_gateway.ab.sql import (
    Migration,
    Row,
    Transaction,
    backfill_aggregates,
    exact_moments,
    migrate,
)

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's write transaction before failing."""

_T = TypeVar("_T")

_V1 = (
    """CREATE TABLE IF NOT EXISTS forecasts (
        forecast_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        horizon INTEGER NOT NULL,
        naive_scale REAL NOT NULL,
        created_at REAL NOT NULL,
        actuals BLOB,
        steps_received INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX IF NOT EXISTS forecasts_by_age ON forecasts (created_at)",
    """CREATE TABLE IF NOT EXISTS predictions (
        forecast_id TEXT NOT NULL,
        version TEXT NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        forecast_values BLOB NOT NULL,
        latency_ms REAL NOT NULL,
        recorded_at REAL NOT NULL,
        orphan INTEGER NOT NULL DEFAULT 0,
        steps_scored INTEGER NOT NULL DEFAULT 0,
        mae REAL,
        smape REAL,
        mase REAL,
        PRIMARY KEY (forecast_id, version)
    )""",
    "CREATE INDEX IF NOT EXISTS orphans_by_age ON predictions (recorded_at) WHERE orphan = 1",
    """CREATE TABLE IF NOT EXISTS counters (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        shadowed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model, version)
    )""",
)
_V2 = (
    # Named experiments, and running aggregates (ab.aggregates) in place of the
    # per-read scans and their indexes.
    "DROP INDEX IF EXISTS predictions_by_latency",
    "DROP INDEX IF EXISTS predictions_scored",
    "ALTER TABLE forecasts ADD COLUMN experiment TEXT NOT NULL DEFAULT 'default'",
    "ALTER TABLE forecasts ADD COLUMN comparable INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE counters RENAME TO counters_v1",
    """CREATE TABLE counters (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        served INTEGER NOT NULL DEFAULT 0,
        shadowed INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (model, experiment, version)
    )""",
    "INSERT INTO counters SELECT model, 'default', version, served, shadowed FROM counters_v1",
    "DROP TABLE counters_v1",
    """CREATE TABLE experiments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        started_at REAL NOT NULL,
        forecasts INTEGER NOT NULL,
        PRIMARY KEY (model, experiment)
    )""",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        shift REAL NOT NULL,
        n INTEGER NOT NULL,
        s1 REAL NOT NULL,
        s2 REAL NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
    """CREATE TABLE latency_buckets (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (model, experiment, version, bucket)
    )""",
    "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT INTO store_meta (name, value) VALUES ('forecasts', 0)",
)
_V3 = (
    # Calibration: the tracked bounds of each prediction, and the score pools.
    "ALTER TABLE predictions ADD COLUMN bounds BLOB",
    "ALTER TABLE predictions ADD COLUMN naive_scale REAL",
    """CREATE TABLE calibration_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        scores BLOB NOT NULL,
        revision INTEGER NOT NULL,
        PRIMARY KEY (model, version, step)
    )""",
)
_V4 = (
    # The forecast count in rows that add up to it (one per store), not one row every
    # write and prune of every replica locks.
    "CREATE TABLE forecast_counts (shard INTEGER PRIMARY KEY, forecasts INTEGER NOT NULL)",
    "INSERT INTO forecast_counts (shard, forecasts) "
    "SELECT 0, value FROM store_meta WHERE name = 'forecasts'",
    "DROP TABLE store_meta",
)
_V5 = (
    # Exact running sums (scoring.ExactSums): a value taken back out leaves exactly the others'.
    "ALTER TABLE moments RENAME TO moments_shifted",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        n INTEGER NOT NULL,
        total BLOB NOT NULL,
        squares BLOB NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
)
MIGRATIONS = (
    Migration(1, _V1),
    Migration(2, _V2, then=backfill_aggregates),
    Migration(3, _V3),
    Migration(4, _V4),
    Migration(5, _V5, then=exact_moments),
)


class SQLiteBackend:
    """The store's database in one SQLite file (`:memory:` for tests)."""

    lock_rows = ""  # BEGIN IMMEDIATE already holds the database's write lock

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ab-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # one transaction at a time on the one connection

    def describe(self) -> str:
        """The file's path."""
        return f"sqlite:{self.path}"

    async def open(self) -> None:
        """Open (or create) the file and migrate it to the current schema."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await self._run(self._connect)
        async with self.transaction(write=True) as tx:
            current = (await tx.fetchone("PRAGMA user_version") or (0,))[0]
            if current > MIGRATIONS[-1].version:
                raise RuntimeError(f"{self.path}: unknown experiment store schema {current}")
            reached = await migrate(tx, current, MIGRATIONS)
            await tx.execute(f"PRAGMA user_version={int(reached)}")

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        if self._connection is not None:
            await self._run(self._connection.close)
            self._connection = None
        self._executor.shutdown(wait=False)

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[Transaction]:
        """BEGIN IMMEDIATE for writes (the write lock up front: no upgrade deadlock), else BEGIN."""
        async with self._lock:
            try:
                # Inside the try: a caller cancelled while BEGIN runs on the thread (it
                # still completes there) rolls back, or the connection stays in it.
                await self._run(self._db.execute, "BEGIN IMMEDIATE" if write else "BEGIN")
                yield _SQLiteTransaction(self)
            except BaseException:
                await self._run(_rollback, self._db)
                raise
            await self._run(_commit, self._db)

    def is_conflict(self, error: BaseException) -> bool:
        """Another process held the lock past the busy timeout."""
        return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)

    def is_unavailable(self, error: BaseException) -> bool:
        """A local file is never unreachable in the sense of a network database."""
        return False

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the experiment store is not started")
        return self._connection

    def _connect(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        self._connection = connection

    async def _run(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run `function` on the store's thread; it finishes even if the caller is cancelled."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        future.add_done_callback(_retrieve)
        return await asyncio.shield(future)


class _SQLiteTransaction:
    """Statements of one transaction, each run on the backend's thread."""

    def __init__(self, backend: SQLiteBackend) -> None:
        self._backend = backend

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        return await self._backend._run(_execute, self._backend._db, _qmark(sql), params)

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        if not rows:
            return 0
        return await self._backend._run(_executemany, self._backend._db, _qmark(sql), rows)

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        return await self._backend._run(_fetchone, self._backend._db, _qmark(sql), params)

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        return await self._backend._run(_fetchall, self._backend._db, _qmark(sql), params)


def _qmark(sql: str) -> str:
    """The store's SQL uses psycopg's %s placeholders; sqlite3 takes ?."""
    return sql.replace("%s", "?")


def _execute(db: sqlite3.Connection, sql: str, params: Sequence[object]) -> int:
    return db.execute(sql, params).rowcount


def _executemany(db: sqlite3.Connection, sql: str, rows: Sequence[Sequence[object]]) -> int:
    return db.executemany(sql, rows).rowcount


def _fetchone(db: sqlite3.Connection, sql: str, params: Sequence[object]) -> Row | None:
    row: Row | None = db.execute(sql, params).fetchone()
    return row


def _fetchall(db: sqlite3.Connection, sql: str, params: Sequence[object]) -> list[Row]:
    return db.execute(sql, params).fetchall()


def _rollback(db: sqlite3.Connection) -> None:
    """Roll back the open transaction, if any (BEGIN itself may have failed)."""
    if db.in_transaction:
        db.execute("ROLLBACK")


def _commit(db: sqlite3.Connection) -> None:
    """COMMIT; a COMMIT that fails (busy, I/O) rolls back, so no transaction stays open."""
    try:
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shielded future's exception as seen when its caller was cancelled."""
    if not future.cancelled():
        future.exception()
