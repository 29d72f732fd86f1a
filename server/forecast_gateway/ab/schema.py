"""The A/B store's schema: its migrations on both backends, and the framework that runs them.

A migration is a schema version: statements run in order, then an optional
data step in Python, in the one transaction that brings a database to the
current version (`ab.sqlite` and `ab.postgres` open it and record the
version reached). The tables are the same on both backends, their types
each backend's own: SQLITE and POSTGRES list the versions. The data steps
run the SQL of their own version, never the queries of `ab.storage`, which
follow the current schema: `backfill_aggregates` (SQLite schema 2: the
running totals, rebuilt from the stored rows) and `exact_moments` (SQLite 5,
PostgreSQL 4: shifted floating-point sums converted to `scoring.ExactSums`).
`encode_sums` and `decode_sums` are the byte layout of those exact sums.

`Transaction` is what migrations and queries run on: one open transaction
of either backend, with psycopg's `%s` placeholders.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from forecast_gateway.ab import aggregates, scoring
from forecast_gateway.ab.records import DEFAULT_EXPERIMENT, Role

Row = tuple[Any, ...]


@dataclass(frozen=True)
class Migration:
    """One schema version: statements run in order, then an optional data step."""

    version: int
    statements: tuple[str, ...]
    then: Callable[[Transaction], Awaitable[None]] | None = None


async def migrate(tx: Transaction, current: int, migrations: Sequence[Migration]) -> int:
    """Apply the migrations newer than `current` in `tx`; the version reached."""
    for migration in migrations:
        if migration.version <= current:
            continue
        for statement in migration.statements:
            await tx.execute(statement)
        if migration.then is not None:
            await migration.then(tx)
        current = migration.version
    return current


class Transaction(Protocol):
    """One open transaction: the statements of one store operation."""

    async def execute(self, sql: str, params: Sequence[object] = ()) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, rows: Sequence[Sequence[object]]) -> int:
        """Run a statement once per row; the number of rows changed in all."""
        ...

    async def fetchone(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """The first row of a query."""
        ...

    async def fetchall(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Every row of a query."""
        ...


def decode_sums(n: int, total: bytes, squares: bytes) -> scoring.ExactSums:
    """A `moments` row's n, total and squares as exact sums."""
    return scoring.ExactSums(int(n), _unpack(total), _unpack(squares))


def encode_sums(sums: scoring.ExactSums) -> tuple[int, bytes, bytes]:
    """Exact sums as a `moments` row's n, total and squares."""
    return sums.count, _pack(sums.total), _pack(sums.squares)


def _pack(value: scoring.Dyadic) -> bytes:
    """The bytes of m * 2**e: e (int32), then m (two's complement), little-endian; b"" for 0."""
    mantissa, exponent = value
    if mantissa == 0:
        return b""
    size = mantissa.bit_length() // 8 + 1
    return struct.pack("<i", exponent) + mantissa.to_bytes(size, "little", signed=True)


def _unpack(blob: bytes) -> scoring.Dyadic:
    if not blob:
        return scoring.ZERO
    (exponent,) = struct.unpack_from("<i", blob)
    return int.from_bytes(blob[4:], "little", signed=True), exponent


async def backfill_aggregates(tx: Transaction) -> None:
    """Build the running totals, experiments and count from stored rows (a migration step)."""
    rows = await tx.fetchall(
        "SELECT p.model, f.experiment, f.comparable, p.forecast_id, p.role, p.version, "
        "p.steps_scored, p.mae, p.smape, p.mase FROM predictions AS p "
        "JOIN forecasts AS f ON f.forecast_id = p.forecast_id "
        "WHERE p.steps_scored > 0 ORDER BY p.forecast_id"
    )
    by_forecast: dict[tuple[str, str, str], dict[str, scoring.Score]] = {}
    groups: dict[str, str] = {}  # forecast -> its served version, when comparable
    for model, experiment, comparable, forecast_id, role, version, steps, *errors in rows:
        by_forecast.setdefault((model, experiment, forecast_id), {})[version] = scoring.Score(
            steps, *(math.nan if v is None else v for v in errors)
        )
        if comparable and role == Role.SERVED.value:
            groups[forecast_id] = version
    deltas = [
        delta
        for (model, experiment, forecast_id), scores in by_forecast.items()
        for delta in aggregates.contributions(
            model, experiment, scores, +1, groups.get(forecast_id)
        )
    ]
    await _apply_shifted(tx, deltas)
    latencies = await tx.fetchall(
        "SELECT p.model, COALESCE(f.experiment, %s), p.version, p.latency_ms "
        "FROM predictions AS p LEFT JOIN forecasts AS f ON f.forecast_id = p.forecast_id",
        (DEFAULT_EXPERIMENT,),
    )
    await tx.executemany(
        "INSERT INTO latency_buckets (model, experiment, version, bucket, n) "
        "VALUES (%s, %s, %s, %s, %s)",
        aggregates.latency_counts(latencies),
    )
    await tx.execute(
        "INSERT INTO experiments (model, experiment, started_at, forecasts) "
        "SELECT model, experiment, MIN(created_at), COUNT(*) FROM forecasts "
        "GROUP BY model, experiment"
    )
    await tx.execute(
        "UPDATE store_meta SET value = (SELECT COUNT(*) FROM forecasts) WHERE name = 'forecasts'"
    )


async def _apply_shifted(tx: Transaction, deltas: Sequence[aggregates.MomentDelta]) -> None:
    """The running sums as schema 2 kept them (a shift, sums of x - shift and its square).

    For `backfill_aggregates`, which runs at schema 2; `exact_moments` converts them.
    """
    await tx.executemany(
        "INSERT INTO moments (model, experiment, metric, version_a, version_b, shift, n, s1, s2) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, 0) "
        "ON CONFLICT (model, experiment, metric, version_a, version_b) DO UPDATE SET "
        "n = moments.n + excluded.n, "
        "shift = CASE WHEN moments.n = 0 THEN excluded.shift ELSE moments.shift END, "
        "s1 = CASE WHEN moments.n = 0 OR moments.n + excluded.n = 0 THEN 0 "
        "ELSE moments.s1 + excluded.n * (excluded.shift - moments.shift) END, "
        "s2 = CASE WHEN moments.n = 0 OR moments.n + excluded.n = 0 THEN 0 "
        "ELSE moments.s2 + excluded.n * (excluded.shift - moments.shift) "
        "* (excluded.shift - moments.shift) END",
        [(*d.key, d.value, d.weight) for d in sorted(deltas, key=lambda d: d.key)],
    )


async def exact_moments(tx: Transaction) -> None:
    """Convert the shifted running sums (`moments_shifted`) to exact ones (a migration step).

    Each row's moments are read as before (`scoring.Moments.from_sums`, its
    rounding clamped) and held from then on as the exact sums of a sample
    with those moments: what rounding already took, this cannot give back.
    """
    rows = await tx.fetchall(
        "SELECT model, experiment, metric, version_a, version_b, shift, n, s1, s2 "
        "FROM moments_shifted WHERE n > 0"
    )
    await tx.executemany(
        "INSERT INTO moments (model, experiment, metric, version_a, version_b, n, total, squares) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [
            (
                *key,
                *encode_sums(
                    scoring.ExactSums.of_moments(scoring.Moments.from_sums(int(n), shift, s1, s2))
                ),
            )
            for *key, shift, n, s1, s2 in (tuple(row) for row in rows)
        ],
    )
    await tx.execute("DROP TABLE moments_shifted")


# -- SQLite -------------------------------------------------------------------------------

_SQLITE_V1 = (
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
_SQLITE_V2 = (
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
_SQLITE_V3 = (
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
_SQLITE_V4 = (
    # The forecast count in rows that add up to it (one per store), not one row every
    # write and prune of every replica locks.
    "CREATE TABLE forecast_counts (shard INTEGER PRIMARY KEY, forecasts INTEGER NOT NULL)",
    "INSERT INTO forecast_counts (shard, forecasts) "
    "SELECT 0, value FROM store_meta WHERE name = 'forecasts'",
    "DROP TABLE store_meta",
)
_SQLITE_V5 = (
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
SQLITE = (
    Migration(1, _SQLITE_V1),
    Migration(2, _SQLITE_V2, then=backfill_aggregates),
    Migration(3, _SQLITE_V3),
    Migration(4, _SQLITE_V4),
    Migration(5, _SQLITE_V5, then=exact_moments),
)


# -- PostgreSQL ---------------------------------------------------------------------------

_POSTGRES_V1 = (
    """CREATE TABLE forecasts (
        forecast_id TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        comparable SMALLINT NOT NULL DEFAULT 1,
        horizon INTEGER NOT NULL,
        naive_scale DOUBLE PRECISION NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        actuals BYTEA,
        steps_received INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX forecasts_by_age ON forecasts (created_at, forecast_id)",
    """CREATE TABLE predictions (
        forecast_id TEXT NOT NULL,
        version TEXT NOT NULL,
        model TEXT NOT NULL,
        role TEXT NOT NULL,
        forecast_values BYTEA NOT NULL,
        latency_ms DOUBLE PRECISION NOT NULL,
        recorded_at DOUBLE PRECISION NOT NULL,
        orphan SMALLINT NOT NULL DEFAULT 0,
        steps_scored INTEGER NOT NULL DEFAULT 0,
        mae DOUBLE PRECISION,
        smape DOUBLE PRECISION,
        mase DOUBLE PRECISION,
        PRIMARY KEY (forecast_id, version)
    )""",
    "CREATE INDEX orphans_by_age ON predictions (recorded_at) WHERE orphan = 1",
    """CREATE TABLE counters (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        served BIGINT NOT NULL DEFAULT 0,
        shadowed BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (model, experiment, version)
    )""",
    """CREATE TABLE experiments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL,
        forecasts BIGINT NOT NULL,
        PRIMARY KEY (model, experiment)
    )""",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        shift DOUBLE PRECISION NOT NULL,
        n BIGINT NOT NULL,
        s1 DOUBLE PRECISION NOT NULL,
        s2 DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
    """CREATE TABLE latency_buckets (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        version TEXT NOT NULL,
        bucket INTEGER NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (model, experiment, version, bucket)
    )""",
    "CREATE TABLE store_meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
    "INSERT INTO store_meta (name, value) VALUES ('forecasts', 0)",
)
_POSTGRES_V2 = (
    # Calibration: the tracked bounds of each prediction, and the score pools.
    "ALTER TABLE predictions ADD COLUMN bounds BYTEA",
    "ALTER TABLE predictions ADD COLUMN naive_scale DOUBLE PRECISION",
    """CREATE TABLE calibration_pools (
        model TEXT NOT NULL,
        version TEXT NOT NULL,
        step INTEGER NOT NULL,
        scores BYTEA NOT NULL,
        revision BIGINT NOT NULL,
        PRIMARY KEY (model, version, step)
    )""",
)
_POSTGRES_V3 = (
    # The forecast count in rows that add up to it (one per store), not one row every
    # write and prune of every replica locks.
    "CREATE TABLE forecast_counts (shard INTEGER PRIMARY KEY, forecasts BIGINT NOT NULL)",
    "INSERT INTO forecast_counts (shard, forecasts) "
    "SELECT 0, value FROM store_meta WHERE name = 'forecasts'",
    "DROP TABLE store_meta",
)
_POSTGRES_V4 = (
    # Exact running sums (scoring.ExactSums): a value taken back out leaves exactly the others'.
    "ALTER TABLE moments RENAME TO moments_shifted",
    "ALTER INDEX moments_pkey RENAME TO moments_shifted_pkey",
    """CREATE TABLE moments (
        model TEXT NOT NULL,
        experiment TEXT NOT NULL,
        metric TEXT NOT NULL,
        version_a TEXT NOT NULL,
        version_b TEXT NOT NULL,
        n BIGINT NOT NULL,
        total BYTEA NOT NULL,
        squares BYTEA NOT NULL,
        PRIMARY KEY (model, experiment, metric, version_a, version_b)
    )""",
)
POSTGRES = (
    Migration(1, _POSTGRES_V1),
    Migration(2, _POSTGRES_V2),
    Migration(3, _POSTGRES_V3),
    Migration(4, _POSTGRES_V4, then=exact_moments),
)
