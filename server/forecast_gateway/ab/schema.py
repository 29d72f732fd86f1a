"""The framework the A/B store's migrations run on, their data steps, and the sums' layout.

A migration is a schema version: statements run in order, then an optional
data step in Python, in the one transaction that brings a database to the
current version (`ab.sqlite` and `ab.postgres` open it and record the
version reached). The tables are the same on both backends, their types
each backend's own: `ab.migrations` lists the versions (SQLITE, POSTGRES). The data steps
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
