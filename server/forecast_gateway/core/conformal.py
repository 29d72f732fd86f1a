"""Split-conformal bounds from pools of signed, scale-free forecast errors.

A score is `(actual - forecast) / scale`, `scale` being the in-sample naive
MAE of the request's window (`numerics.naive_scale`), so one pool per (model,
version, horizon step) serves series of any level. With the n scores of a
pool sorted, s(1) <= ... <= s(n), and a new score exchangeable with them:

- the quantile at level tau is s(k), k = ceil((n + 1) tau): the actual falls
  at or below `forecast + scale * s(k)` with probability in
  [tau, tau + 1/(n + 1)];
- the interval of coverage c = 1 - alpha is [s(lo), s(hi)] with
  lo = floor((n + 1) alpha / 2) and hi = ceil((n + 1)(1 - alpha / 2)), each
  tail at most alpha / 2: coverage in [1 - alpha, 1 - alpha + 2/(n + 1)].

A bound whose rank falls outside 1..n does not exist yet (too few scores):
it is NaN, never a made-up number. Ranks grow with tau and c, so quantiles
are monotone in level and intervals nested, and lo <= hi always.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from forecast_gateway.numerics import FloatArray, Levels


def quantile_rank(n: int, level: float) -> int:
    """1-based rank of the level-`level` quantile among n sorted scores (> n: not calibrated)."""
    return max(1, math.ceil((n + 1) * level - 1e-9))


def interval_ranks(n: int, coverage: float) -> tuple[int, int]:
    """1-based ranks (low, high) of a `coverage` interval; it exists when 1 <= low, high <= n."""
    tail = (1.0 - coverage) / 2.0
    low = math.floor((n + 1) * tail + 1e-9)
    high = math.ceil((n + 1) * (1.0 - tail) - 1e-9)
    return low, high


def min_scores_for_interval(coverage: float) -> int:
    """The fewest scores a pool needs for an interval of `coverage` to exist."""
    n = 1
    while True:
        low, high = interval_ranks(n, coverage)
        if low >= 1 and high <= n:
            return n
        n += 1


def min_scores_for_quantile(level: float) -> int:
    """The fewest scores a pool needs for the quantile at `level` to exist."""
    n = 1
    while quantile_rank(n, level) > n:
        n += 1
    return n


def bound_table(pools: Sequence[FloatArray], levels: Levels) -> FloatArray:
    """Scaled bounds per level and step; NaN where a pool has too few scores.

    Rows: lower(c) and upper(c) for each coverage, then each quantile; one
    column per pool (horizon step). `pools` are sorted ascending.
    """
    rows = 2 * len(levels.coverages) + len(levels.quantiles)
    table = np.full((rows, len(pools)), np.nan)
    for step, pool in enumerate(pools):
        n = pool.size
        row = 0
        for coverage in levels.coverages:
            low, high = interval_ranks(n, coverage)
            if low >= 1 and high <= n:
                table[row, step] = pool[low - 1]
                table[row + 1, step] = pool[high - 1]
            row += 2
        for level in levels.quantiles:
            k = quantile_rank(n, level)
            if k <= n:
                table[row, step] = pool[k - 1]
            row += 1
    return table


def sorted_pool(scores: npt.ArrayLike) -> FloatArray:
    """A pool ready for `bound_table`: the finite scores, sorted."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    return np.sort(values[np.isfinite(values)])
