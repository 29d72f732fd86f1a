"""Always-valid comparisons: confidence sequences that hold however often they are read.

A fixed-sample t-test is valid when read once, at a sample size chosen in
advance. Teams read GetExperiment continuously and stop when it looks
significant, which inflates false positives far beyond 5% (the unit tests
simulate it). A confidence sequence (CS) covers the true mean difference at
every sample size at once with probability 1 - ALPHA, so stopping whenever
it excludes 0 keeps the error rate at ALPHA.

We use the asymptotic CS of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
("Time-uniform central limit theory and asymptotic confidence sequences",
2021), whose boundary is Robbins' normal mixture (Howard, Ramdas, McAuliffe
and Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", 2021). For n values with mean m and standard deviation s:

    m ± s * sqrt( 2 (n rho² + 1) / (n² rho²) * log( sqrt(n rho² + 1) / ALPHA ) )

`rho` sets the sample size at which the sequence is tightest (TARGET_SAMPLES).
The always-valid p-value is the smallest ALPHA whose sequence excludes 0:

    p = min(1, sqrt(n rho² + 1) * exp( -n² rho² (m / s)² / (2 (n rho² + 1)) ))

It needs only (n, mean, variance): the running aggregates, never the rows.
Paired: n pairs and the moments of their differences. Two samples (a split):
the difference of means D with variance v = s_a²/n_a + s_b²/n_b, written as
s² / n with s² = s_a² + s_b² (an effective n = s² / v). "Asymptotic" means the
guarantee holds as samples grow (the CLT, with s estimated); below
MIN_SAMPLES a comparison is never declared conclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from forecast_gateway.ab.scoring import Moments

ALPHA = 0.05
TARGET_SAMPLES = 100
"""Samples at which the sequence is tightest; wider below, slowly wider relative to a CI above."""
MIN_SAMPLES = 10
"""Fewest pairs (or values per version) before a comparison may be conclusive."""
PAIRED_SEQUENTIAL = "paired asymptotic confidence sequence"
TWO_SAMPLE_SEQUENTIAL = "two-sample asymptotic confidence sequence"


@dataclass(frozen=True)
class SequentialResult:
    """An always-valid test of mean difference != 0; NaN fields when untestable."""

    test: str
    samples: int
    mean_difference: float
    p_value: float
    cs_low: float
    cs_high: float

    @property
    def conclusive(self) -> bool:
        """Whether the sequence excludes 0 (at ALPHA), with at least MIN_SAMPLES samples."""
        return self.samples >= MIN_SAMPLES and self.p_value < ALPHA


def _rho_squared(alpha: float = ALPHA, target: int = TARGET_SAMPLES) -> float:
    """The mixture's rho² that makes the boundary tightest at `target` samples (Howard et al.)."""
    return (-2.0 * math.log(alpha) + math.log(-2.0 * math.log(alpha) + 1.0)) / target


RHO_SQUARED = _rho_squared()


def _sequence(test: str, samples: int, mean: float, n: float, sd: float) -> SequentialResult:
    """The CS and p-value for a mean of `n` (effective) values of standard deviation `sd`."""
    if not (n >= 2 and sd > 0 and math.isfinite(mean) and math.isfinite(sd)):
        return SequentialResult(test, samples, mean, math.nan, math.nan, math.nan)
    spread = n * RHO_SQUARED + 1.0
    half = sd * math.sqrt(
        2.0 * spread / (n * n * RHO_SQUARED) * math.log(math.sqrt(spread) / ALPHA)
    )
    exponent = -(n * n * RHO_SQUARED * (mean / sd) ** 2) / (2.0 * spread)
    p_value = min(1.0, math.sqrt(spread) * math.exp(exponent))
    return SequentialResult(test, samples, mean, p_value, mean - half, mean + half)


def paired(differences: Moments) -> SequentialResult:
    """The CS of the mean of paired differences a - b."""
    n = differences.count
    if n < 2 or differences.constant:
        return _sequence(PAIRED_SEQUENTIAL, n, differences.mean, 0, 0.0)
    return _sequence(PAIRED_SEQUENTIAL, n, differences.mean, n, math.sqrt(differences.variance))


def two_sample(a: Moments, b: Moments) -> SequentialResult:
    """The CS of mean(a) - mean(b) over independent samples (a traffic split)."""
    samples = min(a.count, b.count)
    mean = a.mean - b.mean if samples else math.nan
    if samples < 2 or (a.constant and b.constant):
        return _sequence(TWO_SAMPLE_SEQUENTIAL, samples, mean, 0, 0.0)
    var_a = 0.0 if a.constant else a.variance
    var_b = 0.0 if b.constant else b.variance
    standard_error_squared = var_a / a.count + var_b / b.count
    if not standard_error_squared > 0:
        return _sequence(TWO_SAMPLE_SEQUENTIAL, samples, mean, 0, 0.0)
    unit = var_a + var_b
    return _sequence(
        TWO_SAMPLE_SEQUENTIAL, samples, mean, unit / standard_error_squared, math.sqrt(unit)
    )
