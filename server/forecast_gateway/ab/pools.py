"""Calibration pools: each reported step's scaled error, appended to its (model, version, step).

A pool row holds the most recent `window` scores and a revision that grows
with every change, so `calibration_pools` reads only the versions whose
pools moved since the revisions a caller knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecast_gateway.ab import aggregates
from forecast_gateway.ab.rows import Table, array, lock_rows
from forecast_gateway.ab.schema import Transaction
from forecast_gateway.numerics import FloatArray


@dataclass(frozen=True)
class CalibrationPools:
    """One version's calibration scores per horizon step (0-based), oldest first.

    `revision` grows whenever a pool of the version changes (any replica).
    """

    revision: int
    steps: dict[int, FloatArray]


POOLS = Table("calibration_pools", ("model", "version", "step"), ("scores", "revision"), (b"", 0))


def add_scores(
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


async def append_calibration(
    tx: Transaction, window: int, scores: dict[tuple[str, str, int], list[float]]
) -> None:
    """Append scores to their pools, keeping the newest `window`; pools locked in key order."""
    keys = sorted(scores)
    current = await lock_rows(tx, POOLS, keys)
    rows = []
    for key in keys:
        blob, revision = current[key]
        pool = np.concatenate([array(blob), scores[key]])[-window:]
        rows.append((pool.astype("<f8").tobytes(), int(revision) + 1, *key))
    await tx.executemany(
        "UPDATE calibration_pools SET scores = %s, revision = %s "
        "WHERE model = %s AND version = %s AND step = %s",
        rows,
    )


async def calibration_pools(
    tx: Transaction, known: dict[tuple[str, str], int]
) -> dict[tuple[str, str], CalibrationPools]:
    """The pools of every (model, version) whose summed revision is not the `known` one."""
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
            steps={int(step): array(blob) for step, _, blob in rows},
        )
    return pools
