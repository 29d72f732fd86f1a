"""Running aggregates: what scoring a forecast adds to (and takes from) a version's totals.

GetExperiment reads these totals, never the scored rows, so it costs
O(versions) whatever the store holds. Both backends keep one row per
(model, metric, version_a, version_b) with a count and shifted sums, and
apply `MomentDelta`s with one upsert each (`n += weight`,
`s1 += weight * (value - shift)`, `s2 += weight * (value - shift)**2`, the
shift being the row's first value). Rescoring a forecast removes its old
contributions and adds the new ones; pairs of versions that scored the
same forecast (a served forecast and its shadow) add to the paired MASE
difference. Latency goes into fixed log-spaced buckets, so percentiles are
read from counts to within `LATENCY_GROWTH`.

These are totals: pruning a forecast (count or age bound) deletes its rows
and its chance to be scored, not what it already added (docs/experiments.md).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from forecast_gateway.ab import scoring
from forecast_gateway.ab.records import LatencyStats, Role, VersionScore, version_key
from forecast_gateway.normalization import FloatArray

SCORED = "scored"
"""Metric whose count is the number of a version's scored forecasts (value: steps scored)."""
ERROR_METRICS = ("mae", "smape", "mase")
COMPARABLE_MASE = "mase_comparable"
"""MASE of forecasts the split drew at random among all its versions: the two-sample
comparison's groups. A pinned, default or fallback forecast, or one restricted to
the versions that could serve its request (a short history), reached its version
for reasons tied to the request: those groups would compare requests, not versions."""
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


UNSCORED = scoring.Score(steps=0, mae=math.nan, smape=math.nan, mase=math.nan)


def rescore(
    model: str,
    experiment: str,
    predictions: Sequence[StoredPrediction],
    actuals: FloatArray,
    scale: float,
    comparable: bool = True,
) -> tuple[list[VersionScore], list[MomentDelta]]:
    """Score every prediction of a forecast on its actuals; the deltas to the totals.

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
    deltas = _net(
        contributions(model, experiment, old, -1, group)
        + contributions(model, experiment, new, +1, group)
    )
    scores.sort(key=lambda s: (s.role is not Role.SERVED, version_key(s.version)))
    return scores, deltas


def contributions(
    model: str,
    experiment: str,
    scores: Mapping[str, scoring.Score],
    weight: int,
    comparable: str | None = None,
) -> list[MomentDelta]:
    """What one forecast's scores add to the totals (weight +1), or take away (-1).

    `comparable` is the served version when the split drew it at random (the
    two-sample comparison's groups take only those), else None.
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


def usable(value: float) -> bool:
    """Finite and small enough that its square (in the running sums) stays finite."""
    return math.isfinite(value) and abs(value) <= MAX_SUMMED_VALUE


def _net(deltas: Iterable[MomentDelta]) -> list[MomentDelta]:
    """Drop removals that the same addition cancels (the versions whose score is unchanged)."""
    counts: Counter[MomentDelta] = Counter()
    for delta in deltas:
        opposite = MomentDelta(*delta.key, delta.value, -delta.weight)
        if counts[opposite] > 0:
            counts[opposite] -= 1
        else:
            counts[delta] += 1
    return sorted(counts.elements(), key=lambda d: (d.key, d.weight, d.value))


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
