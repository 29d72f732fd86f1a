"""SQLite backend of the A/B store: the embedded default, one file per host.

The connection and its transactions (`ab.storage.Backend`); the schema is
`ab.migrations.SQLITE`, its version SQLite's user_version. Every SQLite call
runs on one dedicated thread that owns the connection, so the event loop
never waits on disk. WAL mode and `BEGIN IMMEDIATE` let several processes on
one host (the gateway's worker processes) share the file: writers take the
database lock in turn (waiting up to BUSY_TIMEOUT_MS) and readers never
block them.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from forecast_gateway.ab import migrations
from forecast_gateway.ab.schema import Row, Transaction, migrate

BUSY_TIMEOUT_MS = 10_000
"""How long a writer waits for another process's write transaction before failing."""

_T = TypeVar("_T")


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
            if current > migrations.SQLITE[-1].version:
                raise RuntimeError(f"{self.path}: unknown experiment store schema {current}")
            reached = await migrate(tx, current, migrations.SQLITE)
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
