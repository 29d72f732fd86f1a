"""PostgreSQL backend of the A/B store: one database shared by every replica.

psycopg 3's asyncio API with a psycopg-pool connection pool, on the
gateway's event loop: the connections and their transactions
(`ab.storage.Backend`); the schema is `ab.migrations.POSTGRES`. Migrations run
at start-up in one transaction that first takes a transaction-level
advisory lock, so replicas starting together apply each version once (and
no lock outlives its transaction); the applied versions are rows of
`schema_migrations`. Scoring locks the forecast's row (`FOR UPDATE`), so
actuals for one forecast that reach two replicas at once are applied one
after the other (ab.storage).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from forecast_gateway.ab import migrations
from forecast_gateway.ab.schema import Row, Transaction, migrate

MIGRATION_LOCK = 0x46475354  # "FGST": the advisory lock key of the store's migrations
POOL_MIN = 1
POOL_MAX = 4
"""Connections per gateway process: the writer, ReportActuals and GetExperiment at once."""
CONNECT_TIMEOUT_S = 30.0
"""How long start-up waits for the database before the gateway gives up (and is restarted)."""
POOL_WAIT_S = 5.0
"""How long an operation waits for a pooled connection: a read answers UNAVAILABLE after it."""
_SERVER_GOING_AWAY = frozenset({"57P01", "57P02", "57P03"})
"""admin_shutdown, crash_shutdown, cannot_connect_now: the server is (re)starting."""


class PostgresBackend:
    """The store's database on a PostgreSQL server (`postgresql://user@host:port/db`)."""

    lock_rows = " FOR UPDATE"

    def __init__(self, url: str, password: str | None = None) -> None:
        self._url = url
        self._password = password
        self._pool: AsyncConnectionPool | None = None
        self.connect_timeout_s = CONNECT_TIMEOUT_S

    def describe(self) -> str:
        """user@host:port/dbname, without the password."""
        parts = conninfo_to_dict(self._url)
        host = parts.get("host", "localhost")
        return (
            f"postgresql://{parts.get('user', '')}@{host}:{parts.get('port', 5432)}"
            f"/{parts.get('dbname', '')}"
        )

    async def open(self) -> None:
        """Open the pool and migrate under the advisory lock."""
        extra = {} if self._password is None else {"password": self._password}
        self._pool = AsyncConnectionPool(
            self._url,
            kwargs=extra,
            min_size=POOL_MIN,
            max_size=POOL_MAX,
            timeout=POOL_WAIT_S,
            open=False,
        )
        try:
            await self._pool.open(wait=True, timeout=self.connect_timeout_s)
            async with self._pool.connection() as connection, connection.transaction():
                # A transaction-level lock: the COMMIT or ROLLBACK releases it, whatever
                # ends the transaction (a start cancelled while it waits for the lock too).
                await connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                await _migrate(_PostgresTransaction(connection))
        except BaseException:
            await self.close()  # stop the pool's reconnect attempts; no connection left open
            raise

    async def close(self) -> None:
        """Close the pool."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[Transaction]:
        """A pooled connection in a READ COMMITTED transaction (row locks do the rest)."""
        if self._pool is None:
            raise RuntimeError("the experiment store is not started")
        async with self._pool.connection() as connection, connection.transaction():
            yield _PostgresTransaction(connection)

    def is_conflict(self, error: BaseException) -> bool:
        """A deadlock or serialization failure: PostgreSQL rolled back, a rerun can succeed."""
        return isinstance(error, pg_errors.DeadlockDetected | pg_errors.SerializationFailure)

    def is_unavailable(self, error: BaseException) -> bool:
        """The server is down or unreachable, or the pool found no connection in time.

        Only connection-level failures: psycopg also files deadlocks and
        cancelled statements under OperationalError, with an SQLSTATE of their
        own; a lost connection has none, or one of class 08.
        """
        if isinstance(error, PoolTimeout):
            return True
        if not isinstance(error, psycopg.OperationalError):
            return False
        state = error.sqlstate
        return state is None or state.startswith("08") or state in _SERVER_GOING_AWAY


async def _migrate(tx: Transaction) -> None:
    """Apply the versions `schema_migrations` does not list yet (under the advisory lock)."""
    await tx.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
    )
    row = await tx.fetchone("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    current = int(row[0]) if row else 0
    if current > migrations.POSTGRES[-1].version:
        raise RuntimeError(f"unknown experiment store schema {current}")
    reached = await migrate(tx, current, migrations.POSTGRES)
    await tx.executemany(
        "INSERT INTO schema_migrations (version) VALUES (%s)",
        [(m.version,) for m in migrations.POSTGRES if current < m.version <= reached],
    )


class _PostgresTransaction:
    """Statements of one transaction on one pooled connection."""

    def __init__(self, connection: psycopg.AsyncConnection[Row]) -> None:
        self._connection = connection

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        cursor = await self._connection.execute(sql, params or None)
        return cursor.rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        if not rows:
            return 0
        async with self._connection.cursor() as cursor:
            await cursor.executemany(sql, rows)
            return cursor.rowcount

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        cursor = await self._connection.execute(sql, params or None)
        return await cursor.fetchone()

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        cursor = await self._connection.execute(sql, params or None)
        return await cursor.fetchall()
