"""Assembles GetExperiment's report from a model's running aggregates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from forecast_gateway.ab import scoring
from forecast_gateway.ab.aggregates import (
    MASE_DIFFERENCE,
    NO_PAIR,
    SCORED,
    latency_stats,
)
from forecast_gateway.ab.records import (
    NO_ERRORS,
    ErrorStats,
    ExperimentReport,
    VersionComparison,
    VersionSummary,
    version_key,
)

METRIC = "mase"


@dataclass
class ModelAggregates:
    """Everything a storage backend keeps for one model, as read in one go.

    `counters`: version -> (served, shadowed) requests; `moments`: (metric,
    version_a, version_b) -> moments of that metric; `latency`: version ->
    bucket -> count.
    """

    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    moments: dict[tuple[str, str, str], scoring.Moments] = field(default_factory=dict)
    latency: dict[str, dict[int, int]] = field(default_factory=dict)

    def of(self, metric: str, version_a: str, version_b: str = NO_PAIR) -> scoring.Moments:
        """The moments of one aggregate row (EMPTY when nothing was added)."""
        return self.moments.get((metric, version_a, version_b), scoring.EMPTY)


def summarize(model: str, aggregates: ModelAggregates) -> ExperimentReport:
    """Per-version summaries and pairwise MASE comparisons.

    Two versions are compared with the paired t-test when at least
    `scoring.MIN_SAMPLES` forecasts have a defined MASE for both (a served
    forecast and a shadow of the same request); else Welch's test over each
    version's MASE values.
    """
    scored = {a for (metric, a, _) in aggregates.moments if metric == SCORED}
    versions = sorted(set(aggregates.counters) | set(aggregates.latency) | scored, key=version_key)
    summaries = [_summary(version, aggregates) for version in versions]
    comparisons = [
        _comparison(a, b, aggregates)
        for i, a in enumerate(versions)
        for b in versions[i + 1 :]
        if aggregates.of(METRIC, a).count and aggregates.of(METRIC, b).count
    ]
    return ExperimentReport(model=model, versions=summaries, comparisons=comparisons)


def _summary(version: str, aggregates: ModelAggregates) -> VersionSummary:
    served, shadowed = aggregates.counters.get(version, (0, 0))
    count = aggregates.of(SCORED, version).count
    errors = (
        ErrorStats(
            count,
            *(_mean(aggregates.of(metric, version)) for metric in ("mae", "smape", "mase")),
        )
        if count
        else NO_ERRORS
    )
    return VersionSummary(
        version=version,
        requests_served=served,
        requests_shadowed=shadowed,
        actuals_received=count,
        errors=errors,
        latency=latency_stats(aggregates.latency.get(version, {})),
    )


def _mean(moments: scoring.Moments) -> float:
    return moments.mean if moments.count else math.nan


def _comparison(a: str, b: str, aggregates: ModelAggregates) -> VersionComparison:
    paired = aggregates.of(MASE_DIFFERENCE, a, b)
    if paired.count >= scoring.MIN_SAMPLES:
        result = scoring.compare_paired(paired)
    else:
        result = scoring.compare_welch(aggregates.of(METRIC, a), aggregates.of(METRIC, b))
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
