"""Intervals and quantiles from a quantile model's own outputs (its declared levels).

A requested level between two declared ones is interpolated linearly per
step; levels outside the declared range are refused before inference
(`eligibility`). Crossing quantiles are sorted first (rearrangement:
Chernozhukov, Fernandez-Val & Galichon 2010), which can only bring each
quantile closer to the true one. These bounds are the model's own, not
conformalized: the status says so (CQR from reported actuals is not built
yet; docs/model-contract.md).
"""

from __future__ import annotations

import numpy as np

from forecast_gateway.core.calibration import Interval, Quantile, Status, Uncertainty
from forecast_gateway.numerics import FloatArray, Levels, within

METHOD = "model quantiles (the version's own outputs, interpolated between declared levels)"
DETAIL = (
    "the version's own quantiles: not conformalized with its errors (the gateway does not "
    "conformalize quantile models yet)"
)


def quantile_rows(declared: tuple[float, ...], quantiles: FloatArray, levels: Levels) -> FloatArray:
    """Bounds in `conformal.bound_table` order: each coverage's lower and upper, then each level.

    `quantiles` is [steps, declared levels], in the series' units.
    """
    ordered = np.sort(np.asarray(quantiles, dtype=np.float64), axis=1).T  # [levels, steps]
    wanted = np.asarray(levels.bound_levels(), dtype=np.float64)
    grid = np.asarray(declared, dtype=np.float64)
    if grid.shape[0] == 1:
        return np.repeat(ordered, wanted.shape[0], axis=0)
    upper = np.clip(np.searchsorted(grid, wanted), 1, grid.shape[0] - 1)
    lower = upper - 1
    weight = np.clip((wanted - grid[lower]) / (grid[upper] - grid[lower]), 0.0, 1.0)[:, None]
    rows: FloatArray = (1 - weight) * ordered[lower] + weight * ordered[upper]
    return rows


def native_uncertainty(
    declared: tuple[float, ...], quantiles: FloatArray, levels: Levels
) -> Uncertainty:
    """The requested intervals and quantiles, from the model's quantiles."""
    rows = quantile_rows(declared, quantiles, levels)
    offset = 2 * len(levels.coverages)
    intervals = tuple(
        Interval(coverage, rows[2 * i], rows[2 * i + 1])
        for i, coverage in enumerate(levels.coverages)
    )
    quantile_values = tuple(
        Quantile(level, rows[offset + i]) for i, level in enumerate(levels.quantiles)
    )
    return Uncertainty(Status.NOT_CALIBRATED, intervals, quantile_values, (), DETAIL, METHOD)


def tracked_table(
    declared: tuple[float, ...],
    quantiles: FloatArray,
    values: FloatArray,
    scale: float,
    tracked: Levels,
) -> FloatArray | None:
    """The bounds at the tracked levels in scale units around `values`, as the store records them.

    None when the window has no scale or a tracked level is outside the declared ones.
    """
    if (
        not scale > 0
        or not np.isfinite(scale)
        or not all(within(declared, level) for level in tracked.bound_levels())
    ):
        return None
    table: FloatArray = (quantile_rows(declared, quantiles, tracked) - values) / scale
    return table
