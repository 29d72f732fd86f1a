"""Assembles GetExperiment's report from a model's running aggregates."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from forecast_gateway import metrics
from forecast_gateway.ab import scoring, sequential
from forecast_gateway.ab.aggregates import (
    COMPARABLE_MASE,
    INTERVAL_HITS,
    INTERVAL_STEPS,
    INTERVAL_WIDTH,
    INTERVAL_WINKLER,
    KEYED_MASE,
    MASE_DIFFERENCE,
    NO_PAIR,
    PAIRED_MASE_A,
    PAIRED_MASE_B,
    QUANTILE_BELOW,
    QUANTILE_PINBALL,
    QUANTILE_STEPS,
    SCORED,
    latency_stats,
    level_metric,
    parse_level_metric,
)
from forecast_gateway.ab.records import (
    NO_ERRORS,
    ErrorStats,
    ExperimentInfo,
    ExperimentReport,
    IntervalStats,
    QuantileStats,
    VersionComparison,
    VersionSummary,
    arm_of,
    arm_parts,
    version_key,
)

METRIC = "mase"
WILSON_Z = 1.959963984540054
"""The standard normal quantile at 0.975: Wilson's 95% score interval."""


@dataclass
class ModelAggregates:
    """Everything a storage backend keeps for one experiment of a model, read in one go.

    `counters`: version -> (served, shadowed) requests; `moments`: (metric,
    version_a, version_b) -> moments of that metric; `latency`: version ->
    bucket -> count.
    """

    counters: dict[str, tuple[int, int]] = field(default_factory=dict)
    moments: dict[tuple[str, str, str], scoring.Moments] = field(default_factory=dict)
    latency: dict[str, dict[int, int]] = field(default_factory=dict)
    info: ExperimentInfo | None = None

    def of(self, metric: str, version_a: str, version_b: str = NO_PAIR) -> scoring.Moments:
        """The moments of one aggregate row (EMPTY when nothing was added)."""
        return self.moments.get((metric, version_a, version_b), scoring.EMPTY)


def summarize(model: str, experiment: str, aggregates: ModelAggregates) -> ExperimentReport:
    """Per-version summaries and pairwise MASE comparisons.

    Two versions are compared with the paired t-test when at least
    `scoring.MIN_SAMPLES` forecasts have a defined MASE for both (a served
    forecast and a shadow of the same request); else Welch's test over each
    version's MASE values.
    """
    scored = {a for (metric, a, _) in aggregates.moments if metric == SCORED}
    versions = sorted(set(aggregates.counters) | set(aggregates.latency) | scored, key=version_key)
    summaries = [_summary(model, version, aggregates) for version in versions]
    comparisons = [
        _comparison(model, a, b, aggregates)
        for i, a in enumerate(versions)
        for b in versions[i + 1 :]
        if aggregates.of(METRIC, a).count and aggregates.of(METRIC, b).count
    ]
    info = aggregates.info
    return ExperimentReport(
        model=model,
        versions=summaries,
        comparisons=comparisons,
        experiment=experiment,
        started_at=info.started_at if info else None,
        forecasts=info.forecasts if info else 0,
    )


def _summary(model: str, version: str, aggregates: ModelAggregates) -> VersionSummary:
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
        intervals=interval_stats(version, aggregates),
        quantiles=quantile_stats(version, aggregates),
        model=arm_of(model, version)[0],
    )


def _mean(moments: scoring.Moments) -> float:
    return moments.mean if moments.count else math.nan


def _sum(moments: scoring.Moments) -> float:
    """The sum of the values a row holds (0 when empty)."""
    return moments.count * moments.mean if moments.count else 0.0


def _levels(aggregates: ModelAggregates, metric: str, version: str) -> list[float]:
    """The levels at which `version` has a row of `metric`, increasing."""
    levels = set()
    for name, a, b in aggregates.moments:
        parsed = parse_level_metric(name)
        if a == version and b == NO_PAIR and parsed is not None and parsed[0] == metric:
            levels.add(parsed[1])
    return sorted(levels)


def interval_stats(version: str, aggregates: ModelAggregates) -> tuple[IntervalStats, ...]:
    """Coverage, its Wilson interval, width and Winkler per nominal coverage with scored steps."""
    stats = []
    for nominal in _levels(aggregates, INTERVAL_STEPS, version):
        sums = [
            _sum(aggregates.of(level_metric(metric, nominal), version))
            for metric in (INTERVAL_STEPS, INTERVAL_HITS, INTERVAL_WIDTH, INTERVAL_WINKLER)
        ]
        steps, hits = round(sums[0]), round(sums[1])
        if steps <= 0:
            continue
        low, high = wilson(hits, steps)
        stats.append(
            IntervalStats(
                nominal=nominal,
                steps=steps,
                coverage=hits / steps,
                coverage_low=low,
                coverage_high=high,
                mean_width=sums[2] / steps,
                winkler=sums[3] / steps,
                undercovering=high < nominal,
            )
        )
    return tuple(stats)


def quantile_stats(version: str, aggregates: ModelAggregates) -> tuple[QuantileStats, ...]:
    """Mean pinball loss and the fraction at or below, per quantile level with scored steps."""
    stats = []
    for level in _levels(aggregates, QUANTILE_STEPS, version):
        total, pinball, below = (
            _sum(aggregates.of(level_metric(metric, level), version))
            for metric in (QUANTILE_STEPS, QUANTILE_PINBALL, QUANTILE_BELOW)
        )
        steps = round(total)
        if steps <= 0:
            continue
        stats.append(QuantileStats(level, steps, pinball / steps, round(below) / steps))
    return tuple(stats)


def wilson(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson's score interval of a proportion (NaN, NaN with no trials).

    Its ends solve |p_hat - p| = z sqrt(p (1 - p) / trials); unlike the
    normal (Wald) interval it stays inside [0, 1] and is not empty at a
    coverage of 0 or 1.
    """
    if trials <= 0:
        return math.nan, math.nan
    p = successes / trials
    square = z * z / trials
    center = (p + square / 2.0) / (1.0 + square)
    half = z / (1.0 + square) * math.sqrt(p * (1.0 - p) / trials + square / (4.0 * trials))
    return max(0.0, min(p, center - half)), min(1.0, max(p, center + half))  # rounding


def _comparison(model: str, a: str, b: str, aggregates: ModelAggregates) -> VersionComparison:
    paired = aggregates.of(MASE_DIFFERENCE, a, b)
    if paired.count >= scoring.MIN_SAMPLES:
        result = scoring.compare_paired(paired)
        always_valid = sequential.paired(paired)
        quoted = aggregates.of(PAIRED_MASE_A, a, b).mean, aggregates.of(PAIRED_MASE_B, a, b).mean
        units = "paired forecasts"
    else:  # the split's random units only: other forecasts would compare requests
        group_a, group_b, units = split_units(a, b, aggregates)
        result = scoring.compare_welch(group_a, group_b)
        always_valid = sequential.two_sample(group_a, group_b)
        quoted = group_a.mean, group_b.mean
        units += " each"
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
        verdict=verdict(a, b, *quoted, always_valid, units),
        conclusive=always_valid.conclusive,
        sequential_test=always_valid.test,
        sequential_p_value=always_valid.p_value,
        cs_low=always_valid.cs_low,
        cs_high=always_valid.cs_high,
        model_a=arm_of(model, a)[0],
        model_b=arm_of(model, b)[0],
    )


def split_units(
    a: str, b: str, aggregates: ModelAggregates
) -> tuple[scoring.Moments, scoring.Moments, str]:
    """Each version's values from the split's randomised units, and what the units are.

    A random draw is a unit of its own (COMPARABLE_MASE: one value per
    forecast); a sticky draw's unit is its routing key (KEYED_MASE: one value
    per key, the mean of its forecasts). Both kinds are units the split
    assigned at random, so a version's sample is all of its units.
    """
    groups = []
    kinds = set()
    for version in (a, b):
        drawn = aggregates.of(COMPARABLE_MASE, version)
        keyed = aggregates.of(KEYED_MASE, version)
        kinds |= {name for name, m in (("forecasts", drawn), ("keys", keyed)) if m.count}
        groups.append(pooled(drawn, keyed))
    units = (
        kinds.pop() if len(kinds) == 1 else "units (keys and forecasts)" if kinds else "forecasts"
    )
    return groups[0], groups[1], units


def pooled(a: scoring.Moments, b: scoring.Moments) -> scoring.Moments:
    """The moments of two samples taken together."""
    if not b.count:
        return a
    if not a.count:
        return b
    n = a.count + b.count
    mean = (a.count * a.mean + b.count * b.mean) / n
    if n < 2:
        return scoring.Moments(n, mean, math.nan)
    spread = sum((m.count - 1) * m.variance for m in (a, b) if m.count > 1)
    spread += a.count * b.count / n * (a.mean - b.mean) ** 2
    return scoring.Moments(n, mean, spread / (n - 1))


def verdict(
    a: str,
    b: str,
    mase_a: float,
    mase_b: float,
    result: sequential.SequentialResult,
    units: str = "",
) -> str:
    """The comparison in words: who is more accurate, by how much, and whether it is settled.

    The MASE figures are each version's mean over the sample the test used
    (the pairs, or the split's units); the decision is the sequential test's,
    so it may be read at any time. `units` names what the samples count
    ("keys each" for a sticky split); "" from the test.
    """
    if not units:
        paired = result.test == sequential.PAIRED_SEQUENTIAL
        units = "paired forecasts" if paired else "forecasts each"
    after = f"after {result.samples} {units}"
    if result.conclusive:
        a_wins = result.mean_difference < 0
        better = a if a_wins else b
        good, bad = (mase_a, mase_b) if a_wins else (mase_b, mase_a)
        change = f" ({(good - bad) / bad:+.0%})" if bad > 0 else ""
        return (
            f"{named(better)} is more accurate: MASE {good:.3g} vs {bad:.3g}{change}, "
            f"conclusive {after}"
        )
    if result.samples >= 2 and math.isnan(result.p_value) and not math.isnan(mase_a + mase_b):
        if result.mean_difference == 0:
            return f"no difference: both versions scored the same on every forecast ({after})"
        return (
            "not conclusive: the difference is the same on every forecast, so it cannot be "
            f"tested ({after})"
        )
    if result.samples < 2 or math.isnan(result.p_value):
        return f"not conclusive yet: too few scored forecasts to compare ({after})"
    return (
        f"not conclusive yet: MASE {mase_a:.3g} ({named(a)}) vs {mase_b:.3g} ({named(b)}) {after}"
    )


def named(label: str) -> str:
    """A version in words: "version 2" of the experiment's model, "seasonal_naive:1" of another."""
    return label if arm_parts(label)[0] else f"version {label}"


def interval_flags(report: ExperimentReport) -> list[metrics.IntervalFlag]:
    """The undercovering flag of every version and tracked coverage in `report`."""
    return [
        metrics.IntervalFlag(
            summary.version,
            stats.nominal,
            stats.undercovering,
            stats.coverage,
            stats.coverage_high,
            stats.steps,
        )
        for summary in report.versions
        for stats in summary.intervals
    ]
