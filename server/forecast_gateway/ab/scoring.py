"""Scoring forecasts against reported actuals, and comparing versions' errors.

Pure functions (numpy and `student_t` only), used by the A/B store
(`ab.aggregates`, `ab.report`) and unit-tested without I/O. The t-tests are computed
from the sample moments with the t distribution of `student_t`, not scipy:
importing `scipy.stats` would cost the gateway ~60 MB of memory and ~0.6 s of
start-up for these few lines. The unit tests check them against scipy's
`ttest_rel`, `ttest_ind(equal_var=False)` and `ttest_1samp`.

Undefined values are NaN, never a made-up number:

- MASE of a forecast whose window is constant (the naive forecast has no
  in-sample error, so there is no scale): NaN. The store leaves such
  forecasts out of MASE means and comparisons; MAE and sMAPE still count.
  A floor would turn a flat window into an arbitrarily large MASE that
  dominates every mean and t-test, which is worse than leaving it out.
- A score with no reported step: MAE, sMAPE and MASE are NaN, steps is 0.
- An error that overflows (actuals near the float limit): NaN.
- A comparison that cannot be tested (fewer than 2 pairs or 2 samples per
  group, or no variance at all: the paired differences, or both groups,
  constant up to rounding): p-value and confidence interval are NaN and
  `significant` is false; `mean_difference` is still the observed one (NaN
  only when there is nothing to average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecast_gateway import student_t
from forecast_gateway.student_t import ALPHA, MIN_SAMPLES, NO_SPREAD_RELATIVE, SUMS_RELATIVE_ERROR

__all__ = ["ALPHA", "MIN_SAMPLES", "NO_SPREAD_RELATIVE", "SUMS_RELATIVE_ERROR"]

PAIRED_TEST = "paired t-test"
WELCH_TEST = "Welch two-sample t-test"


@dataclass(frozen=True)
class Score:
    """One forecast's accuracy over the steps that have an actual.

    `mae` is in the units of the series, `smape` in percent (0-200), `mase`
    is MAE over the naive scale (NaN when the scale is 0).
    """

    steps: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class Comparison:
    """A two-sided t-test of mean(a) - mean(b) with its 95% confidence interval.

    `samples` is the number of pairs (paired test) or the smaller group size
    (Welch). When the test is undefined (too few samples, zero variance)
    `p_value`, `ci_low` and `ci_high` are NaN and `significant` is false.
    """

    test: str
    samples: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    significant: bool

    @property
    def tested(self) -> bool:
        """Whether the test could be run (its p-value is defined)."""
        return not math.isnan(self.p_value)


def score(values: npt.ArrayLike, actuals: npt.ArrayLike, scale: float) -> Score:
    """Score a forecast against actuals of the same length; NaN actuals are not reported yet.

    Only steps with a finite actual count. sMAPE is
    100 * mean(2 |f - a| / (|f| + |a|)), with a step where forecast and
    actual are both 0 counting as a perfect 0 (not 0/0).
    """
    forecast = np.asarray(values, dtype=np.float64).ravel()
    observed = np.asarray(actuals, dtype=np.float64).ravel()
    if forecast.shape != observed.shape:
        raise ValueError(f"{forecast.size} forecast values but {observed.size} actuals")
    reported = np.isfinite(observed)
    steps = int(reported.sum())
    if steps == 0:
        return Score(steps=0, mae=math.nan, smape=math.nan, mase=math.nan)
    f, a = forecast[reported], observed[reported]
    with np.errstate(over="ignore", invalid="ignore"):  # overflow -> NaN below
        errors = np.abs(f - a)
        mae = float(errors.mean())
        denominator = np.abs(f) + np.abs(a)
        ratios = np.divide(
            2.0 * errors, denominator, out=np.zeros_like(errors), where=denominator > 0
        )
        smape = 100.0 * float(ratios.mean())
    mase = mae / scale if scale > 0 and math.isfinite(scale) else math.nan
    # Actuals near the float limit overflow the error to inf: undefined, not a
    # number that would turn every mean and test of the version into inf.
    return Score(steps, *(v if math.isfinite(v) else math.nan for v in (mae, smape, mase)))


def compare(a: npt.ArrayLike, b: npt.ArrayLike, *, paired: bool) -> Comparison:
    """Test whether mean(a) differs from mean(b) (two-sided, 95% CI of the difference).

    Paired: `a[i]` and `b[i]` are errors on the same request; pairs with a
    NaN on either side are dropped; a paired t-test (as `scipy.stats.ttest_rel`:
    t = mean(d) / (sd(d) / sqrt(n)), n - 1 degrees of freedom) and the t-based
    interval of the mean difference. Otherwise Welch's t-test (as
    `ttest_ind(equal_var=False)`) on each side's non-NaN values, with the
    Welch-Satterthwaite degrees of freedom for the test and the interval.
    """
    first = np.asarray(a, dtype=np.float64).ravel()
    second = np.asarray(b, dtype=np.float64).ravel()
    if paired:
        if first.shape != second.shape:
            raise ValueError(f"paired samples differ in length: {first.size} != {second.size}")
        keep = ~(np.isnan(first) | np.isnan(second))
        return compare_paired(Moments.of(first[keep] - second[keep]))
    return compare_welch(Moments.of(first[~np.isnan(first)]), Moments.of(second[~np.isnan(second)]))


@dataclass(frozen=True)
class Moments:
    """All a t-test needs from a sample, so the store can keep it as running sums.

    `variance` has ddof=1 (NaN below 2 values); `mean` is NaN when empty.
    """

    count: int
    mean: float
    variance: float

    @classmethod
    def of(cls, sample: npt.ArrayLike) -> Moments:
        """The moments of a sample (no NaN in it)."""
        values = np.asarray(sample, dtype=np.float64).ravel()
        if values.size == 0:
            return EMPTY
        variance = float(values.var(ddof=1)) if values.size > 1 else math.nan
        return cls(int(values.size), float(values.mean()), variance)

    @classmethod
    def from_sums(cls, count: int, shift: float, total: float, squares: float) -> Moments:
        """From running sums of (x - shift) and (x - shift)**2 over `count` values.

        The store kept its running totals so up to schema 4 (SQLite) or 3
        (PostgreSQL); their migration to `ExactSums` reads them with this.
        Shifting by a value of the sample (the store kept the first one)
        keeps the sums small, so the variance does not cancel to noise: a
        constant sample has sums exactly 0. Rounding left by values added
        and later removed is clamped at a variance of 0.
        """
        if count <= 0:
            return EMPTY
        mean = shift + total / count
        if count < 2:
            return cls(count, mean, math.nan)
        variance = (squares - total * total / count) / (count - 1)
        # Below the rounding error of the sums (values added and later removed,
        # a shift far from the values) the spread is indistinguishable from 0.
        if variance <= SUMS_RELATIVE_ERROR * squares / (count - 1):
            variance = 0.0
        return cls(count, mean, variance)

    @property
    def constant(self) -> bool:
        """Constant up to rounding: a spread within NO_SPREAD_RELATIVE of the mean (cf. scipy)."""
        return not self.variance > (NO_SPREAD_RELATIVE * self.mean) ** 2


EMPTY = Moments(0, math.nan, math.nan)

Dyadic = tuple[int, int]
"""An exact binary fraction m * 2**e as (m, e), m odd (or (0, 0)): every float is one."""
ZERO: Dyadic = (0, 0)


@dataclass(frozen=True)
class ExactSums:
    """The count, sum and sum of squares of a sample, held exactly, so removals undo additions.

    Each value is a float, so an exact binary fraction, and so are its square
    and any sum of them: the sums are integers scaled by a power of two, and
    never round. Taking a value back out leaves exactly the sums of the
    others, whatever it was (a typo of 1e100 corrected later included), and
    the moments are computed from the exact sums with one rounding each.
    (Floating-point sums kept relative to a shift lose the other values to
    the rounding of the largest ones they ever held.)
    """

    count: int = 0
    total: Dyadic = ZERO
    squares: Dyadic = ZERO

    def add(self, value: float, weight: int) -> ExactSums:
        """Add `value` `weight` times (weight -1: take one back out). `value` is finite."""
        exact = _dyadic(value)
        return ExactSums(
            self.count + weight,
            _sum(self.total, _times(exact, weight)),
            _sum(self.squares, _times(_square(exact), weight)),
        )

    @property
    def moments(self) -> Moments:
        """Count, mean and variance (ddof=1), each the exact value rounded once."""
        n = self.count
        if n <= 0:
            return EMPTY
        mean = _quotient(self.total, n)
        if n < 2:
            return Moments(n, mean, math.nan)
        # n * sum(x**2) - sum(x)**2 = n (n - 1) variance, exactly; below 0 only where
        # a value was taken out that was never added (sums converted from old ones).
        spread = _sum(_times(self.squares, n), _times(_square(self.total), -1))
        return Moments(n, mean, max(_quotient(spread, n * (n - 1)), 0.0))

    @classmethod
    def of_moments(cls, moments: Moments) -> ExactSums:
        """The exact sums of a sample with these moments (their floats taken as exact)."""
        n = moments.count
        if n <= 0:
            return cls()
        mean = _dyadic(moments.mean)
        spread = _dyadic(moments.variance) if n > 1 else ZERO
        # sum(x) = n mean; sum(x**2) = (n - 1) variance + n mean**2.
        squares = _sum(_times(spread, n - 1), _times(_square(mean), n))
        return cls(n, _times(mean, n), squares)


EXACT_ZERO = ExactSums()
"""The sums of an empty sample."""


def _dyadic(value: float) -> Dyadic:
    numerator, denominator = value.as_integer_ratio()  # denominator: a power of 2
    return _normal(numerator, 1 - denominator.bit_length())


def _normal(mantissa: int, exponent: int) -> Dyadic:
    if mantissa == 0:
        return ZERO
    zeros = (mantissa & -mantissa).bit_length() - 1
    return mantissa >> zeros, exponent + zeros


def _sum(a: Dyadic, b: Dyadic) -> Dyadic:
    if a[0] == 0:
        return b
    if b[0] == 0:
        return a
    exponent = min(a[1], b[1])
    return _normal((a[0] << (a[1] - exponent)) + (b[0] << (b[1] - exponent)), exponent)


def _times(a: Dyadic, factor: int) -> Dyadic:
    return _normal(a[0] * factor, a[1])


def _square(a: Dyadic) -> Dyadic:
    return a[0] * a[0], 2 * a[1]


def _quotient(a: Dyadic, divisor: int) -> float:
    """The quotient a / divisor rounded once (Python divides integers exactly, then rounds)."""
    mantissa, exponent = a
    try:
        if exponent >= 0:
            return (mantissa << exponent) / divisor
        return mantissa / (divisor << -exponent)
    except OverflowError:
        return math.copysign(math.inf, mantissa)


def compare_paired(differences: Moments) -> Comparison:
    """The paired t-test from the moments of the per-request differences a - b."""
    n = differences.count
    mean = differences.mean
    if n < MIN_SAMPLES or differences.constant:
        return _untested(PAIRED_TEST, n, mean)
    standard_error = math.sqrt(differences.variance) / math.sqrt(n)
    if not standard_error > 0:  # the variance underflowed
        return _untested(PAIRED_TEST, n, mean)
    return _tested(PAIRED_TEST, n, mean, standard_error, n - 1)


def compare_welch(a: Moments, b: Moments) -> Comparison:
    """Welch's t-test of mean(a) - mean(b) from each group's moments."""
    n = min(a.count, b.count)
    mean = a.mean - b.mean if n else math.nan
    if n < MIN_SAMPLES:
        return _untested(WELCH_TEST, n, mean)
    if a.constant and b.constant:
        return _untested(WELCH_TEST, n, mean)
    share_a = 0.0 if a.constant else a.variance / a.count
    share_b = 0.0 if b.constant else b.variance / b.count
    standard_error = math.sqrt(share_a + share_b)
    if not standard_error > 0:  # the variances underflowed
        return _untested(WELCH_TEST, n, mean)
    weight_a = share_a / (share_a + share_b)
    weight_b = 1.0 - weight_a
    # Welch-Satterthwaite. With one group constant (its share taken as exactly 0,
    # not its rounding noise) this is n - 1 of the other group, and the test is
    # exactly the one-sample test of the other group against the constant.
    df = 1.0 / (weight_a**2 / (a.count - 1) + weight_b**2 / (b.count - 1))
    return _tested(WELCH_TEST, n, mean, standard_error, df)


def _tested(test: str, samples: int, mean: float, standard_error: float, df: float) -> Comparison:
    """The two-sided t-test of `mean / standard_error` on `df` degrees of freedom, and its CI."""
    p_value = 2.0 * student_t.sf(abs(mean / standard_error), df)
    margin = student_t.ppf(1.0 - ALPHA / 2.0, df) * standard_error
    return Comparison(
        test=test,
        samples=samples,
        mean_difference=mean,
        ci_low=mean - margin,
        ci_high=mean + margin,
        p_value=p_value,
        significant=bool(p_value < ALPHA),
    )


def _untested(test: str, samples: int, mean: float) -> Comparison:
    return Comparison(
        test=test,
        samples=samples,
        mean_difference=mean,
        ci_low=math.nan,
        ci_high=math.nan,
        p_value=math.nan,
        significant=False,
    )
