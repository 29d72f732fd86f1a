"""The A/B experiment store: forecasts, shadow forecasts, actuals, scores and counters.

Backed by one SQLite file per gateway replica (see docs/experiments.md).
The request path only enqueues (`record`, `record_shadow`): a background
task writes the queue in batches every `flush_interval_s` or `flush_batch`
items. Every SQLite call runs on one dedicated thread that owns the
connection, so the event loop never waits on disk and the connection is
never used from two threads. Reads (`report_actuals`, `experiment`) write
what is queued first, on that same thread, so they see everything recorded
before them.

Bounds: at most `max_forecasts` forecasts, none older than `max_age_s`;
the oldest are pruned after every write batch, with their predictions.
Shadow predictions whose served forecast was never recorded (the served
call failed) are pruned after `ORPHAN_GRACE_S`. Per-version request
counters are totals kept in SQLite and never pruned.
"""

from __future__ import annotations

import asyncio
import enum
import math
import os
import sqlite3
import struct
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import structlog

from forecast_gateway import metrics, scoring
from forecast_gateway.config import GatewayConfig
from forecast_gateway.errors import FieldViolation, InvalidArgument, NotFound
from forecast_gateway.normalization import FloatArray

log = structlog.get_logger(__name__)

METRIC = "mase"
ORPHAN_GRACE_S = 60.0
"""How long a shadow prediction waits for its served forecast's record before it is pruned."""
MAX_PENDING = 20_000
"""Records queued for the writer at most (~0.6 KB each at horizon 5, ~2 KB at 64); past it
they are dropped and counted: A/B recording never grows the gateway's memory without
bound. The writer takes ~75k records/s, so only a stalled disk fills it."""
SCHEMA_VERSION = 1
LATENCY_QUANTILES = (0.50, 0.95, 0.99)

_T = TypeVar("_T")


def new_forecast_id() -> str:
    """A time-ordered UUID (version 7, RFC 9562): 48 bits of Unix milliseconds, 74 random bits.

    The store's keys are forecast ids. Random (v4) ids scatter every insert
    over the whole B-tree, so each commit rewrote pages all over the file and
    writes slowed from 31k to 12k records/s as the table grew to 60k; ids
    that grow with time append, at ~75k records/s whatever the size.
    """
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (
        (time.time_ns() // 1_000_000) << 80
        | 0x7 << 76
        | (random_bits >> 68) << 64
        | 0b10 << 62
        | random_bits & ((1 << 62) - 1)
    )
    return str(uuid.UUID(int=value))


class Role(enum.Enum):
    """Whether a prediction was returned to the caller (mirrors forecast.v1.ScoreRole)."""

    SERVED = "served"
    SHADOW = "shadow"


@dataclass(frozen=True)
class Prediction:
    """One version's forecast of a request, in the units of the history."""

    version: str
    role: Role
    values: tuple[float, ...]
    latency_ms: float


@dataclass(frozen=True)
class RecordedForecast:
    """A served forecast, recorded so that actuals reported later can score it.

    `naive_scale` is `scoring.naive_scale` of the request's window;
    `created_at` is wall-clock seconds (`time.time()`), the clock the age
    bound is checked against, also across restarts.
    """

    forecast_id: str
    model: str
    horizon: int
    naive_scale: float
    created_at: float
    served: Prediction


@dataclass(frozen=True)
class VersionScore:
    """One version's accuracy on one forecast (mirrors forecast.v1.VersionScore)."""

    version: str
    role: Role
    steps_scored: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class ActualsReport:
    """What has been scored for a forecast so far; scores: served first, then shadows."""

    forecast_id: str
    model: str
    horizon: int
    steps_received: int
    scores: list[VersionScore]


@dataclass(frozen=True)
class ErrorStats:
    """Means over a version's scored forecasts; NaN when there is nothing to average.

    `mase_mean` leaves out forecasts whose MASE is undefined (constant window).
    """

    count: int
    mae_mean: float
    smape_mean: float
    mase_mean: float


@dataclass(frozen=True)
class LatencyStats:
    """Latency percentiles in ms over a version's stored predictions (NaN when none)."""

    count: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


NO_LATENCY = LatencyStats(count=0, p50_ms=math.nan, p95_ms=math.nan, p99_ms=math.nan)


@dataclass(frozen=True)
class VersionSummary:
    """One version's traffic, accuracy and latency (mirrors forecast.v1.VersionExperiment)."""

    version: str
    requests_served: int
    requests_shadowed: int
    actuals_received: int
    errors: ErrorStats
    latency: LatencyStats


@dataclass(frozen=True)
class VersionComparison:
    """`scoring.Comparison` of two versions' MASE (mirrors forecast.v1.VersionComparison)."""

    version_a: str
    version_b: str
    metric: str
    test: str
    samples: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool


@dataclass(frozen=True)
class ExperimentReport:
    """A model's A/B results: versions in version order, one comparison per scored pair."""

    model: str
    versions: list[VersionSummary]
    comparisons: list[VersionComparison]


@dataclass(frozen=True)
class _Shadow:
    forecast_id: str
    model: str
    prediction: Prediction
    recorded_at: float


_Op = RecordedForecast | _Shadow


class ExperimentStore:
    """Records forecasts write-behind and scores them when actuals arrive.

    Use from one event loop: `await start()`, `record*()` on the request
    path, `await close()` on shutdown (writes everything still queued).
    """

    def __init__(
        self,
        path: str,
        max_forecasts: int,
        max_age_s: float,
        *,
        clock: Callable[[], float] = time.time,
        flush_interval_s: float = 0.05,
        flush_batch: int = 256,
        max_pending: int = MAX_PENDING,
    ) -> None:
        if max_forecasts <= 0 or max_age_s <= 0:
            raise ValueError("max_forecasts and max_age_s must be > 0")
        self.path = path
        self.dropped = 0
        """Records dropped because the queue was full or the store closed."""
        self._clock = clock
        self._flush_interval_s = flush_interval_s
        self._flush_batch = flush_batch
        self._max_pending = max_pending
        self._db = _Database(path, max_forecasts, max_age_s, clock)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="experiment-store")
        self._pending: list[_Op] = []
        self._wakeup = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._closed = False
        self._unreported_drops = 0
        # GetExperiment reads every stored prediction of a model (~0.15 s at
        # 150k forecasts) on the store's one thread, which ReportActuals and the
        # writes need too. One computation at a time; callers that arrive while
        # one runs share the next, so each still sees every write made before it
        # asked, and no call rate can queue more than two on the thread.
        self._experiment_lock = asyncio.Lock()
        self._next_experiment: dict[str, asyncio.Future[ExperimentReport]] = {}
        self._experiment_tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Open (or create) the database and start the background flusher."""
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        await self._call(self._db.open)
        self._flusher = asyncio.create_task(self._flush_forever(), name="experiment-flusher")

    async def close(self) -> None:
        """Write everything queued, then close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._flusher is None:
            self._executor.shutdown(wait=False)
            return
        self._flusher.cancel()
        await asyncio.wait([self._flusher])
        await self._call(self._db.write, self._take())
        await self._call(self._db.close)
        self._executor.shutdown(wait=False)

    @classmethod
    def from_config(cls, config: GatewayConfig) -> ExperimentStore:
        """A store at `store_path` bounded by `store_max_forecasts` and `store_max_age_s`."""
        return cls(config.store_path, config.store_max_forecasts, config.store_max_age_s)

    def record(self, forecast: RecordedForecast) -> None:
        """Queue a served forecast (never blocks); counts a served request for its version.

        Raises ValueError for a malformed record (a caller bug), so that a
        bad row never fails the batch it would be written in.
        """
        _check_prediction(forecast.served, Role.SERVED)
        if forecast.horizon < 1 or len(forecast.served.values) != forecast.horizon:
            raise ValueError(
                f"{len(forecast.served.values)} values for a horizon of {forecast.horizon}"
            )
        if not (math.isfinite(forecast.naive_scale) and forecast.naive_scale >= 0):
            raise ValueError(f"naive_scale must be finite and >= 0, got {forecast.naive_scale}")
        self._enqueue(forecast)

    def record_shadow(self, forecast_id: str, model: str, prediction: Prediction) -> None:
        """Queue a shadow prediction of a recorded forecast (never blocks).

        It may arrive before or after the served record and after actuals
        were reported; in the last case it is scored when written.
        """
        _check_prediction(prediction, Role.SHADOW)
        self._enqueue(_Shadow(forecast_id, model, prediction, self._clock()))

    async def report_actuals(
        self, forecast_id: str, actuals: Sequence[float], offset: int
    ) -> ActualsReport:
        """Store actuals at horizon steps [offset, offset + len) and rescore the forecast.

        Raises InvalidArgument (field "forecast_id", "actuals" or "offset")
        and NotFound (reason FORECAST_NOT_FOUND) for an unknown or expired id.
        """
        values = _checked_actuals(forecast_id, actuals, offset)
        return await self._call(self._db.report_actuals, self._take(), forecast_id, values, offset)

    async def experiment(self, model: str) -> ExperimentReport:
        """The A/B results of `model` (empty for a model never recorded).

        Computed after the call arrives; concurrent calls share a computation.
        """
        future = self._next_experiment.get(model)
        if future is None:
            future = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieve)
            self._next_experiment[model] = future
            task = asyncio.create_task(self._compute_experiment(model, future))
            self._experiment_tasks.add(task)
            task.add_done_callback(self._experiment_tasks.discard)
        return await asyncio.shield(future)

    async def _compute_experiment(
        self, model: str, future: asyncio.Future[ExperimentReport]
    ) -> None:
        async with self._experiment_lock:
            del self._next_experiment[model]  # later callers wait for the next computation
            try:
                future.set_result(await self._call(self._db.experiment, self._take(), model))
            except Exception as error:
                future.set_exception(error)
            finally:
                if not future.done():  # cancelled at shutdown: release the callers
                    future.cancel()

    def _enqueue(self, op: _Op) -> None:
        if self._closed or len(self._pending) >= self._max_pending:
            self.dropped += 1
            metrics.EXPERIMENT_RECORDS_DROPPED.inc()
            self._unreported_drops += 1
            if self._unreported_drops == 1:  # once per episode; the flusher reports the total
                log.warning("experiment_records_dropping", closed=self._closed)
            return
        self._pending.append(op)
        if len(self._pending) >= self._flush_batch:
            self._wakeup.set()

    def _take(self) -> list[_Op]:
        ops, self._pending = self._pending, []
        return ops

    async def _flush_forever(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._flush_interval_s):
                    await self._wakeup.wait()
            except TimeoutError:
                pass
            self._wakeup.clear()
            ops = self._take()
            if not ops:
                continue
            try:
                await self._call(self._db.write, ops)
            except Exception:
                log.exception("experiment_flush_failed", records=len(ops))
            if self._unreported_drops:
                log.warning("experiment_records_dropped", records=self._unreported_drops)
                self._unreported_drops = 0

    async def _call(self, function: Callable[..., _T], *args: object) -> _T:
        """Run `function` on the store's thread; it finishes even if the caller is cancelled."""
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, *args)
        future.add_done_callback(_retrieve)
        return await asyncio.shield(future)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a shielded future's exception as seen when its caller was cancelled."""
    if not future.cancelled():
        future.exception()


def _check_prediction(prediction: Prediction, role: Role) -> None:
    if prediction.role is not role:
        raise ValueError(f"expected a prediction with role {role.name}, got {prediction.role.name}")
    if not (math.isfinite(prediction.latency_ms) and prediction.latency_ms >= 0):
        raise ValueError(f"latency_ms must be finite and >= 0, got {prediction.latency_ms}")


def _checked_actuals(forecast_id: str, actuals: Sequence[float], offset: int) -> FloatArray:
    """The actuals as float64, or InvalidArgument for what can be checked without the store."""
    violations: list[FieldViolation] = []
    if not forecast_id:
        violations.append(FieldViolation("forecast_id", "required"))
    values = np.asarray(actuals, dtype=np.float64).ravel()
    if values.size == 0:
        violations.append(FieldViolation("actuals", "must not be empty"))
    elif not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        violations.append(
            FieldViolation("actuals", f"must be finite; actuals[{bad}] is {values[bad]}")
        )
    if offset < 0:
        violations.append(FieldViolation("offset", f"must be >= 0, got {offset}"))
    if violations:
        raise InvalidArgument.of(violations)
    return values


def _check_fit(count: int, offset: int, horizon: int) -> None:
    if offset >= horizon:
        raise InvalidArgument.of(
            [FieldViolation("offset", f"must be < the horizon ({horizon} steps), got {offset}")]
        )
    if offset + count > horizon:
        raise InvalidArgument.of(
            [
                FieldViolation(
                    "actuals",
                    f"{count} values at offset {offset} run past the horizon of {horizon} "
                    f"steps; at most {horizon - offset} fit",
                )
            ]
        )


_SCHEMA = """
CREATE TABLE IF NOT EXISTS forecasts (
    forecast_id TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    horizon INTEGER NOT NULL,
    naive_scale REAL NOT NULL,
    created_at REAL NOT NULL,
    actuals BLOB,
    steps_received INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS forecasts_by_age ON forecasts (created_at);
CREATE TABLE IF NOT EXISTS predictions (
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
);
CREATE INDEX IF NOT EXISTS predictions_by_latency ON predictions (model, version, latency_ms);
CREATE INDEX IF NOT EXISTS predictions_scored ON predictions (model, version)
    WHERE steps_scored > 0;
CREATE INDEX IF NOT EXISTS orphans_by_age ON predictions (recorded_at) WHERE orphan = 1;
CREATE TABLE IF NOT EXISTS counters (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    served INTEGER NOT NULL DEFAULT 0,
    shadowed INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (model, version)
);
"""


class _Database:
    """The SQLite side; every method runs on the store's single thread."""

    def __init__(
        self, path: str, max_forecasts: int, max_age_s: float, clock: Callable[[], float]
    ) -> None:
        self._path = path
        self._max_forecasts = max_forecasts
        self._max_age_s = max_age_s
        self._clock = clock
        self._connection: sqlite3.Connection | None = None
        self._count = 0
        self._orphans: set[str] = set()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError("the experiment store is not started")
        return self._connection

    def open(self) -> None:
        connection = sqlite3.connect(self._path)
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            connection.close()
            raise RuntimeError(f"{self._path}: unknown experiment store schema {version}")
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SCHEMA)
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._connection = connection
        self._load_counts()

    def _load_counts(self) -> None:
        """Re-read what is kept in memory to avoid a query per write."""
        self._count = self._db.execute("SELECT COUNT(*) FROM forecasts").fetchone()[0]
        self._orphans = {
            forecast_id
            for (forecast_id,) in self._db.execute(
                "SELECT forecast_id FROM predictions WHERE orphan = 1"
            )
        }

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def write(self, ops: Sequence[_Op]) -> None:
        """Write a batch in one transaction, then prune; a failed batch is logged and dropped."""
        try:
            with self._db:
                self._insert(ops)
                self._prune()
        except sqlite3.Error:
            self._load_counts()  # the transaction was rolled back
            log.exception("experiment_write_failed", records=len(ops))

    def report_actuals(
        self, ops: Sequence[_Op], forecast_id: str, actuals: FloatArray, offset: int
    ) -> ActualsReport:
        if ops:
            self.write(ops)
        row = self._db.execute(
            "SELECT model, horizon, naive_scale, actuals, created_at FROM forecasts "
            "WHERE forecast_id = ?",
            (forecast_id,),
        ).fetchone()
        if row is None or row[4] < self._clock() - self._max_age_s:
            raise NotFound(
                f"forecast {forecast_id!r} is unknown or has expired",
                reason="FORECAST_NOT_FOUND",
                metadata={"forecast_id": forecast_id},
            )
        model, horizon, scale, stored, _ = row
        _check_fit(actuals.size, offset, horizon)
        merged = np.full(horizon, np.nan) if stored is None else _array(stored).copy()
        merged[offset : offset + actuals.size] = actuals
        steps_received = int(np.isfinite(merged).sum())
        with self._db:
            self._db.execute(
                "UPDATE forecasts SET actuals = ?, steps_received = ? WHERE forecast_id = ?",
                (merged.tobytes(), steps_received, forecast_id),
            )
            scores = self._rescore(forecast_id, merged, scale)
        scores.sort(key=lambda s: (s.role is not Role.SERVED, _version_key(s.version)))
        return ActualsReport(forecast_id, model, horizon, steps_received, scores)

    def experiment(self, ops: Sequence[_Op], model: str) -> ExperimentReport:
        self.write(ops)
        counters = {
            version: (served, shadowed)
            for version, served, shadowed in self._db.execute(
                "SELECT version, served, shadowed FROM counters WHERE model = ?", (model,)
            )
        }
        latency = {
            version: self._latency(model, version, count)
            for version, count in self._db.execute(
                "SELECT version, COUNT(*) FROM predictions WHERE model = ? GROUP BY version",
                (model,),
            ).fetchall()
        }
        errors = {
            version: ErrorStats(count, *(math.nan if v is None else v for v in means))
            for version, count, *means in self._db.execute(
                "SELECT version, COUNT(*), AVG(mae), AVG(smape), AVG(mase) FROM predictions "
                "WHERE model = ? AND steps_scored > 0 GROUP BY version",
                (model,),
            )
        }
        mase = {
            version: self._moments(_VERSION_MASE, (model, version))
            for version in sorted(errors, key=_version_key)
        }
        pairs = {
            (a, b): self._moments(_PAIRED_MASE_DIFFERENCES, (b, model, a))
            for i, a in enumerate(mase)
            for b in list(mase)[i + 1 :]
            if mase[a].count and mase[b].count
        }
        return summarize(model, counters, latency, errors, mase, pairs)

    def _moments(self, sample: str, params: tuple[str, ...]) -> scoring.Moments:
        """Moments of a one-column sample query, computed by SQLite (two passes, no rows to Python).

        GetExperiment used to read every scored prediction into Python: ~0.1 s
        holding the GIL at 150k forecasts. SQLite aggregates without the GIL.
        """
        count, mean, low, high, squares = self._db.execute(
            f"WITH sample AS ({sample}), "
            "first AS (SELECT COUNT(*) AS n, AVG(x) AS mean, MIN(x) AS low, MAX(x) AS high "
            "FROM sample) "
            "SELECT n, mean, low, high, "
            "(SELECT SUM((x - first.mean) * (x - first.mean)) FROM sample) FROM first",
            params,
        ).fetchone()
        if not count:
            return scoring.EMPTY
        variance = squares / (count - 1) if count > 1 else math.nan
        return scoring.Moments(count, mean, variance, max(high - mean, mean - low))

    def _latency(self, model: str, version: str, count: int) -> LatencyStats:
        """Percentiles as numpy's default (linear), read off the latency index in SQLite."""
        percentiles: list[float] = []
        for q in LATENCY_QUANTILES:
            position = q * (count - 1)
            below = int(position)
            pair = [
                value
                for (value,) in self._db.execute(
                    "SELECT latency_ms FROM predictions WHERE model = ? AND version = ? "
                    "ORDER BY latency_ms LIMIT 2 OFFSET ?",
                    (model, version, below),
                )
            ]
            above = pair[1] if len(pair) == 2 else pair[0]
            percentiles.append(pair[0] + (position - below) * (above - pair[0]))
        return LatencyStats(count, *percentiles)

    def _insert(self, ops: Sequence[_Op]) -> None:
        counts: Counter[tuple[str, str, Role]] = Counter()
        served = [op for op in ops if isinstance(op, RecordedForecast)]
        self._insert_forecasts(served)
        for forecast in served:
            counts[(forecast.model, forecast.served.version, Role.SERVED)] += 1
        for op in ops:
            if isinstance(op, _Shadow):
                self._insert_shadow(op)
                counts[(op.model, op.prediction.version, Role.SHADOW)] += 1
        self._db.executemany(
            "INSERT INTO counters (model, version, served, shadowed) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model, version) DO UPDATE SET "
            "served = served + excluded.served, shadowed = shadowed + excluded.shadowed",
            [
                (model, version, n if role is Role.SERVED else 0, n if role is Role.SHADOW else 0)
                for (model, version, role), n in counts.items()
            ],
        )

    def _insert_forecasts(self, forecasts: Sequence[RecordedForecast]) -> None:
        """Served forecasts in two statements (not two per row: the writer thread holds the GIL)."""
        if not forecasts:
            return
        cursor = self._db.executemany(
            "INSERT OR IGNORE INTO forecasts "
            "(forecast_id, model, horizon, naive_scale, created_at) VALUES (?, ?, ?, ?, ?)",
            [(f.forecast_id, f.model, f.horizon, f.naive_scale, f.created_at) for f in forecasts],
        )
        self._count += cursor.rowcount
        self._db.executemany(
            _INSERT_PREDICTION,
            [_prediction_row(f.forecast_id, f.model, f.served, f.created_at) for f in forecasts],
        )
        adopted = [(f.forecast_id,) for f in forecasts if f.forecast_id in self._orphans]
        if adopted:  # their shadows were written first
            self._orphans.difference_update(forecast_id for (forecast_id,) in adopted)
            self._db.executemany("UPDATE predictions SET orphan = 0 WHERE forecast_id = ?", adopted)

    def _insert_shadow(self, op: _Shadow) -> None:
        row = self._db.execute(
            "SELECT naive_scale, actuals FROM forecasts WHERE forecast_id = ?",
            (op.forecast_id,),
        ).fetchone()
        self._insert_prediction(
            op.forecast_id, op.model, op.prediction, op.recorded_at, orphan=row is None
        )
        if row is None:
            self._orphans.add(op.forecast_id)
        if row is not None and row[1] is not None:
            self._rescore(op.forecast_id, _array(row[1]), row[0], version=op.prediction.version)

    def _insert_prediction(
        self, forecast_id: str, model: str, p: Prediction, recorded_at: float, *, orphan: bool
    ) -> None:
        self._db.execute(
            _INSERT_PREDICTION, _prediction_row(forecast_id, model, p, recorded_at, orphan=orphan)
        )

    def _rescore(
        self, forecast_id: str, actuals: FloatArray, scale: float, version: str | None = None
    ) -> list[VersionScore]:
        query = "SELECT version, role, forecast_values FROM predictions WHERE forecast_id = ?"
        params: tuple[str, ...] = (forecast_id,)
        if version is not None:
            query += " AND version = ?"
            params += (version,)
        scores: list[VersionScore] = []
        for name, role, stored in self._db.execute(query, params).fetchall():
            values = _array(stored)
            steps = min(values.size, actuals.size)
            result = scoring.score(values[:steps], actuals[:steps], scale)
            self._db.execute(
                "UPDATE predictions SET steps_scored = ?, mae = ?, smape = ?, mase = ? "
                "WHERE forecast_id = ? AND version = ?",
                (result.steps, result.mae, result.smape, result.mase, forecast_id, name),
            )
            scores.append(
                VersionScore(name, Role(role), result.steps, result.mae, result.smape, result.mase)
            )
        return scores

    def _prune(self) -> None:
        now = self._clock()
        self._delete_forecasts(
            "SELECT forecast_id FROM forecasts WHERE created_at < ?", (now - self._max_age_s,)
        )
        excess = self._count - self._max_forecasts
        if excess > 0:
            self._delete_forecasts(
                "SELECT forecast_id FROM forecasts ORDER BY created_at, forecast_id LIMIT ?",
                (excess,),
            )
        for (forecast_id,) in self._db.execute(
            "DELETE FROM predictions WHERE orphan = 1 AND recorded_at < ? RETURNING forecast_id",
            (now - min(ORPHAN_GRACE_S, self._max_age_s),),
        ).fetchall():
            self._orphans.discard(forecast_id)

    def _delete_forecasts(self, select: str, params: tuple[float | int, ...]) -> None:
        ids = [(forecast_id,) for (forecast_id,) in self._db.execute(select, params)]
        if ids:
            self._db.executemany("DELETE FROM predictions WHERE forecast_id = ?", ids)
            self._db.executemany("DELETE FROM forecasts WHERE forecast_id = ?", ids)
            self._count -= len(ids)


_INSERT_PREDICTION = (
    "INSERT OR IGNORE INTO predictions (forecast_id, version, model, role, "
    "forecast_values, latency_ms, recorded_at, orphan) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _prediction_row(
    forecast_id: str, model: str, p: Prediction, recorded_at: float, *, orphan: bool = False
) -> tuple[str, str, str, str, bytes, float, float, int]:
    values = struct.pack(f"<{len(p.values)}d", *p.values)
    return (
        forecast_id,
        p.version,
        model,
        p.role.value,
        values,
        p.latency_ms,
        recorded_at,
        int(orphan),
    )


def _array(blob: bytes) -> FloatArray:
    return np.frombuffer(blob, dtype="<f8").astype(np.float64)


def _version_key(version: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order, then any others by name."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def _mean(values: Iterable[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def summarize(
    model: str,
    counters: dict[str, tuple[int, int]],
    latency: dict[str, LatencyStats],
    errors: dict[str, ErrorStats],
    mase: dict[str, scoring.Moments],
    pairs: dict[tuple[str, str], scoring.Moments],
) -> ExperimentReport:
    """Per-version summaries and pairwise MASE comparisons, from aggregates.

    `counters` are (served, shadowed) totals, `latency` is over the stored
    predictions, `errors` the means over each version's scored predictions,
    `mase` the moments of each version's defined MASE values, `pairs` those
    of the MASE differences a - b over the requests both versions forecast
    with a defined MASE (a served forecast and a shadow of the same request).

    Two versions are compared with the paired t-test when at least
    `scoring.MIN_SAMPLES` such pairs exist; else Welch's test over each
    version's MASE values.
    """
    versions = sorted(set(counters) | set(latency) | set(errors), key=_version_key)
    summaries: list[VersionSummary] = []
    for version in versions:
        served, shadowed = counters.get(version, (0, 0))
        own = errors.get(version, ErrorStats(0, math.nan, math.nan, math.nan))
        summaries.append(
            VersionSummary(
                version=version,
                requests_served=served,
                requests_shadowed=shadowed,
                actuals_received=own.count,
                errors=own,
                latency=latency.get(version, NO_LATENCY),
            )
        )
    comparisons = [
        _comparison(a, b, mase[a], mase[b], pairs.get((a, b), scoring.EMPTY))
        for i, a in enumerate(versions)
        for b in versions[i + 1 :]
        if mase.get(a, scoring.EMPTY).count and mase.get(b, scoring.EMPTY).count
    ]
    return ExperimentReport(model=model, versions=summaries, comparisons=comparisons)


def _comparison(
    a: str, b: str, mase_a: scoring.Moments, mase_b: scoring.Moments, paired: scoring.Moments
) -> VersionComparison:
    if paired.count >= scoring.MIN_SAMPLES:
        result = scoring.compare_paired(paired)
    else:
        result = scoring.compare_welch(mase_a, mase_b)
    return VersionComparison(
        version_a=a,
        version_b=b,
        metric=METRIC,
        test=result.test,
        samples=result.samples,
        mean_difference=result.mean_difference,
        ci_low=result.ci_low,
        ci_high=result.ci_high,
        p_value=result.p_value,
        significant=result.significant,
    )


_VERSION_MASE = (
    "SELECT mase AS x FROM predictions "
    "WHERE model = ? AND version = ? AND steps_scored > 0 AND mase IS NOT NULL"
)
_PAIRED_MASE_DIFFERENCES = (
    "SELECT a.mase - b.mase AS x FROM predictions AS a "
    "JOIN predictions AS b ON b.forecast_id = a.forecast_id AND b.version = ? "
    "WHERE a.model = ? AND a.version = ? AND a.steps_scored > 0 AND a.mase IS NOT NULL "
    "AND b.steps_scored > 0 AND b.mase IS NOT NULL"
)
