"""The store's writes: a batch of records, a report of actuals, the prune.

Each runs in one transaction and takes rows in the lock order of
`ab.storage`: forecasts, predictions, calibration pools, aggregate rows,
the count.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence

import numpy as np

from forecast_gateway.ab import aggregates
from forecast_gateway.ab.actuals import merge, step_at
from forecast_gateway.ab.pools import (
    CqrScores,
    Scores,
    add_cqr_scores,
    add_scores,
    append_calibration,
)
from forecast_gateway.ab.reads import read_predictions
from forecast_gateway.ab.records import (
    ActualsReport,
    Bounds,
    Prediction,
    Record,
    RecordedForecast,
    ShadowRecord,
    VersionScore,
    unit_digest,
)
from forecast_gateway.ab.rows import apply_moments, array, lock_forecasts, sql_floats
from forecast_gateway.ab.schema import Row, Transaction
from forecast_gateway.numerics import FloatArray

ORPHAN_GRACE_S = 60.0
"""How long a shadow prediction waits for its served forecast's record before it is pruned."""


async def write(
    tx: Transaction, lock_rows: str, window: int, shard: int, records: Sequence[Record]
) -> None:
    """Rows in the module's lock order: forecasts, predictions, pools, aggregates, the count."""
    served = [r for r in records if isinstance(r, RecordedForecast)]
    shadows = [r for r in records if isinstance(r, ShadowRecord)]
    known = await lock_forecasts(tx, lock_rows, {s.forecast_id for s in shadows})
    inserted = 0
    if served:
        inserted = await tx.executemany(
            "INSERT INTO forecasts (forecast_id, model, experiment, comparable, horizon, "
            "naive_scale, created_at, unit, first_step_ns, frequency) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
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
                    unit_digest(f.unit) if f.unit and f.comparable else None,
                    f.first_step_ns,
                    f.frequency or None,
                )
                for f in served
            ],
        )
        await tx.executemany(
            INSERT_PREDICTION,
            [prediction_row(f.forecast_id, f.model, f.served, f.created_at, 0) for f in served],
        )
    deltas: list[aggregates.MomentDelta] = []
    calibration: Scores = {}
    cqr: CqrScores = {}
    if shadows:
        batch = {f.forecast_id for f in served}
        deltas, calibration, cqr = await write_shadows(tx, shadows, known, batch)
    if served:  # orphans last among the predictions: shadows written before their forecast
        await tx.executemany(
            "UPDATE predictions SET orphan = 0 WHERE forecast_id = %s AND orphan = 1",
            [(forecast_id,) for forecast_id in sorted({f.forecast_id for f in served})],
        )
    await append_calibration(tx, window, calibration, cqr)
    await apply_moments(tx, deltas)
    await count_requests(tx, served, shadows)
    await count_forecasts(tx, shard, inserted)


async def write_shadows(
    tx: Transaction, shadows: Sequence[ShadowRecord], known: dict[str, Row], batch: set[str]
) -> tuple[list[aggregates.MomentDelta], Scores, CqrScores]:
    """Insert shadow predictions and rescore those whose forecast already has actuals.

    `known`: the locked rows of the forecasts stored before this write;
    `batch`: the forecasts this write inserts. A shadow of neither is an
    orphan until its forecast arrives. Returns the deltas to the aggregates
    and the calibration and CQR scores, for the caller to apply in lock order.
    """
    await tx.executemany(
        INSERT_PREDICTION,
        [
            prediction_row(
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
    calibration: Scores = {}
    cqr: CqrScores = {}
    for forecast_id, model, experiment, comparable, scale, stored, unit in known.values():
        if stored is not None:
            predictions = await read_predictions(tx, forecast_id)
            reported = array(stored)  # the scored ones were scored on these very actuals
            scores, changes = aggregates.rescore(
                model,
                experiment,
                predictions,
                reported,
                scale,
                bool(comparable),
                before=reported,
                unit=unit or "",
            )
            await store_scores(tx, forecast_id, scores)
            deltas += changes
            late = {s.prediction.version for s in shadows if s.forecast_id == forecast_id}
            unreported = np.full(reported.size, np.nan)
            for p in predictions:
                if p.version in late:  # its steps reported so far are new to its pools
                    add_scores(calibration, model, p, unreported, reported, scale)
                    add_cqr_scores(cqr, model, p, unreported, reported, scale)
    return deltas, calibration, cqr


async def count_forecasts(tx: Transaction, shard: int, change: int) -> None:
    """Move the stored-forecast count by `change` in this store's row: the last row locked."""
    if change:
        await tx.execute(
            "INSERT INTO forecast_counts (shard, forecasts) VALUES (%s, %s) "
            "ON CONFLICT (shard) DO UPDATE SET forecasts = forecast_counts.forecasts + "
            "excluded.forecasts",
            (shard, change),
        )


async def count_requests(
    tx: Transaction, served: Sequence[RecordedForecast], shadows: Sequence[ShadowRecord]
) -> None:
    """Add a batch's served and shadowed requests, experiments and latency buckets."""
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


async def report_actuals(
    tx: Transaction,
    lock_rows: str,
    window: int,
    forecast_id: str,
    actuals: FloatArray,
    offset: int,
    cutoff: float,
    start_ns: int | None = None,
) -> ActualsReport | None:
    """Merge actuals into a forecast's row (locked) and rescore it; None: unknown or expired."""
    row = await tx.fetchone(
        "SELECT model, experiment, comparable, horizon, naive_scale, actuals, created_at, unit, "
        "first_step_ns, frequency "
        "FROM forecasts WHERE forecast_id = %s" + lock_rows,
        (forecast_id,),
    )
    if row is None or row[6] < cutoff:
        return None
    model, experiment, comparable, horizon, scale, stored, _, unit, first_ns, frequency = row
    if start_ns is not None:
        offset = step_at(start_ns, first_ns, frequency or "", horizon)
    before = np.full(horizon, np.nan) if stored is None else array(stored)
    merged = merge(before, horizon, actuals, offset)
    steps_received = int(np.isfinite(merged).sum())
    await tx.execute(
        "UPDATE forecasts SET actuals = %s, steps_received = %s WHERE forecast_id = %s",
        (merged.tobytes(), steps_received, forecast_id),
    )
    predictions = await read_predictions(tx, forecast_id)
    scores, deltas = aggregates.rescore(
        model,
        experiment,
        predictions,
        merged,
        scale,
        bool(comparable),
        before=before,
        unit=unit or "",
    )
    await store_scores(tx, forecast_id, scores)
    calibration: Scores = {}
    cqr: CqrScores = {}
    for prediction in predictions:
        add_scores(calibration, model, prediction, before, merged, scale)
        add_cqr_scores(cqr, model, prediction, before, merged, scale)
    await append_calibration(tx, window, calibration, cqr)
    await apply_moments(tx, deltas)
    return ActualsReport(forecast_id, model, horizon, steps_received, scores)


async def store_scores(tx: Transaction, forecast_id: str, scores: Iterable[VersionScore]) -> None:
    """Write the current score of each prediction of a forecast."""
    await tx.executemany(
        "UPDATE predictions SET steps_scored = %s, mae = %s, smape = %s, mase = %s "
        "WHERE forecast_id = %s AND version = %s",
        [
            (s.steps_scored, *sql_floats(s.mae, s.smape, s.mase), forecast_id, s.version)
            for s in scores
        ],
    )


async def prune(tx: Transaction, bounds: Bounds, shard: int, now: float) -> None:
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
    await count_forecasts(tx, shard, -deleted)


INSERT_PREDICTION = (
    "INSERT INTO predictions (forecast_id, version, model, role, forecast_values, latency_ms, "
    "recorded_at, orphan, bounds, naive_scale, native_bounds) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (forecast_id, version) DO NOTHING"
)


def prediction_row(
    forecast_id: str, model: str, p: Prediction, recorded_at: float, orphan: int
) -> tuple[str, str, str, str, bytes, float, float, int, bytes | None, float | None, int]:
    """The `predictions` row of one prediction (`INSERT_PREDICTION`'s parameters)."""
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
        int(p.native and bounds is not None),
    )
