"""Conformalized quantile regression (CQR) of a quantile model's intervals.

Romano, Patterson & Candes (2019), "Conformalized Quantile Regression",
NeurIPS 32. A quantile model's central interval of coverage c, [lo, hi]
(its own quantiles at (1 -+ c) / 2), is corrected with its own reported
errors: each reported step adds the conformity score

    E = max(lo - y, y - hi) / scale

to the pool of (model, version, step, c) (`ab.pools.add_cqr_scores`; the
scale is the naive MAE of the window the version read, so one pool serves
series of any level). E is negative inside the band, positive outside. With
the n scores of a pool sorted, E(1) <= ... <= E(n), and a new score
exchangeable with them, Q = E(k), k = ceil((n + 1) c), gives

    P(y in [lo - scale * Q, hi + scale * Q]) >= c

(exists when k <= n: 4 scores for 80%, 19 for 95%; else NaN, not yet
calibrated). Q > 0 widens a band that covers too little, Q < 0 narrows one
that covers too much.

Where a negative Q would make the bounds cross (hi - lo < -2 scale Q), the
CQR set {y : E(y) <= Q} is empty; the gateway returns the single point
halfway between lo and hi instead, a superset of it, so the guarantee holds
and lower <= upper by construction. Each tracked coverage has its own pool,
so nothing makes the 95% band contain the 80% one; `nest` widens each band
to contain the narrower coverages' (a superset again: coverage is kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forecast_gateway.core import conformal
from forecast_gateway.numerics import FloatArray


@dataclass(frozen=True)
class CqrTable:
    """A version's CQR offsets for one horizon: Q per tracked coverage and step.

    `offsets` is [coverages, horizon] in scale units, NaN where a pool has
    too few scores; `scores` the pool size behind each (coverage, step).
    """

    coverages: tuple[float, ...]
    offsets: FloatArray
    scores: tuple[tuple[int, ...], ...]

    def row(self, coverage: float) -> int | None:
        """The row of a tracked `coverage` (None: not tracked)."""
        for i, tracked in enumerate(self.coverages):
            if abs(tracked - coverage) < 1e-9:
                return i
        return None


def offset(pool: FloatArray, coverage: float) -> float:
    """Q of a sorted pool: its ceil((n + 1) c)-th smallest score; NaN when that rank exceeds n."""
    k = conformal.quantile_rank(pool.size, coverage)
    return float(pool[k - 1]) if k <= pool.size else math.nan


def min_scores(coverage: float) -> int:
    """The fewest scores a pool needs for the `coverage` offset to exist."""
    return conformal.min_scores_for_quantile(coverage)


def offset_table(coverages: tuple[float, ...], pools: Sequence[Sequence[FloatArray]]) -> CqrTable:
    """The offsets of sorted `pools` ([coverage][step])."""
    horizon = len(pools[0]) if pools else 0
    offsets = np.full((len(coverages), horizon), np.nan)
    for i, coverage in enumerate(coverages):
        for step, pool in enumerate(pools[i]):
            offsets[i, step] = offset(pool, coverage)
    offsets.flags.writeable = False
    sizes = tuple(tuple(pool.size for pool in steps) for steps in pools)
    return CqrTable(coverages, offsets, sizes)


def conformalize(
    lower: FloatArray, upper: FloatArray, q: FloatArray | float, scale: float
) -> tuple[FloatArray, FloatArray]:
    """[lower - scale * q, upper + scale * q]; a step whose bounds would cross, the midpoint."""
    low = lower - scale * q
    high = upper + scale * q
    crossed = low > high
    if crossed.any():
        middle = (lower + upper) / 2
        low = np.where(crossed, middle, low)
        high = np.where(crossed, middle, high)
    return low, high


def nest(
    bands: Sequence[tuple[FloatArray, FloatArray]],
) -> list[tuple[FloatArray, FloatArray]]:
    """Bands in increasing coverage, each widened to contain the ones before it."""
    nested: list[tuple[FloatArray, FloatArray]] = []
    for low, high in bands:
        if nested:
            low, high = np.minimum(low, nested[-1][0]), np.maximum(high, nested[-1][1])
        nested.append((low, high))
    return nested


def scores(lower: FloatArray, upper: FloatArray, actual: FloatArray, scale: float) -> FloatArray:
    """The conformity scores max(lower - y, y - upper) / scale of actuals y (series units)."""
    result: FloatArray = np.maximum(lower - actual, actual - upper) / scale
    return result
