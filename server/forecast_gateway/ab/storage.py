"""The A/B store's storage: its operations and every query, written once for both backends.

`Storage` is what the write-behind façade (`ab.store`) uses; `open_storage`
picks its `Backend` from `store_url`: SQLite (`ab.sqlite`) or PostgreSQL
(`ab.postgres`), which only open connections, run transactions and say
which errors are conflicts or outages. Both take the same SQL (`%s`
placeholders, `ON CONFLICT` upserts, `RETURNING`) on the schema of
`ab.schema`. Every operation is one transaction:

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
4. aggregate rows (`moments`, then `experiments`, `counters` and
   `latency_buckets`), each sorted by key;
5. last, one row of `forecast_counts`: the number of stored forecasts, kept
   in COUNT_SHARDS rows that add up to it, each store adding to a row of its
   own, so no single row serialises every replica's writes, and the count row
   is held only from the statement before COMMIT.

Pools and aggregate rows are created where missing, locked and read by one
upsert (`_lock_rows`): a SELECT ... FOR UPDATE would lock no row that does
not exist yet. A backend may still report a deadlock or serialization
failure, which is retried.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import structlog

from forecast_gateway.ab import aggregates, scoring
from forecast_gateway.ab.actuals import merge
from forecast_gateway.ab.records import (
    ActualsReport,
    ExperimentInfo,
    Prediction,
    Record,
    RecordedForecast,
    Role,
    ShadowRecord,
    VersionScore,
)
from forecast_gateway.ab.report import ModelAggregates
from forecast_gateway.ab.schema import Row, Transaction, decode_sums, encode_sums
from forecast_gateway.errors import Unavailable
from forecast_gateway.numerics import FloatArray
from forecast_gateway.store_urls import is_postgres, sqlite_path

log = structlog.get_logger(__name__)

ORPHAN_GRACE_S = 60.0
"""How long a shadow prediction waits for its served forecast's record before it is pruned."""
IN_LIST_MAX = 500
"""Most ids in one `IN (...)` list (SQLite allows 32,766 parameters a statement)."""
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


@dataclass(frozen=True)
class Bounds:
    """How much the store keeps.

    At most `max_forecasts`, none older than `max_age_s`, and the most recent
    `calibration_window` calibration scores per (model, version, step).
    """

    max_forecasts: int
    max_age_s: float
    calibration_window: int = 256

    def __post_init__(self) -> None:
        if self.max_forecasts <= 0 or self.max_age_s <= 0 or self.calibration_window <= 0:
            raise ValueError("max_forecasts, max_age_s and calibration_window must be > 0")


@dataclass(frozen=True)
class CalibrationPools:
    """One version's calibration scores per horizon step (0-based), oldest first.

    `revision` grows whenever a pool of the version changes (any replica).
    """

    revision: int
    steps: dict[int, FloatArray]


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
                lambda tx: _write(tx, lock_rows, window, self._shard, records), write=True
            )
        now = self._clock()
        if records or not now - PRUNE_INTERVAL_S < self._pruned_at <= now:
            self._pruned_at = now
            try:  # the records are in: a failed prune is retried with the next batch
                await self._retrying(
                    lambda tx: _prune(tx, self._bounds, self._shard, now), write=True
                )
            except Exception as error:
                log.warning("store_prune_failed", error=type(error).__name__)

    async def report_actuals(
        self, forecast_id: str, actuals: FloatArray, offset: int
    ) -> ActualsReport | None:
        """Store actuals at [offset, offset + len) and rescore; None for an unknown/expired id."""
        cutoff = self._clock() - self._bounds.max_age_s
        return await self._retrying(
            lambda tx: _report_actuals(
                tx,
                self.backend.lock_rows,
                self._bounds.calibration_window,
                forecast_id,
                actuals,
                offset,
                cutoff,
            ),
            write=True,
        )

    async def aggregates(self, model: str, experiment: str) -> ModelAggregates:
        """The running totals of one experiment of a model."""
        return await self._retrying(lambda tx: _aggregates(tx, model, experiment), write=False)

    async def experiments(self, model: str) -> list[ExperimentInfo]:
        """The experiments of `model` ("" = every model), newest first within a model."""
        return await self._retrying(lambda tx: _experiments(tx, model), write=False)

    async def calibration_pools(
        self, known: dict[tuple[str, str], int]
    ) -> dict[tuple[str, str], CalibrationPools]:
        """The pools of every (model, version) whose revision is not the `known` one."""
        return await self._retrying(lambda tx: _calibration_pools(tx, known), write=False)

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


async def _write(
    tx: Transaction, lock_rows: str, window: int, shard: int, records: Sequence[Record]
) -> None:
    """Rows in the module's lock order: forecasts, predictions, pools, aggregates, the count."""
    served = [r for r in records if isinstance(r, RecordedForecast)]
    shadows = [r for r in records if isinstance(r, ShadowRecord)]
    known = await _lock_forecasts(tx, lock_rows, {s.forecast_id for s in shadows})
    inserted = 0
    if served:
        inserted = await tx.executemany(
            "INSERT INTO forecasts (forecast_id, model, experiment, comparable, horizon, "
            "naive_scale, created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (forecast_id) DO NOTHING",
            [
                (
                    f.forecast_id,
                    f.model,
                    f.experiment,
                    int(f.comparable),
                    f.horizon,
                    f.naive_scale,
                    f.created_at,
                )
                for f in served
            ],
        )
        await tx.executemany(
            _INSERT_PREDICTION,
            [_prediction_row(f.forecast_id, f.model, f.served, f.created_at, 0) for f in served],
        )
    deltas: list[aggregates.MomentDelta] = []
    calibration: dict[tuple[str, str, int], list[float]] = {}
    if shadows:
        batch = {f.forecast_id for f in served}
        deltas, calibration = await _write_shadows(tx, shadows, known, batch)
    if served:  # orphans last among the predictions: shadows written before their forecast
        await tx.executemany(
            "UPDATE predictions SET orphan = 0 WHERE forecast_id = %s AND orphan = 1",
            [(forecast_id,) for forecast_id in sorted({f.forecast_id for f in served})],
        )
    await _append_calibration(tx, window, calibration)
    await _apply(tx, deltas)
    await _count_requests(tx, served, shadows)
    await _count_forecasts(tx, shard, inserted)


async def _lock_forecasts(tx: Transaction, lock_rows: str, ids: Iterable[str]) -> dict[str, Row]:
    """The existing rows of `ids`, locked in id order: every operation locks forecasts first."""
    ordered = sorted(ids)
    known: dict[str, Row] = {}
    for start in range(0, len(ordered), IN_LIST_MAX):
        chunk = ordered[start : start + IN_LIST_MAX]
        for row in await tx.fetchall(
            "SELECT forecast_id, model, experiment, comparable, naive_scale, actuals "
            "FROM forecasts "
            f"WHERE forecast_id IN ({', '.join(['%s'] * len(chunk))}) ORDER BY forecast_id"
            + lock_rows,
            chunk,
        ):
            known[row[0]] = row
    return known


async def _write_shadows(
    tx: Transaction, shadows: Sequence[ShadowRecord], known: dict[str, Row], batch: set[str]
) -> tuple[list[aggregates.MomentDelta], dict[tuple[str, str, int], list[float]]]:
    """Insert shadow predictions and rescore those whose forecast already has actuals.

    `known`: the locked rows of the forecasts stored before this write;
    `batch`: the forecasts this write inserts. A shadow of neither is an
    orphan until its forecast arrives. Returns the deltas to the aggregates
    and the calibration scores, for the caller to apply in lock order.
    """
    await tx.executemany(
        _INSERT_PREDICTION,
        [
            _prediction_row(
                s.forecast_id,
                s.model,
                s.prediction,
                s.recorded_at,
                int(s.forecast_id not in known and s.forecast_id not in batch),
            )
            for s in shadows
        ],
    )
    deltas: list[aggregates.MomentDelta] = []
    calibration: dict[tuple[str, str, int], list[float]] = {}
    for forecast_id, model, experiment, comparable, scale, stored in known.values():
        if stored is not None:
            predictions = await _predictions(tx, forecast_id)
            reported = _array(stored)  # the scored ones were scored on these very actuals
            scores, changes = aggregates.rescore(
                model, experiment, predictions, reported, scale, bool(comparable), before=reported
            )
            await _store_scores(tx, forecast_id, scores)
            deltas += changes
            late = {s.prediction.version for s in shadows if s.forecast_id == forecast_id}
            unreported = np.full(reported.size, np.nan)
            for p in predictions:
                if p.version in late:  # its steps reported so far are new to its pools
                    _add_scores(calibration, model, p, unreported, reported, scale)
    return deltas, calibration


async def _count_forecasts(tx: Transaction, shard: int, change: int) -> None:
    """Move the stored-forecast count by `change` in this store's row: the last row locked."""
    if change:
        await tx.execute(
            "INSERT INTO forecast_counts (shard, forecasts) VALUES (%s, %s) "
            "ON CONFLICT (shard) DO UPDATE SET forecasts = forecast_counts.forecasts + "
            "excluded.forecasts",
            (shard, change),
        )


async def _count_requests(
    tx: Transaction, served: Sequence[RecordedForecast], shadows: Sequence[ShadowRecord]
) -> None:
    counts: dict[tuple[str, str, str], list[int]] = {}
    latencies: list[tuple[str, str, str, float]] = []
    started: dict[tuple[str, str], list[float]] = {}
    for f in served:
        counts.setdefault((f.model, f.experiment, f.served.version), [0, 0])[0] += 1
        latencies.append((f.model, f.experiment, f.served.version, f.served.latency_ms))
        first = started.setdefault((f.model, f.experiment), [f.created_at, 0])
        first[0], first[1] = min(first[0], f.created_at), first[1] + 1
    for s in shadows:
        counts.setdefault((s.model, s.experiment, s.prediction.version), [0, 0])[1] += 1
        latencies.append((s.model, s.experiment, s.prediction.version, s.prediction.latency_ms))
    await tx.executemany(
        "INSERT INTO experiments (model, experiment, started_at, forecasts) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (model, experiment) DO UPDATE SET "
        "forecasts = experiments.forecasts + excluded.forecasts",
        [(m, e, at, int(n)) for (m, e), (at, n) in sorted(started.items())],
    )
    await tx.executemany(
        "INSERT INTO counters (model, experiment, version, served, shadowed) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model, experiment, version) DO UPDATE SET "
        "served = counters.served + excluded.served, "
        "shadowed = counters.shadowed + excluded.shadowed",
        [(m, e, v, n[0], n[1]) for (m, e, v), n in sorted(counts.items())],
    )
    await tx.executemany(
        "INSERT INTO latency_buckets (model, experiment, version, bucket, n) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (model, experiment, version, bucket) "
        "DO UPDATE SET n = latency_buckets.n + excluded.n",
        aggregates.latency_counts(latencies),
    )


async def _report_actuals(
    tx: Transaction,
    lock_rows: str,
    window: int,
    forecast_id: str,
    actuals: FloatArray,
    offset: int,
    cutoff: float,
) -> ActualsReport | None:
    row = await tx.fetchone(
        "SELECT model, experiment, comparable, horizon, naive_scale, actuals, created_at "
        "FROM forecasts WHERE forecast_id = %s" + lock_rows,
        (forecast_id,),
    )
    if row is None or row[6] < cutoff:
        return None
    model, experiment, comparable, horizon, scale, stored, _ = row
    before = np.full(horizon, np.nan) if stored is None else _array(stored)
    merged = merge(before, horizon, actuals, offset)
    steps_received = int(np.isfinite(merged).sum())
    await tx.execute(
        "UPDATE forecasts SET actuals = %s, steps_received = %s WHERE forecast_id = %s",
        (merged.tobytes(), steps_received, forecast_id),
    )
    predictions = await _predictions(tx, forecast_id)
    scores, deltas = aggregates.rescore(
        model, experiment, predictions, merged, scale, bool(comparable), before=before
    )
    await _store_scores(tx, forecast_id, scores)
    calibration: dict[tuple[str, str, int], list[float]] = {}
    for prediction in predictions:
        _add_scores(calibration, model, prediction, before, merged, scale)
    await _append_calibration(tx, window, calibration)
    await _apply(tx, deltas)
    return ActualsReport(forecast_id, model, horizon, steps_received, scores)


def _add_scores(
    pools: dict[tuple[str, str, int], list[float]],
    model: str,
    prediction: aggregates.StoredPrediction,
    before: FloatArray,
    after: FloatArray,
    scale: float,
) -> None:
    """The calibration scores of the steps that got their first actual (a correction adds none)."""
    scale = prediction.error_scale(scale)
    if not scale > 0:  # a constant window has no scale to express errors in
        return
    steps = min(prediction.values.size, after.size)
    new = np.flatnonzero(np.isfinite(after[:steps]) & ~np.isfinite(before[:steps]))
    errors = (after[new] - prediction.values[new]) / scale
    for step, error in zip(new.tolist(), errors.tolist(), strict=True):
        if aggregates.usable(error):
            pools.setdefault((model, prediction.version, step), []).append(error)


async def _append_calibration(
    tx: Transaction, window: int, scores: dict[tuple[str, str, int], list[float]]
) -> None:
    """Append scores to their pools, keeping the newest `window`; pools locked in key order."""
    keys = sorted(scores)
    current = await _lock_rows(tx, _POOLS, keys)
    rows = []
    for key in keys:
        blob, revision = current[key]
        pool = np.concatenate([_array(blob), scores[key]])[-window:]
        rows.append((pool.astype("<f8").tobytes(), int(revision) + 1, *key))
    await tx.executemany(
        "UPDATE calibration_pools SET scores = %s, revision = %s "
        "WHERE model = %s AND version = %s AND step = %s",
        rows,
    )


@dataclass(frozen=True)
class _Table:
    """A table of rows that an operation creates if missing, then locks, reads and updates."""

    name: str
    keys: tuple[str, ...]
    values: tuple[str, ...]
    empty: tuple[object, ...]
    """The values of a row created empty."""


_POOLS = _Table("calibration_pools", ("model", "version", "step"), ("scores", "revision"), (b"", 0))


async def _lock_rows(
    tx: Transaction, table: _Table, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], Row]:
    """The values of the rows of `keys` (sorted), created empty where missing, locked in order.

    One upsert creates, locks and reads them: a SELECT ... FOR UPDATE locks
    no row that does not exist yet, and two transactions that both read a
    missing row and then wrote it would each write only their own change.
    The upsert's no-op update locks an existing row and waits for one
    another transaction is creating; its rows are taken in the order of
    `keys`, so every transaction locks a table's rows in one order.
    """
    columns = table.keys + table.values
    width = len(table.keys)
    first = table.values[0]
    per_statement = max(1, IN_LIST_MAX // len(columns))
    found: dict[tuple[Any, ...], Row] = {}
    for start in range(0, len(keys), per_statement):
        chunk = keys[start : start + per_statement]
        rows = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(chunk))
        for row in await tx.fetchall(
            f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES {rows} "
            f"ON CONFLICT ({', '.join(table.keys)}) DO UPDATE SET {first} = {table.name}.{first} "
            f"RETURNING {', '.join(columns)}",
            [value for key in chunk for value in (*key, *table.empty)],
        ):
            found[tuple(row[:width])] = row[width:]
    return found


async def _calibration_pools(
    tx: Transaction, known: dict[tuple[str, str], int]
) -> dict[tuple[str, str], CalibrationPools]:
    changed = [
        (str(model), str(version), int(revision))
        for model, version, revision in await tx.fetchall(
            "SELECT model, version, SUM(revision) FROM calibration_pools GROUP BY model, version"
        )
        if known.get((str(model), str(version))) != int(revision)
    ]
    pools: dict[tuple[str, str], CalibrationPools] = {}
    for model, version, _ in changed:
        rows = await tx.fetchall(
            "SELECT step, revision, scores FROM calibration_pools "
            "WHERE model = %s AND version = %s",
            (model, version),
        )
        pools[(model, version)] = CalibrationPools(
            revision=sum(int(revision) for _, revision, _ in rows),
            steps={int(step): _array(blob) for step, _, blob in rows},
        )
    return pools


async def _predictions(tx: Transaction, forecast_id: str) -> list[aggregates.StoredPrediction]:
    rows = await tx.fetchall(
        "SELECT version, role, forecast_values, steps_scored, mae, smape, mase, bounds, "
        "naive_scale "
        "FROM predictions WHERE forecast_id = %s ORDER BY version",
        (forecast_id,),
    )
    return [
        aggregates.StoredPrediction(
            version,
            Role(role),
            _array(values),
            scoring.Score(steps, *(math.nan if v is None else v for v in (mae, smape, mase)))
            if steps
            else aggregates.UNSCORED,
            None if bounds is None else np.frombuffer(bounds, dtype="<f4").astype(np.float64),
            math.nan if scale is None else scale,
        )
        for version, role, values, steps, mae, smape, mase, bounds, scale in rows
    ]


async def _store_scores(tx: Transaction, forecast_id: str, scores: Iterable[VersionScore]) -> None:
    await tx.executemany(
        "UPDATE predictions SET steps_scored = %s, mae = %s, smape = %s, mase = %s "
        "WHERE forecast_id = %s AND version = %s",
        [
            (s.steps_scored, *_sql_floats(s.mae, s.smape, s.mase), forecast_id, s.version)
            for s in scores
        ],
    )


_MOMENTS = _Table(
    "moments",
    ("model", "experiment", "metric", "version_a", "version_b"),
    ("n", "total", "squares"),
    (0, b"", b""),
)


async def _apply(tx: Transaction, deltas: Sequence[aggregates.MomentDelta]) -> None:
    """Move the running sums (exact: `scoring.ExactSums`) by `deltas`; rows locked in key order."""
    if not deltas:
        return
    keys = sorted({d.key for d in deltas})
    sums = {key: decode_sums(*row) for key, row in (await _lock_rows(tx, _MOMENTS, keys)).items()}
    for delta in deltas:
        sums[delta.key] = sums[delta.key].add(delta.value, delta.weight)
    await tx.executemany(
        "UPDATE moments SET n = %s, total = %s, squares = %s WHERE model = %s "
        "AND experiment = %s AND metric = %s AND version_a = %s AND version_b = %s",
        [(*encode_sums(sums[key]), *key) for key in keys],
    )


async def _aggregates(tx: Transaction, model: str, experiment: str) -> ModelAggregates:
    result = ModelAggregates()
    key = (model, experiment)
    for version, served, shadowed in await tx.fetchall(
        "SELECT version, served, shadowed FROM counters WHERE model = %s AND experiment = %s", key
    ):
        result.counters[version] = (int(served), int(shadowed))
    for metric, a, b, n, total, squares in await tx.fetchall(
        "SELECT metric, version_a, version_b, n, total, squares FROM moments "
        "WHERE model = %s AND experiment = %s AND n > 0",
        key,
    ):
        result.moments[(metric, a, b)] = decode_sums(n, total, squares).moments
    for version, bucket, n in await tx.fetchall(
        "SELECT version, bucket, n FROM latency_buckets WHERE model = %s AND experiment = %s", key
    ):
        result.latency.setdefault(version, {})[int(bucket)] = int(n)
    row = await tx.fetchone(
        "SELECT started_at, forecasts FROM experiments WHERE model = %s AND experiment = %s", key
    )
    if row is not None:
        result.info = ExperimentInfo(model, experiment, float(row[0]), int(row[1]))
    return result


async def _experiments(tx: Transaction, model: str) -> list[ExperimentInfo]:
    rows = await tx.fetchall(
        "SELECT model, experiment, started_at, forecasts FROM experiments "
        "WHERE model = %s OR %s = '' ORDER BY model, started_at DESC, experiment",
        (model, model),
    )
    return [ExperimentInfo(m, e, float(at), int(n)) for m, e, at, n in rows]


async def _prune(tx: Transaction, bounds: Bounds, shard: int, now: float) -> None:
    """Delete the forecasts past the age bound and the oldest past the count bound, and orphans.

    One pass in the module's lock order: every forecast row in id order, then
    their predictions, then the orphans, then the count.
    """
    expired = await tx.fetchall(
        "SELECT forecast_id FROM forecasts WHERE created_at < %s", (now - bounds.max_age_s,)
    )
    victims = {forecast_id for (forecast_id,) in expired}
    row = await tx.fetchone("SELECT COALESCE(SUM(forecasts), 0) FROM forecast_counts")
    excess = (int(row[0]) if row else 0) - bounds.max_forecasts
    if excess > len(victims):  # the oldest: the expired ones first, then the next
        oldest = await tx.fetchall(
            "SELECT forecast_id FROM forecasts ORDER BY created_at, forecast_id LIMIT %s",
            (excess,),
        )
        victims.update(forecast_id for (forecast_id,) in oldest)
    rows = [(forecast_id,) for forecast_id in sorted(victims)]
    deleted = await tx.executemany("DELETE FROM forecasts WHERE forecast_id = %s", rows)
    await tx.executemany("DELETE FROM predictions WHERE forecast_id = %s", rows)
    await tx.execute(
        "DELETE FROM predictions WHERE orphan = 1 AND recorded_at < %s",
        (now - min(ORPHAN_GRACE_S, bounds.max_age_s),),
    )
    await _count_forecasts(tx, shard, -deleted)


_INSERT_PREDICTION = (
    "INSERT INTO predictions (forecast_id, version, model, role, forecast_values, latency_ms, "
    "recorded_at, orphan, bounds, naive_scale) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (forecast_id, version) DO NOTHING"
)


def _prediction_row(
    forecast_id: str, model: str, p: Prediction, recorded_at: float, orphan: int
) -> tuple[str, str, str, str, bytes, float, float, int, bytes | None, float | None]:
    values = struct.pack(f"<{len(p.values)}d", *p.values)
    # float32: seven rows per step would otherwise make the row ~7x its forecast's size.
    bounds = None if p.bounds is None else p.bounds.astype("<f4").tobytes()
    return (
        forecast_id,
        p.version,
        model,
        p.role.value,
        values,
        p.latency_ms,
        recorded_at,
        orphan,
        bounds,
        p.scale if math.isfinite(p.scale) else None,
    )


def _array(blob: bytes) -> FloatArray:
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def _sql_floats(*values: float) -> tuple[float | None, ...]:
    """NULL for an undefined score (NaN): SQL has no NaN in SQLite, and NULL reads back as NaN."""
    return tuple(value if math.isfinite(value) else None for value in values)
