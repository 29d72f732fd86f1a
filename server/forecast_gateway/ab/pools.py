"""Calibration pools: each reported step's scaled error, appended to its (model, version, step).

Pools belong to the real (model, version): an arm of another model in an
experiment ("seasonal_naive:1" in lstm_timeseries's) adds to the pools of
(seasonal_naive, 1), the ones its forecasts are calibrated from.

A pool row holds the most recent `window` scores and a revision that grows
with every change, so `calibration_pools` reads only the versions whose
pools moved since the revisions a caller knows.

A prediction whose recorded bounds are the model's own quantiles
(`StoredPrediction.native`) also adds, per tracked coverage c, the CQR
conformity score of each newly reported step (Romano, Patterson & Candes
2019) to the pool of (model, version, step, c) in `cqr_pools`:
E = max(lo - y, y - hi) / scale, lo and hi its recorded bounds of c. The
bounds are stored scale-free around the forecast, b = (bound - forecast) /
scale, so with r = (y - forecast) / scale, E = max(b_lo - r, r - b_hi).
Those pools are kept and revised like the others, locked after them (by
key), and read with them: `CalibrationPools.cqr`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from forecast_gateway.ab import aggregates
from forecast_gateway.ab.records import arm_of
from forecast_gateway.ab.rows import Table, array, lock_rows
from forecast_gateway.ab.schema import Transaction
from forecast_gateway.numerics import FloatArray, Levels


@dataclass(frozen=True)
class CalibrationPools:
    """One version's calibration scores per horizon step (0-based), oldest first.

    `revision` grows whenever a pool of the version changes (any replica).
    """

    revision: int
    steps: dict[int, FloatArray]
    cqr: dict[tuple[float, int], FloatArray] = field(default_factory=dict)
    """CQR conformity scores per (tracked coverage, step), oldest first; `revision` counts them."""


Scores = dict[tuple[str, str, int], list[float]]
"""New calibration scores per (model, version, step)."""
CqrScores = dict[tuple[str, str, int, float], list[float]]
"""New CQR scores per (model, version, step, coverage)."""

POOLS = Table("calibration_pools", ("model", "version", "step"), ("scores", "revision"), (b"", 0))
CQR_POOLS = Table(
    "cqr_pools", ("model", "version", "step", "coverage"), ("scores", "revision"), (b"", 0)
)


def add_scores(
    pools: Scores,
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
            pools.setdefault((*arm_of(model, prediction.version), step), []).append(error)


def add_cqr_scores(
    pools: CqrScores,
    model: str,
    prediction: aggregates.StoredPrediction,
    before: FloatArray,
    after: FloatArray,
    scale: float,
    levels: Levels = aggregates.TRACKED,
) -> None:
    """The CQR scores of the steps that got their first actual, per tracked coverage.

    Only a prediction whose bounds are the model's own quantiles (`native`)
    with bounds of the tracked shape and a scale; a correction adds none.
    """
    scale = prediction.error_scale(scale)
    horizon = prediction.values.size
    bounds = prediction.bounds
    rows = 2 * len(levels.coverages) + len(levels.quantiles)
    if (
        not prediction.native
        or bounds is None
        or bounds.size != rows * horizon
        or not (scale > 0 and np.isfinite(scale))
    ):
        return
    steps = min(horizon, after.size)
    new = np.flatnonzero(np.isfinite(after[:steps]) & ~np.isfinite(before[:steps]))
    if new.size == 0:
        return
    table = bounds.reshape(rows, horizon)[:, new]
    owner, version = arm_of(model, prediction.version)
    with np.errstate(over="ignore", invalid="ignore"):
        r = (after[new] - prediction.values[new]) / scale
        for i, coverage in enumerate(levels.coverages):
            conformity = np.maximum(table[2 * i] - r, r - table[2 * i + 1])
            for step, score in zip(new.tolist(), conformity.tolist(), strict=True):
                if aggregates.usable(score):
                    pools.setdefault((owner, version, step, coverage), []).append(score)


async def append_calibration(
    tx: Transaction,
    window: int,
    scores: Scores,
    cqr: CqrScores | None = None,
) -> None:
    """Append scores to their pools, keeping the newest `window`; pools locked in key order.

    `cqr`: CQR scores per (model, version, step, coverage), appended after
    (their rows locked after the calibration pools').
    """
    await _append(tx, POOLS, window, scores)
    if cqr:
        await _append(tx, CQR_POOLS, window, cqr)


async def _append(
    tx: Transaction, table: Table, window: int, scores: Mapping[tuple[Any, ...], list[float]]
) -> None:
    keys = sorted(scores)
    if not keys:
        return
    current = await lock_rows(tx, table, keys)
    rows = []
    for key in keys:
        blob, revision = current[key]
        pool = np.concatenate([array(blob), scores[key]])[-window:]
        rows.append((pool.astype("<f8").tobytes(), int(revision) + 1, *key))
    where = " AND ".join(f"{column} = %s" for column in table.keys)
    await tx.executemany(
        f"UPDATE {table.name} SET scores = %s, revision = %s WHERE {where}",
        rows,
    )


async def calibration_pools(
    tx: Transaction, known: dict[tuple[str, str], int]
) -> dict[tuple[str, str], CalibrationPools]:
    """The pools of every (model, version) whose summed revision is not the `known` one.

    The revision sums both tables' rows of the version: it grows with any change.
    """
    summed: dict[tuple[str, str], int] = {}
    for table in (POOLS, CQR_POOLS):
        for model, version, revision in await tx.fetchall(
            f"SELECT model, version, SUM(revision) FROM {table.name} GROUP BY model, version"
        ):
            key = (str(model), str(version))
            summed[key] = summed.get(key, 0) + int(revision)
    pools: dict[tuple[str, str], CalibrationPools] = {}
    for model, version in sorted(k for k, revision in summed.items() if known.get(k) != revision):
        rows = await tx.fetchall(
            "SELECT step, revision, scores FROM calibration_pools "
            "WHERE model = %s AND version = %s",
            (model, version),
        )
        cqr_rows = await tx.fetchall(
            "SELECT coverage, step, revision, scores FROM cqr_pools "
            "WHERE model = %s AND version = %s",
            (model, version),
        )
        pools[(model, version)] = CalibrationPools(
            revision=sum(int(revision) for _, revision, _ in rows)
            + sum(int(revision) for _, _, revision, _ in cqr_rows),
            steps={int(step): array(blob) for step, _, blob in rows},
            cqr={(float(coverage), int(step)): array(blob) for coverage, step, _, blob in cqr_rows},
        )
    return pools
