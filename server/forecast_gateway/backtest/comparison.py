"""Comparing two backtest targets on the same windows: the Diebold-Mariano test.

Pure functions (numpy, `student_t`, and the significance level of
`ab.scoring`), unit-tested without I/O.

The loss of a target on a window is its MASE there (`scores.window_losses`);
the test is on the loss differential d = loss_a - loss_b, H0: E[d] = 0
(Diebold & Mariano, "Comparing predictive accuracy", JBES 13(3), 1995):

    DM = mean(d) / sqrt(V / n),  V = gamma_0 + 2 sum_{j=1..lag} gamma_j,

where gamma_j is the lag-j autocovariance of d with divisor n (the pairs
used), centred on the overall mean. Windows of one series are consecutive
rolling origins `step` points apart, each scoring `horizon` steps: windows
k and k + j share held-out points when j * step < horizon, so their losses
are correlated up to lag ceil(horizon / step) - 1 and independent beyond
(the MA(h - 1) argument of DM 1995 for h-step forecasts). Windows of
different series are independent: a lag-j product counts only when both
windows belong to the same series. A window dropped for a NaN loss keeps its
place, so lags are counted in origins, not in surviving pairs.

The truncation lag is ceil(horizon / step) - 1, capped at the longest
series' window count - 1 (no pair of windows is further apart, so the
longer sums are empty: the cap changes the lag reported and the correction
below, not V). The rectangular kernel (DM 1995's truncated uniform weights)
is consistent for an MA(lag) differential but may give V <= 0 in a small
sample (or V = 0 up to rounding, see `_long_run_variance`); then the
Bartlett weights 1 - j / (lag + 1) (Newey & West, Econometrica 55(3), 1987)
are used instead, which never give a negative V (zero only for a constant
differential), and `test` says so.

Harvey, Leybourne & Newbold ("Testing the equality of prediction mean
squared errors", IJF 13(2), 1997) correct the small-sample size of DM:
multiply it by sqrt((n + 1 - 2h + h (h - 1) / n) / n), h = lag + 1, and
compare it with Student's t on n - 1 degrees of freedom. With lag 0 this
is exactly the paired t-test of the per-window losses (`ab.scoring`'s
`compare(paired=True)`, `scipy.stats.ttest_rel`).

MASE, Winkler and pinball: Hyndman & Athanasopoulos, FPP3, ch. 5 (see `scores`).

Undefined values are NaN, as in `ab.scoring`: pairs with a non-finite loss
on either side are dropped. Fewer than 2 pairs, a differential with no
variance (constant up to rounding, as `ab.scoring.Moments.constant`), a
long-run variance that is still not positive, or a lag so long that the HLN
factor is not positive (h >= n): `statistic` and `p_value` are NaN and
`significant` is false; `mean_difference` is still the observed one (NaN
only with no pair).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecast_gateway import student_t
from forecast_gateway.numerics import FloatArray

DM_TEST = "Diebold-Mariano (HAC, Harvey-Leybourne-Newbold)"
"""The test with the rectangular kernel of DM 1995."""
DM_TEST_BARTLETT = "Diebold-Mariano (Newey-West HAC, Harvey-Leybourne-Newbold)"
"""The test with Bartlett weights, used when the rectangular long-run variance is not positive."""
ALPHA = student_t.ALPHA
"""Two-sided significance level (that of the A/B comparisons)."""


@dataclass(frozen=True)
class DieboldMariano:
    """A two-sided Diebold-Mariano test of two targets' losses on the same windows.

    `samples` is the number of windows with both losses defined;
    `mean_difference` is mean(loss_a - loss_b) over them (< 0: a is more
    accurate); `lag` is the HAC truncation lag used. When the test is
    undefined `statistic` and `p_value` are NaN and `significant` is false.
    """

    test: str
    samples: int
    mean_difference: float
    statistic: float
    p_value: float
    lag: int
    significant: bool

    @property
    def tested(self) -> bool:
        """Whether the test could be run (its p-value is defined)."""
        return not math.isnan(self.p_value)


def diebold_mariano(
    loss_a: npt.ArrayLike,
    loss_b: npt.ArrayLike,
    *,
    groups: npt.ArrayLike,
    horizon: int,
    step: int,
) -> DieboldMariano:
    """Test whether two targets' mean per-window losses differ (see the module for the method).

    `loss_a`, `loss_b`: per-window losses ([windows]) on the same windows;
    `groups`: the series of each window (one series' windows consecutive, in
    origin order); `horizon`, `step`: the steps each window scores and the
    points between consecutive origins. ValueError for arrays of different
    lengths, a series whose windows are not consecutive, or horizon or
    step below 1.
    """
    first = np.asarray(loss_a, dtype=np.float64).ravel()
    second = np.asarray(loss_b, dtype=np.float64).ravel()
    series = np.asarray(groups).ravel()
    if not first.shape == second.shape == series.shape:
        raise ValueError(
            f"loss_a, loss_b and groups differ in length: {first.size}, {second.size}, "
            f"{series.size}"
        )
    if horizon < 1 or step < 1:
        raise ValueError(f"horizon and step must be at least 1, got {horizon} and {step}")
    lag = min(-(-horizon // step) - 1, _longest_run(_same_series(series)))
    with np.errstate(over="ignore", invalid="ignore"):
        differences = first - second
        present = np.isfinite(differences)
        n = int(present.sum())
        mean = float(differences[present].mean()) if n else math.nan
        if n < student_t.MIN_SAMPLES:
            return _untested(DM_TEST, n, mean, lag)
        centred = np.where(present, differences - mean, 0.0)
        covariances = _autocovariances(centred, series, lag, n)
    if not math.isfinite(mean) or _constant(covariances[0], mean):
        return _untested(DM_TEST, n, mean, lag)
    test, variance = DM_TEST, _long_run_variance(covariances, bartlett=False)
    if math.isnan(variance):
        test, variance = DM_TEST_BARTLETT, _long_run_variance(covariances, bartlett=True)
    h = lag + 1
    correction = (n + 1 - 2 * h + h * (h - 1) / n) / n
    if not (math.isfinite(variance) and correction > 0):
        return _untested(test, n, mean, lag)
    statistic = mean / math.sqrt(variance / n) * math.sqrt(correction)
    if not math.isfinite(statistic):
        return _untested(test, n, mean, lag)
    p_value = 2.0 * student_t.sf(abs(statistic), n - 1)
    return DieboldMariano(test, n, mean, statistic, p_value, lag, p_value < ALPHA)


def verdict(a: str, b: str, loss_a: float, loss_b: float, result: DieboldMariano) -> str:
    """The comparison in words: which target is more accurate, by how much, and how sure.

    `a` and `b` are the targets' labels; `loss_a` and `loss_b` each one's
    mean MASE over the windows the test used.
    """
    windows = f"{result.samples} window{'' if result.samples == 1 else 's'}"
    if result.tested:
        p = _p_text(result.p_value)
        if result.significant:
            a_wins = result.mean_difference < 0
            better = a if a_wins else b
            good, bad = (loss_a, loss_b) if a_wins else (loss_b, loss_a)
            change = f" ({(good - bad) / bad:+.0%})" if bad > 0 else ""
            return (
                f"{better} is more accurate: MASE {good:.3g} vs {bad:.3g}{change}, "
                f"significant (Diebold-Mariano {p} over {windows})"
            )
        return (
            f"no significant difference: MASE {loss_a:.3g} ({a}) vs {loss_b:.3g} ({b}) "
            f"({p} over {windows})"
        )
    if result.samples < student_t.MIN_SAMPLES:
        return f"not testable: too few windows scored for both {a} and {b} ({windows})"
    if result.lag + 1 >= result.samples:
        return (
            f"not testable: too few windows for the overlap of their forecasts "
            f"(HAC lag {result.lag}, {windows})"
        )
    if result.mean_difference == 0:
        return f"not testable: {a} and {b} have the same MASE on every window ({windows})"
    return (
        f"not testable: the MASE difference is the same on every window, "
        f"MASE {loss_a:.3g} ({a}) vs {loss_b:.3g} ({b}) ({windows})"
    )


def _same_series(series: npt.NDArray[np.generic]) -> npt.NDArray[np.bool_]:
    """Whether each window is in the same series as the one before; ValueError if one is split.

    Each series' windows must be one consecutive run: then windows i and
    i + j are in one series exactly when their labels are equal.
    """
    same: npt.NDArray[np.bool_] = series[1:] == series[:-1]
    runs = int(series.size > 0) + int((~same).sum())
    if runs != np.unique(series).size:
        raise ValueError("each series' windows must be consecutive in groups")
    return same


def _longest_run(same: npt.NDArray[np.bool_]) -> int:
    """The longest series' window count - 1: how far apart two windows of one series can be."""
    edges = np.concatenate(([0], np.flatnonzero(~same) + 1, [same.size + 1]))
    return int(np.max(np.diff(edges))) - 1


def _autocovariances(
    centred: FloatArray, series: npt.NDArray[np.generic], lag: int, n: int
) -> list[float]:
    """gamma_0..gamma_lag of the centred differential (0 at dropped windows), within series only."""
    covariances = [float(np.dot(centred, centred)) / n]
    for j in range(1, lag + 1):
        within = series[j:] == series[:-j]
        covariances.append(float(np.dot(centred[j:][within], centred[:-j][within])) / n)
    return covariances


def _long_run_variance(covariances: list[float], *, bartlett: bool) -> float:
    """gamma_0 + 2 sum_j w_j gamma_j, w_j = 1 (rectangular) or 1 - j / (lag + 1) (Bartlett).

    NaN when not positive beyond the rounding of its terms (`ab.student_t.SUMS_RELATIVE_ERROR`
    of their magnitudes): autocovariances that cancel exactly in theory (every series'
    differential summing to zero under full overlap) leave rounding noise that would
    otherwise become a tiny variance and an enormous statistic.
    """
    lag = len(covariances) - 1
    total, magnitude = covariances[0], covariances[0]
    for j in range(1, lag + 1):
        weighted = 2.0 * (1.0 - j / (lag + 1) if bartlett else 1.0) * covariances[j]
        total += weighted
        magnitude += abs(weighted)
    return total if total > student_t.SUMS_RELATIVE_ERROR * magnitude else math.nan


def _constant(variance: float, mean: float) -> bool:
    """No spread up to rounding, with `ab.scoring`'s tolerance (NaN counts as none)."""
    return not variance > (student_t.NO_SPREAD_RELATIVE * mean) ** 2


def _untested(test: str, samples: int, mean: float, lag: int) -> DieboldMariano:
    return DieboldMariano(test, samples, mean, math.nan, math.nan, lag, False)


def _p_text(p_value: float) -> str:
    """p=0.003, p=0.41; p<0.001 below that (more digits would claim a precision it lacks)."""
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.2g}"
