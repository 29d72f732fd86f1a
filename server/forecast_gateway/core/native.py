"""Intervals and quantiles from a quantile model's own outputs, conformalized where they can be.

A requested level between two declared ones is interpolated linearly per
step; levels outside the declared range are refused before inference
(`eligibility`). Crossing quantiles are sorted first (rearrangement:
Chernozhukov, Fernandez-Val & Galichon 2010), which can only bring each
quantile closer to the true one.

At the tracked coverages (`ab.TRACKED`: 80% and 95%) the interval becomes
conformalized quantile regression (CQR: Romano, Patterson & Candes 2019;
`core.cqr`) once the version's reported actuals give every step of the
horizon enough conformity scores: [lo - scale * Q, hi + scale * Q],
coverage >= c under exchangeability, status CALIBRATED. Any other coverage
and every quantile level stay the model's own, and the status of a request
that asks for one is NOT_CALIBRATED, the detail saying which is which (the
weakest of its parts: `Uncertainty` has one status).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np

from forecast_gateway.core.calibration import Interval, Quantile, Status, Uncertainty
from forecast_gateway.core.cqr import CqrTable, conformalize, min_scores, nest
from forecast_gateway.numerics import FloatArray, Levels, within

METHOD = "model quantiles (the version's own outputs, interpolated between declared levels)"
CQR_METHOD = (
    "CQR: conformalized quantile regression of the version's quantiles with its own "
    "scaled errors ({scores} scores per step)"
)
DETAIL = "the version's own quantiles: not conformalized with its errors (no CQR pools)"


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
    declared: tuple[float, ...],
    quantiles: FloatArray,
    levels: Levels,
    scale: float = math.nan,
    offsets: CqrTable | None = None,
) -> Uncertainty:
    """The requested intervals and quantiles from the model's quantiles, CQR where it exists.

    `scale`: the naive MAE of the window the version read; `offsets`: the
    version's CQR offsets for this horizon (None: no CQR at all, `DETAIL`).
    """
    rows = quantile_rows(declared, quantiles, levels)
    offset = 2 * len(levels.coverages)
    quantile_values = tuple(
        Quantile(level, rows[offset + i]) for i, level in enumerate(levels.quantiles)
    )
    if offsets is None:
        intervals = tuple(
            Interval(coverage, rows[2 * i], rows[2 * i + 1])
            for i, coverage in enumerate(levels.coverages)
        )
        return Uncertainty(Status.NOT_CALIBRATED, intervals, quantile_values, (), DETAIL, METHOD)
    bands = _conformalized(declared, quantiles, scale, offsets)
    built: list[Interval] = []
    done: list[float] = []
    used: list[int] = []
    reasons: list[str] = []
    for i, coverage in enumerate(levels.coverages):
        row = offsets.row(coverage)
        if row is not None and row in bands:
            built.append(Interval(coverage, *bands[row]))
            done.append(coverage)
            used.append(row)
        else:
            built.append(Interval(coverage, rows[2 * i], rows[2 * i + 1]))
            reasons.append(_why_not(coverage, row, scale, offsets))
    if levels.quantiles:
        reasons.append(f"the quantiles are the version's own ({_kept(offsets)})")
    intervals = tuple(built)
    if not done:
        detail = "the version's own quantiles, not conformalized: " + "; ".join(reasons)
        scores = _scores(offsets, range(len(offsets.coverages)))
        return Uncertainty(
            Status.NOT_CALIBRATED, intervals, quantile_values, scores, detail, METHOD
        )
    scores = _scores(offsets, used)
    method = CQR_METHOD.format(scores=min(scores, default=0))
    if not reasons:
        return Uncertainty(Status.CALIBRATED, intervals, quantile_values, scores, "", method)
    named = " and ".join(f"{coverage:g}" for coverage in done)
    detail = f"CQR for the {named} interval; not conformalized: " + "; ".join(reasons)
    return Uncertainty(Status.NOT_CALIBRATED, intervals, quantile_values, scores, detail, method)


def _kept(offsets: CqrTable) -> str:
    """Where CQR applies, in words: "CQR is kept for the tracked coverages 80% and 95%"."""
    tracked = " and ".join(f"{coverage:.0%}" for coverage in offsets.coverages)
    return f"CQR is kept for the tracked coverages {tracked}"


def _why_not(coverage: float, row: int | None, scale: float, offsets: CqrTable) -> str:
    """Why the `coverage` interval is the model's own."""
    if row is None:
        return f"the {coverage:g} interval is the version's own ({_kept(offsets)})"
    if not (scale > 0 and math.isfinite(scale)):
        return f"the window has no scale to conformalize the {coverage:g} interval in"
    sizes = offsets.scores[row]
    fewest = min(range(len(sizes)), key=lambda step: sizes[step]) if sizes else 0
    return (
        f"CQR of the {coverage:g} interval needs {min_scores(coverage)} scores per horizon "
        f"step, step {fewest + 1} has {sizes[fewest] if sizes else 0} (reported actuals add them)"
    )


def _scores(offsets: CqrTable, rows: Iterable[int]) -> tuple[int, ...]:
    """Per step, the fewest scores among the CQR pools of `rows`."""
    chosen = [offsets.scores[i] for i in rows]
    return tuple(min(column) for column in zip(*chosen, strict=True)) if chosen else ()


def _conformalized(
    declared: tuple[float, ...], quantiles: FloatArray, scale: float, offsets: CqrTable | None
) -> dict[int, tuple[FloatArray, FloatArray]]:
    """The CQR band of each tracked coverage whose offsets exist at every step, nested."""
    if offsets is None or not (scale > 0 and math.isfinite(scale)) or offsets.offsets.size == 0:
        return {}
    ready = [
        i
        for i in sorted(range(len(offsets.coverages)), key=lambda i: offsets.coverages[i])
        if np.isfinite(offsets.offsets[i]).all()
        and all(within(declared, level) for level in Levels((offsets.coverages[i],)).bound_levels())
    ]
    if not ready:
        return {}
    raw = quantile_rows(declared, quantiles, Levels(tuple(offsets.coverages[i] for i in ready)))
    bands = [
        conformalize(raw[2 * j], raw[2 * j + 1], offsets.offsets[i], scale)
        for j, i in enumerate(ready)
    ]
    return dict(zip(ready, nest(bands), strict=True))


def tracked_table(
    declared: tuple[float, ...],
    quantiles: FloatArray,
    values: FloatArray,
    scale: float,
    tracked: Levels,
) -> FloatArray | None:
    """The bounds at the tracked levels in scale units around `values`, as the store records them.

    These are the model's own quantiles, never the CQR ones: the store's CQR
    scores are measured against them. None when the window has no scale or a
    tracked level is outside the declared ones.
    """
    if (
        not scale > 0
        or not np.isfinite(scale)
        or not all(within(declared, level) for level in tracked.bound_levels())
    ):
        return None
    table: FloatArray = (quantile_rows(declared, quantiles, tracked) - values) / scale
    return table
