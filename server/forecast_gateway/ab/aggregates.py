"""Running aggregates: what scoring a forecast adds to (and takes from) a version's totals.

GetExperiment reads these totals, never the scored rows, so it costs
O(versions) whatever the store holds. Both backends keep one row per
(model, metric, version_a, version_b) with a count and the exact sums of
the values and of their squares (`scoring.ExactSums`), and apply
`MomentDelta`s to it (`n += weight`, `sum += weight * value`,
`squares += weight * value**2`, without rounding, so taking a value back out
leaves exactly the sums of the others). Rescoring a forecast removes its old
contributions and adds the new ones; pairs of versions that scored the
same forecast (a served forecast and its shadow) add to the paired MASE
difference. Latency goes into fixed log-spaced buckets, so percentiles are
read from counts to within `LATENCY_GROWTH`.

The calibrated bounds recorded with each prediction (`TRACKED`, scale
units) are scored too: per tracked coverage, sums of steps, hits, widths
and Winkler scores; per tracked quantile level, sums of steps, pinball
losses and actuals at or below it. Each scored prediction adds one value
to each row, so a row's sum is count x mean, and the report divides sums by
the summed steps (pooled over steps, not a mean of per-forecast rates).

These are totals: pruning a forecast (count or age bound) deletes its rows
and its chance to be scored, not what it already added (docs/experiments.md).
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from forecast_gateway.ab import scoring
from forecast_gateway.ab.records import LatencyStats, Role, VersionScore, version_key
from forecast_gateway.numerics import FloatArray, Levels

SCORED = "scored"
"""Metric whose count is the number of a version's scored forecasts (value: steps scored)."""
ERROR_METRICS = ("mae", "smape", "mase")
COMPARABLE_MASE = "mase_comparable"
"""MASE of forecasts the split drew at random among all its versions: the two-sample
comparison's groups. A pinned, default or fallback forecast, or one restricted to
the versions that could serve its request (a short history), reached its version
for reasons tied to the request: those groups would compare requests, not versions."""
UNIT_MASE = "mase_unit"
"""A sticky draw's comparable MASE, version_b its randomised unit (the routing key's
digest): a delta of this metric moves the unit's row (`unit_scores`), never `moments`;
`unit_means` turns it into moves of the unit's mean in KEYED_MASE."""
KEYED_MASE = "mase_keyed"
"""One value per routing key of a sticky split, the mean of its forecasts' comparable MASE:
the key, not the forecast, is what the hash randomised (docs/experiments.md)."""
MASE_DIFFERENCE = "mase_diff"
"""Metric of the paired differences mase(version_a) - mase(version_b), a before b."""
PAIRED_MASE_A = "mase_pair_a"
PAIRED_MASE_B = "mase_pair_b"
"""Each side's MASE over the same pairs: the figures the paired verdict quotes."""
MAX_SUMMED_VALUE = 1e150
"""Larger scores (actuals off by ~1e150, surely a typo) stay out of the running sums:
their squares would overflow, and one would swamp every mean it entered."""
NO_PAIR = ""
"""version_b of the rows that describe one version."""
LATENCY_BASE_MS = 0.01
"""Upper edge of bucket 0; bucket i > 0 holds (BASE * GROWTH**(i-1), BASE * GROWTH**i]."""
LATENCY_GROWTH = 1.02
LATENCY_QUANTILES = (0.50, 0.95, 0.99)
MAX_LATENCY_MS = 1e9
"""Latencies beyond (11 days) share the last bucket."""
TRACKED = Levels(coverages=(0.8, 0.95), quantiles=(0.1, 0.5, 0.9))
"""The levels every prediction's bounds are recorded at (`Calibration.tracked`), in
`conformal.bound_table` row order, and scored at when its actuals arrive."""
INTERVAL_STEPS = "interval_steps"
INTERVAL_HITS = "interval_hits"
INTERVAL_WIDTH = "interval_width"
INTERVAL_WINKLER = "interval_winkler"
INTERVAL_METRICS = (INTERVAL_STEPS, INTERVAL_HITS, INTERVAL_WIDTH, INTERVAL_WINKLER)
"""Per forecast and tracked coverage: steps scored, actuals inside, summed width, summed Winkler."""
QUANTILE_STEPS = "quantile_steps"
QUANTILE_PINBALL = "quantile_pinball"
QUANTILE_BELOW = "quantile_below"
QUANTILE_METRICS = (QUANTILE_STEPS, QUANTILE_PINBALL, QUANTILE_BELOW)
"""Per forecast and tracked level: steps scored, summed pinball loss, actuals at or below."""
LEVEL_SEPARATOR = "@"


@dataclass(frozen=True)
class MomentDelta:
    """One value added to (weight +1) or removed from (weight -1) an aggregate row."""

    model: str
    experiment: str
    metric: str
    version_a: str
    version_b: str
    value: float
    weight: int

    @property
    def key(self) -> tuple[str, str, str, str, str]:
        """The aggregate row: deltas are applied in this order, so writers lock rows alike."""
        return (self.model, self.experiment, self.metric, self.version_a, self.version_b)


@dataclass(frozen=True)
class StoredPrediction:
    """A prediction as the store holds it, with its current score (steps 0: none yet)."""

    version: str
    role: Role
    values: FloatArray
    score: scoring.Score
    bounds: FloatArray | None = None
    """The tracked bounds recorded with it (flattened rows x horizon), scale units."""
    scale: float = math.nan
    """The naive MAE of its own window; NaN: use the forecast's."""
    native: bool = False
    """`bounds` are the version's own quantiles (`records.Prediction.native`)."""

    def error_scale(self, forecast_scale: float) -> float:
        """The scale its errors are divided by: its own window's, else the forecast's."""
        return self.scale if math.isfinite(self.scale) else forecast_scale


UNSCORED = scoring.Score(steps=0, mae=math.nan, smape=math.nan, mase=math.nan)


def rescore(
    model: str,
    experiment: str,
    predictions: Sequence[StoredPrediction],
    actuals: FloatArray,
    scale: float,
    comparable: bool = True,
    *,
    before: FloatArray,
    unit: str = "",
) -> tuple[list[VersionScore], list[MomentDelta]]:
    """Score every prediction of a forecast on its actuals; the deltas to the totals.

    `unit`: the randomised unit of a sticky draw ("" for a random draw: the
    forecast itself), see `contributions`.

    `before`: the actuals its current scores were computed from (all NaN if
    none): a scored prediction's bound scores are taken back from those, as
    they are not stored. A prediction not scored yet takes nothing back.
    Scores: served first, then shadows in version order.
    """
    new: dict[str, scoring.Score] = {}
    scores: list[VersionScore] = []
    for p in predictions:
        steps = min(p.values.size, actuals.size)
        result = scoring.score(p.values[:steps], actuals[:steps], scale)
        new[p.version] = result
        scores.append(
            VersionScore(p.version, p.role, result.steps, result.mae, result.smape, result.mase)
        )
    old = {p.version: p.score for p in predictions}
    served = next((p.version for p in predictions if p.role is Role.SERVED), None)
    group = served if comparable else None
    unchanged = np.array_equal(before, actuals, equal_nan=True)
    bounds: list[MomentDelta] = []
    for p in predictions:
        if p.score.steps > 0:
            if unchanged:  # what it would take back, it would add again
                continue
            bounds += bound_contributions(model, experiment, p, before, scale, -1)
        bounds += bound_contributions(model, experiment, p, actuals, scale, +1)
    deltas = _net(
        contributions(model, experiment, old, -1, group, unit)
        + contributions(model, experiment, new, +1, group, unit)
        + bounds
    )
    scores.sort(key=lambda s: (s.role is not Role.SERVED, version_key(s.version)))
    return scores, deltas


def contributions(
    model: str,
    experiment: str,
    scores: Mapping[str, scoring.Score],
    weight: int,
    comparable: str | None = None,
    unit: str = "",
) -> list[MomentDelta]:
    """What one forecast's scores add to the totals (weight +1), or take away (-1).

    `comparable` is the served version when the split drew it at random (the
    two-sample comparison's groups take only those), else None. `unit`: the
    randomised unit of a sticky draw (a digest of its routing key): its
    comparable MASE goes to the unit's row (UNIT_MASE), whose mean is the one
    value the unit gives the comparison; "" (a random draw): to COMPARABLE_MASE.
    """
    scored = {v: s for v, s in scores.items() if s.steps > 0}
    row = (model, experiment)
    deltas: list[MomentDelta] = []
    for version, score in scored.items():
        deltas.append(MomentDelta(*row, SCORED, version, NO_PAIR, float(score.steps), weight))
        for metric, value in zip(ERROR_METRICS, (score.mae, score.smape, score.mase), strict=True):
            if usable(value):
                deltas.append(MomentDelta(*row, metric, version, NO_PAIR, value, weight))
    if comparable in scored and usable(scored[comparable].mase):
        mase = scored[comparable].mase
        if unit:
            deltas.append(MomentDelta(*row, UNIT_MASE, comparable, unit, mase, weight))
        else:
            deltas.append(MomentDelta(*row, COMPARABLE_MASE, comparable, NO_PAIR, mase, weight))
    defined = sorted((v for v, s in scored.items() if usable(s.mase)), key=version_key)
    for i, a in enumerate(defined):
        for b in defined[i + 1 :]:
            mase_a, mase_b = scored[a].mase, scored[b].mase
            for metric, value in (
                (MASE_DIFFERENCE, mase_a - mase_b),
                (PAIRED_MASE_A, mase_a),
                (PAIRED_MASE_B, mase_b),
            ):
                deltas.append(MomentDelta(*row, metric, a, b, value, weight))
    return deltas


def unit_means(
    units: Mapping[tuple[str, str, str, str, str], scoring.ExactSums],
    deltas: Sequence[MomentDelta],
) -> tuple[dict[tuple[str, str, str, str, str], scoring.ExactSums], list[MomentDelta]]:
    """Apply UNIT_MASE `deltas` to their units' sums; the units after, and the moves of KEYED_MASE.

    `units`: the sums of every unit the deltas name, before (a missing one is
    empty). A unit whose mean changes takes its old mean out of its version's
    KEYED_MASE row and adds the new one, so that row holds one value per unit
    with a score: its mean.
    """
    after = dict(units)
    for delta in deltas:
        after[delta.key] = after.get(delta.key, scoring.EXACT_ZERO).add(delta.value, delta.weight)
    moves: list[MomentDelta] = []
    for key in sorted({d.key for d in deltas}):
        model, experiment, _, version, _ = key
        for sums, weight in ((units.get(key, scoring.EXACT_ZERO), -1), (after[key], +1)):
            if sums.count > 0:
                mean = sums.moments.mean
                moves.append(
                    MomentDelta(model, experiment, KEYED_MASE, version, NO_PAIR, mean, weight)
                )
    return after, _net(moves)


@functools.cache
def level_metric(metric: str, level: float) -> str:
    """The aggregate row of one bound metric at one level, e.g. "interval_hits@0.8"."""
    return f"{metric}{LEVEL_SEPARATOR}{level:g}"


def parse_level_metric(name: str) -> tuple[str, float] | None:
    """(metric, level) of a `level_metric` name; None for any other metric."""
    metric, separator, level = name.partition(LEVEL_SEPARATOR)
    if not separator:
        return None
    try:
        return metric, float(level)
    except ValueError:
        return None


def bound_contributions(
    model: str,
    experiment: str,
    prediction: StoredPrediction,
    actuals: FloatArray,
    scale: float,
    weight: int,
    levels: Levels = TRACKED,
) -> list[MomentDelta]:
    """What one prediction's recorded bounds, scored on `actuals`, add to the totals (or take).

    In scale units, y = (actual - forecast) / scale per step with a finite
    actual and finite bounds. Nothing for a prediction without bounds, with
    bounds of another shape, or with no scale (0 or NaN: a constant window);
    nothing at a level whose sums would not be `usable`.
    """
    scale = prediction.error_scale(scale)
    covered = len(levels.coverages)
    rows = 2 * covered + len(levels.quantiles)
    horizon = prediction.values.size
    bounds = prediction.bounds
    if bounds is None or not (math.isfinite(scale) and scale > 0) or bounds.size != rows * horizon:
        return []
    steps = min(horizon, actuals.size)
    table = bounds.reshape(rows, horizon)[:, :steps]
    with np.errstate(over="ignore", invalid="ignore"):
        y = (actuals[:steps] - prediction.values[:steps]) / scale
        intervals = _interval_sums(
            y, table[0 : 2 * covered : 2], table[1 : 2 * covered : 2], levels
        )
        quantiles = _quantile_sums(y, table[2 * covered :], levels)
    row = (model, experiment)
    version = prediction.version
    deltas: list[MomentDelta] = []
    for metrics, level_sums in (
        (INTERVAL_METRICS, zip(levels.coverages, intervals, strict=True)),
        (QUANTILE_METRICS, zip(levels.quantiles, quantiles, strict=True)),
    ):
        for level, sums in level_sums:
            if sums[0] > 0 and all(usable(v) for v in sums):
                for metric, value in zip(metrics, sums, strict=True):
                    name = level_metric(metric, level)
                    deltas.append(MomentDelta(*row, name, version, NO_PAIR, value, weight))
    return deltas


def _interval_sums(
    y: FloatArray, lower: FloatArray, upper: FloatArray, levels: Levels
) -> list[list[float]]:
    """Per coverage (rows of lower/upper): steps, hits, width sum and Winkler sum.

    A step counts with a finite y and finite bounds. Winkler: the width plus
    (2 / alpha) times how far y fell outside, alpha = 1 - coverage.
    """
    scored = np.isfinite(y) & np.isfinite(lower) & np.isfinite(upper)
    width = np.where(scored, upper - lower, 0.0)
    outside = np.where(scored, np.maximum(lower - y, 0.0) + np.maximum(y - upper, 0.0), 0.0)
    penalty = 2.0 / (1.0 - np.asarray(levels.coverages))
    hits = scored & (lower <= y) & (y <= upper)
    sums = np.stack(
        [
            scored.sum(axis=1),
            hits.sum(axis=1),
            width.sum(axis=1),
            (width + penalty[:, np.newaxis] * outside).sum(axis=1),
        ],
        axis=1,
    )
    result: list[list[float]] = sums.astype(np.float64).tolist()
    return result


def _quantile_sums(y: FloatArray, q: FloatArray, levels: Levels) -> list[list[float]]:
    """Per level (rows of q): steps, pinball sum and the count of y <= q, where both are finite."""
    scored = np.isfinite(y) & np.isfinite(q)
    tau = np.asarray(levels.quantiles)[:, np.newaxis]
    diff = y - q
    pinball = np.where(scored, np.maximum(tau * diff, (tau - 1.0) * diff), 0.0)
    below = scored & (y <= q)
    sums = np.stack([scored.sum(axis=1), pinball.sum(axis=1), below.sum(axis=1)], axis=1)
    result: list[list[float]] = sums.astype(np.float64).tolist()
    return result


def usable(value: float) -> bool:
    """Finite and small enough that its square (in the running sums) stays finite."""
    return math.isfinite(value) and abs(value) <= MAX_SUMMED_VALUE


def _net(deltas: Iterable[MomentDelta]) -> list[MomentDelta]:
    """Drop removals that the same addition cancels (the values that did not change)."""
    weights: Counter[tuple[tuple[str, str, str, str, str], float]] = Counter()
    for delta in deltas:
        weights[(delta.key, delta.value)] += delta.weight
    netted = [
        MomentDelta(*key, value, 1 if weight > 0 else -1)
        for (key, value), weight in weights.items()
        for _ in range(abs(weight))
    ]
    return sorted(netted, key=lambda d: (d.key, d.weight, d.value))


def latency_bucket(latency_ms: float) -> int:
    """The bucket a latency is counted in."""
    if latency_ms <= LATENCY_BASE_MS:
        return 0
    if latency_ms >= MAX_LATENCY_MS:
        return _bucket_of(MAX_LATENCY_MS)
    return _bucket_of(latency_ms)


def _bucket_of(latency_ms: float) -> int:
    return max(1, math.ceil(math.log(latency_ms / LATENCY_BASE_MS) / math.log(LATENCY_GROWTH)))


def _bucket_value(bucket: int) -> float:
    """The latency a bucket stands for: its geometric middle (half the base for bucket 0)."""
    if bucket == 0:
        return LATENCY_BASE_MS / 2
    return float(LATENCY_BASE_MS * LATENCY_GROWTH ** (bucket - 0.5))


def latency_stats(buckets: Mapping[int, int]) -> LatencyStats:
    """Percentiles as numpy's default (linear between order statistics), from bucket counts."""
    ordered = sorted((b, n) for b, n in buckets.items() if n > 0)
    count = sum(n for _, n in ordered)
    if count == 0:
        return LatencyStats(count=0, p50_ms=math.nan, p95_ms=math.nan, p99_ms=math.nan)
    edges = np.cumsum([n for _, n in ordered])  # edges[i]: order statistics below bucket i+1

    def order_statistic(rank: int) -> float:
        return _bucket_value(ordered[int(np.searchsorted(edges, rank, side="right"))][0])

    percentiles = []
    for q in LATENCY_QUANTILES:
        position = q * (count - 1)
        below = int(position)
        low = order_statistic(below)
        high = order_statistic(min(below + 1, count - 1))
        percentiles.append(low + (position - below) * (high - low))
    return LatencyStats(count, *percentiles)


def latency_counts(
    latencies: Iterable[tuple[str, str, str, float]],
) -> list[tuple[str, str, str, int, int]]:
    """Rows (model, experiment, version, bucket, count) for (model, experiment, version, ms)."""
    counts = Counter((m, e, v, latency_bucket(ms)) for m, e, v, ms in latencies)
    return [(m, e, v, b, n) for (m, e, v, b), n in sorted(counts.items())]
