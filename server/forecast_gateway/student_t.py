"""Student's t distribution: survival function and quantile, in pure Python.

What `scoring` needs from `scipy.stats.t`, without importing scipy (about
60 MB of resident memory and half a second of start-up for two functions).
The degrees of freedom are any real `df > 0`: Welch's test has fractional ones.

For `t >= 0`, with `x = df / (df + t**2)`,

    P[T > t] = I_x(df/2, 1/2) / 2,

where `I_x(a, b)` is the regularized incomplete beta function. It is evaluated
with its continued fraction (modified Lentz, as `betacf` in Numerical
Recipes, 2nd ed., section 6.4), on `I_x(a, b)` itself when `x` is below the
fraction's turning point `(a + 1) / (a + b + 2)` and as `1 - I_{1-x}(b, a)`
otherwise, where it converges fast. The prefactor `x**a (1-x)**b / B(a, b)`
is taken in logs, with `log B(a, 1/2)` from Stirling's series once `a` is
large enough for `lgamma(a) - lgamma(a + 1/2)` to lose digits.

Near its turning point the fraction loses relative accuracy roughly in
proportion to `df` (about 5e-13 at `df = 1e4`, 5e-9 at 1e8) and needs about
sqrt(df) terms, so from `ASYMPTOTIC_DF` degrees of freedom on the tails come
from Hill's normalizing transformation instead (G. W. Hill, "Algorithm 395:
Student's t-distribution", Comm. ACM 13(10), 1970): the normal tail at a
deviate `sqrt(z)`, `z = (df - 1/2) log(1 + t**2/df)`, with a correction in
powers of `1/df**2`. From 1e4 degrees of freedom on it agrees with the exact
tail to about 1e-13 relative, and it becomes the normal distribution as `df`
grows (`df = inf` is the normal).

The quantile inverts these with a safeguarded Newton iteration in `log t`.

Accuracy against scipy 1.17 and mpmath (`tests/unit/test_student_t.py`): the
survival function within about 1e-12 relative wherever it does not
underflow, the quantile within about 1e-13 relative. NaN in, NaN out;
`df <= 0` is NaN, as in scipy.
"""

from __future__ import annotations

import math
import sys

ALPHA = 0.05
"""Two-sided significance level of every test (A/B reports, backtests); CIs are 1 - ALPHA."""
MIN_SAMPLES = 2
"""Fewest pairs (paired) or samples per group (Welch) for which a t-test is defined."""
SUMS_RELATIVE_ERROR = 1e-12
"""Relative rounding error allowed in running sums before a variance counts as real."""
NO_SPREAD_RELATIVE = 1e-12
"""A sample whose values all lie within this fraction of its mean has no variance."""

_EPSILON = 1e-15
"""Relative change of the continued fraction at which it has converged."""
_TINY = 1e-300
"""Stands in for a zero denominator in the modified Lentz method."""
_MAX_TERMS = 10_000
"""Most continued-fraction terms (below `ASYMPTOTIC_DF` it takes at most a few hundred)."""
ASYMPTOTIC_DF = 1e4
"""Degrees of freedom from which the tail comes from Hill's transformation, not the fraction."""
_HILL_UNDERFLOW = 1e4
"""Hill's z past which the normal tail is 0 in floating point (deviate > 100)."""
_STIRLING_FROM = 10.0
"""Arguments from which log-gamma differences use Stirling's series (to rounding there)."""
_STIRLING_TERMS = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
"""B_2k / (2k (2k - 1)) for k = 1..7: log Gamma(z) minus Stirling's formula, in powers of 1/z."""
_QUANTILE_RELATIVE = 1e-14
"""Relative step at which the quantile's Newton iteration stops."""
_QUANTILE_RESIDUAL = 4e-16
"""Relative error of the tail probability at which the quantile's iteration stops."""
_MAX_QUANTILE_STEPS = 200
"""Most Newton or bisection steps for a quantile (it takes about ten)."""
_LARGEST = sys.float_info.max


def sf(t: float, df: float) -> float:
    """P[T > t] for Student's t with `df` degrees of freedom (the survival function).

    The two-sided p-value of a t statistic is `2 * sf(abs(t), df)`. Exact
    0.5 at `t == 0`, 0 at `+inf`, 1 at `-inf`; NaN if `t` or `df` is NaN or
    `df <= 0`.
    """
    if math.isnan(t) or math.isnan(df) or df <= 0:
        return math.nan
    upper, central = _tails(abs(t), df)
    return upper if t >= 0 else 0.5 + central


def ppf(q: float, df: float) -> float:
    """The `q` quantile of Student's t with `df` degrees of freedom: t with P[T <= t] = q.

    Defined for `0 < q < 1` (-inf at 0, +inf at 1, NaN outside or for NaN or
    `df <= 0`); relative accuracy about 1e-13.
    """
    if math.isnan(q) or math.isnan(df) or df <= 0 or not 0.0 <= q <= 1.0:
        return math.nan
    if q == 0.5:
        return 0.0
    if q in (0.0, 1.0):
        return math.inf if q == 1.0 else -math.inf
    # 1 - q is exact for q >= 0.5, so the smaller tail never loses digits.
    tail = q if q < 0.5 else 1.0 - q
    magnitude = _quantile_magnitude(tail, df)
    return magnitude if q > 0.5 else -magnitude


def _tails(t: float, df: float) -> tuple[float, float]:
    """`(P[T > t], P[0 < T < t])` for `t >= 0`, each to full relative accuracy.

    They add up to 1/2; computing each directly (not as 1/2 minus the other
    when that cancels) keeps `sf` of a negative `t` and quantiles near the
    median accurate.
    """
    if t == 0.0:
        return 0.5, 0.0
    if math.isinf(t):
        return 0.0, 0.5
    if df >= ASYMPTOTIC_DF:
        return _hill_tails(t, df)
    a = df / 2.0
    ratio = t * t / df  # x = 1 / (1 + ratio), 1 - x = ratio / (1 + ratio)
    if ratio == 0.0:  # t**2 underflowed: the central part is t * pdf(0) to rounding
        return 0.5, math.exp(_log_density_times_t(t, df))
    log_x = -_log1p_square_ratio(t, df)
    log_complement = -math.log1p(1.0 / ratio)
    x, complement = 1.0 / (1.0 + ratio), 1.0 / (1.0 + 1.0 / ratio)  # also once ratio overflows
    front = math.exp(a * log_x + 0.5 * log_complement - _log_beta_half(a))
    if x < (a + 1.0) / (a + 2.5):  # upper = I_x(a, 1/2) / 2
        upper = 0.5 * front * _beta_fraction(a, 0.5, x) / a
        return upper, 0.5 - upper
    central = front * _beta_fraction(0.5, a, complement)  # I_{1-x}(1/2, a) / 2
    return 0.5 - central, central


def _hill_tails(t: float, df: float) -> tuple[float, float]:
    """`_tails` for `t > 0` and large `df`: the normal ones at Hill's (1970) deviate.

    `z = (df - 1/2) log(1 + t**2 / df)`; the deviate is sqrt(z) times a
    correction in `1 / (48 (df - 1/2)**2)`. `df = inf` is the normal.
    """
    if math.isinf(df):
        deviate = t
    else:
        a = df - 0.5
        b = 48.0 * a * a
        z = a * _log1p_square_ratio(t, df)
        if z > _HILL_UNDERFLOW:  # the deviate is past 100: the tail underflows (z**3 might not)
            return 0.0, 0.5
        correction = (((-0.4 * z - 3.3) * z - 24.0) * z - 85.5) / (0.8 * z * z + 100.0 + b)
        deviate = ((correction + z + 3.0) / b + 1.0) * math.sqrt(z)
    scaled = deviate / math.sqrt(2.0)
    return 0.5 * math.erfc(scaled), 0.5 * math.erf(scaled)


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (Numerical Recipes `betacf`), by modified Lentz.

    `I_x(a, b) = x**a (1-x)**b / (a B(a, b)) * _beta_fraction(a, b, x)`;
    converges fast for `x < (a + 1) / (a + b + 2)`.
    """
    total, plus_one, minus_one = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - total * x / plus_one
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    fraction = d
    for m in range(1, _MAX_TERMS + 1):
        twice = 2 * m
        even = m * (b - m) * x / ((minus_one + twice) * (a + twice))
        d = 1.0 + even * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + even / c
        c = c if abs(c) > _TINY else _TINY
        fraction *= d * c
        odd = -(a + m) * (total + m) * x / ((a + twice) * (plus_one + twice))
        d = 1.0 + odd * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + odd / c
        c = c if abs(c) > _TINY else _TINY
        change = d * c
        fraction *= change
        if abs(change - 1.0) <= _EPSILON:
            return fraction
    raise ArithmeticError(f"incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def _log_beta_half(a: float) -> float:
    """The log of B(a, 1/2) = Gamma(1/2) Gamma(a) / Gamma(a + 1/2), for any a > 0.

    For large `a` the two log-gammas are huge and nearly equal, so their
    difference comes from Stirling's series instead of subtracting them.
    """
    log_gamma_half = 0.5 * math.log(math.pi)
    if a < _STIRLING_FROM:
        return log_gamma_half + math.lgamma(a) - math.lgamma(a + 0.5)
    b = 0.5
    difference = (
        -(a - 0.5) * math.log1p(b / a)
        - b * math.log(a + b)
        + b
        + _stirling_correction(a)
        - _stirling_correction(a + b)
    )
    return log_gamma_half + difference


def _stirling_correction(z: float) -> float:
    """Stirling's remainder log Gamma(z) - ((z - 1/2) log z - z + log(2 pi) / 2), for z >= 10."""
    inverse = 1.0 / z
    square = inverse * inverse
    total = 0.0
    for coefficient in reversed(_STIRLING_TERMS):
        total = total * square + coefficient
    return total * inverse


def _log_density_times_t(t: float, df: float) -> float:
    """The log of t * pdf(t), for `t > 0`: minus the derivative of P[T > t] against log t."""
    if math.isinf(df):
        return math.log(t) - 0.5 * t * t - 0.5 * math.log(2.0 * math.pi)
    return (
        math.log(t)
        - 0.5 * math.log(df)
        - _log_beta_half(df / 2.0)
        - (df + 1.0) / 2.0 * _log1p_square_ratio(t, df)
    )


def _log1p_square_ratio(t: float, df: float) -> float:
    """The log of 1 + t**2 / df, also when t**2 / df overflows."""
    ratio = t * t / df
    if math.isinf(ratio):
        return 2.0 * math.log(t) - math.log(df)
    return math.log1p(ratio)


def _quantile_magnitude(tail: float, df: float) -> float:
    """The t > 0 with P[T > t] = `tail`, for 0 < tail < 1/2.

    Newton's method on the log of the smaller of P[T > t] (for tails
    below 1/4) and P[0 < T < t] (above; `1/2 - tail` is exact there) as a
    function of `log t`: nearly linear in the body, in the power-law tail and
    near the median. Kept inside a bracket that is bisected (in `log t`)
    whenever a step would leave it; stops when the step is below the
    relative tolerance or the residual is at rounding level.
    """
    bracket = _bracket(tail, df)
    if bracket is None:
        return math.inf
    log_low, log_high = math.log(bracket[0]), math.log(bracket[1])
    central_side = tail > 0.25
    target = math.log(0.5 - tail) if central_side else math.log(tail)
    sign = 1.0 if central_side else -1.0  # the sign of d log(probability) / d log t
    log_t = 0.5 * (log_low + log_high)
    for _ in range(_MAX_QUANTILE_STEPS):
        t = math.exp(log_t)
        probability = _tails(t, df)[1 if central_side else 0]
        if probability == 0.0:  # underflowed: far in the tail, or (central) t tiny
            log_low, log_high = (log_t, log_high) if central_side else (log_low, log_t)
            log_t = 0.5 * (log_low + log_high)
            continue
        residual = math.log(probability) - target
        if abs(residual) <= _QUANTILE_RESIDUAL:
            return t
        if sign * residual < 0:
            log_low = log_t
        else:
            log_high = log_t
        slope = sign * math.exp(_log_density_times_t(t, df) - math.log(probability))
        proposal = log_t - residual / slope if slope != 0.0 else math.nan
        if not log_low <= proposal <= log_high:  # also NaN
            proposal = 0.5 * (log_low + log_high)
        step, log_t = proposal - log_t, proposal
        if abs(step) <= _QUANTILE_RELATIVE:
            return math.exp(log_t)
    return math.exp(log_t)


def _bracket(tail: float, df: float) -> tuple[float, float] | None:
    """`(low, high)`, 0 < low < high, with P[T > low] >= tail > P[T > high].

    None when even the largest float has a tail of at least `tail` (only for
    df below 1 and astronomically small tails): the quantile overflows.
    """
    low, high = 1.0, 16.0
    if _tails(low, df)[0] >= tail:
        while _tails(high, df)[0] >= tail:
            if high == _LARGEST:
                return None
            low, high = high, min(high * 16.0, _LARGEST)
        return low, high
    high, low = low, low / 16.0
    while _tails(low, df)[0] < tail:
        high, low = low, low / 16.0
    return low, high
