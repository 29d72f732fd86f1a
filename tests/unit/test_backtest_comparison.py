"""backtest.comparison: the Diebold-Mariano test against scipy and a loop re-implementation."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from forecast_gateway.backtest.comparison import (
    DM_TEST,
    DM_TEST_BARTLETT,
    DieboldMariano,
    diebold_mariano,
    verdict,
)
from forecast_gateway.numerics import FloatArray

ROOT = Path(__file__).resolve().parents[2]
NAN = math.nan


@pytest.fixture(autouse=True)
def _no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def reference(
    loss_a: npt.ArrayLike,
    loss_b: npt.ArrayLike,
    groups: npt.ArrayLike,
    horizon: int,
    step: int,
    *,
    bartlett: bool = False,
) -> tuple[float, float, int]:
    """DM with the HLN correction written out with loops: (statistic, p-value, lag).

    Pairs are (window, window) index pairs of one series, at most `lag`
    origins apart, both with defined losses; a dropped window keeps its place.
    """
    a, b, g = (list(np.asarray(x).ravel()) for x in (loss_a, loss_b, groups))
    present = [i for i in range(len(a)) if math.isfinite(a[i]) and math.isfinite(b[i])]
    d = {i: a[i] - b[i] for i in present}
    n = len(present)
    mean = sum(d.values()) / n
    longest = max(sum(1 for x in g if x == label) for label in set(g))
    lag = min(math.ceil(horizon / step) - 1, longest - 1)
    gamma = [0.0] * (lag + 1)
    for i in present:
        for k in present:
            j = k - i
            if 0 <= j <= lag and g[i] == g[k]:
                gamma[j] += (d[i] - mean) * (d[k] - mean) / n
    weights = [1.0 - j / (lag + 1) if bartlett else 1.0 for j in range(lag + 1)]
    variance = gamma[0] + 2 * sum(weights[j] * gamma[j] for j in range(1, lag + 1))
    dm = mean / math.sqrt(variance / n)
    h = lag + 1
    statistic = dm * math.sqrt((n + 1 - 2 * h + h * (h - 1) / n) / n)
    p_value = 2 * float(stats.t.sf(abs(statistic), n - 1))
    return statistic, p_value, lag


def _losses(seed: int, n: int, shift: float = 0.0) -> tuple[FloatArray, FloatArray]:
    """Two loss series whose differential is positively autocorrelated (an MA(2))."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.3, n + 2)
    common = rng.uniform(0.5, 1.5, n)
    return common + shift + noise[2:] + 0.6 * noise[1:-1] + 0.3 * noise[:-2], common


# -- lag 0: the paired t-test ---------------------------------------------------------------


@pytest.mark.parametrize(("seed", "n"), [(0, 2), (1, 3), (2, 10), (3, 40), (4, 200)])
def test_lag_zero_is_the_paired_t_test(seed: int, n: int) -> None:
    # mean(d) / sqrt(gamma_0 / n) is t * sqrt(n / (n - 1)) (divisor n, not n - 1), and
    # the HLN factor at h = 1 is sqrt((n - 1) / n): together exactly the paired t.
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 0.5, n), rng.normal(1.1, 0.5, n)
    result = diebold_mariano(a, b, groups=np.zeros(n), horizon=4, step=4)
    expected = stats.ttest_rel(a, b)
    assert result.lag == 0
    assert result.test == DM_TEST
    assert result.samples == n
    assert result.statistic == pytest.approx(expected.statistic, rel=1e-10)
    assert result.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    assert result.mean_difference == pytest.approx(np.mean(a - b), rel=1e-12)
    assert result.significant == (expected.pvalue < 0.05)


def test_lag_zero_uncorrected_dm_times_hln_factor() -> None:
    # The same identity written as the brief puts it: the uncorrected DM (variance with
    # divisor n) times the HLN factor sqrt((n - 1) / n) is ttest_rel's statistic.
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=15), rng.normal(size=15)
    d = a - b
    n = d.size
    uncorrected = d.mean() / math.sqrt(d.var(ddof=0) / n)
    hln = math.sqrt((n + 1 - 2 + 0) / n)
    assert uncorrected * hln == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-12)
    result = diebold_mariano(a, b, groups=np.arange(n), horizon=3, step=1)  # one window each
    assert result.lag == 0
    assert result.statistic == pytest.approx(uncorrected * hln, rel=1e-12)


# -- against the loop re-implementation -----------------------------------------------------

CASES = [
    # (seed, series sizes, horizon, step, NaN fraction)
    (0, [40], 3, 1, 0.0),
    (1, [25], 12, 5, 0.0),
    (2, [10, 10, 10], 4, 1, 0.0),
    (3, [12, 7, 20], 6, 2, 0.1),
    (4, [30], 5, 1, 0.2),
    (5, [5, 6, 4, 8, 9], 24, 1, 0.0),  # lag capped at the longest series: 8
    (6, [50, 3], 7, 3, 0.05),
]


@pytest.mark.parametrize(("seed", "sizes", "horizon", "step", "missing"), CASES)
def test_matches_loop_reference(
    seed: int, sizes: list[int], horizon: int, step: int, missing: float
) -> None:
    n = sum(sizes)
    a, b = _losses(seed, n, shift=0.1)
    rng = np.random.default_rng(seed + 100)
    a[rng.random(n) < missing] = NAN
    b[rng.random(n) < missing / 2] = NAN
    groups = np.repeat(np.arange(len(sizes)), sizes)
    result = diebold_mariano(a, b, groups=groups, horizon=horizon, step=step)
    bartlett = result.test == DM_TEST_BARTLETT
    statistic, p_value, lag = reference(a, b, groups, horizon, step, bartlett=bartlett)
    assert result.lag == lag
    assert result.samples == int(np.sum(~(np.isnan(a) | np.isnan(b))))
    assert result.statistic == pytest.approx(statistic, rel=1e-10)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


@pytest.mark.parametrize(
    ("horizon", "step", "lag"),
    [(1, 1, 0), (3, 1, 2), (12, 1, 11), (12, 12, 0), (12, 13, 0), (12, 5, 2), (12, 6, 1)],
)
def test_lag_is_the_last_overlapping_origin(horizon: int, step: int, lag: int) -> None:
    a, b = _losses(7, 60, shift=0.2)
    result = diebold_mariano(a, b, groups=np.zeros(60), horizon=horizon, step=step)
    assert result.lag == lag
    # Windows lag origins apart still overlap, lag + 1 apart do not.
    assert lag * step < horizon <= (lag + 1) * step


def test_lag_is_capped_at_the_longest_series() -> None:
    a, b = _losses(8, 12, shift=0.2)
    groups = np.repeat([0, 1, 2], [4, 5, 3])
    result = diebold_mariano(a, b, groups=groups, horizon=30, step=1)
    assert result.lag == 4
    statistic, _, _ = reference(a, b, groups, 30, 1)
    assert result.statistic == pytest.approx(statistic, rel=1e-10)


def test_p_value_is_student_t_with_n_minus_1_df() -> None:
    a, b = _losses(9, 35, shift=0.15)
    result = diebold_mariano(a, b, groups=np.zeros(35), horizon=3, step=1)
    assert result.p_value == pytest.approx(2 * stats.t.sf(abs(result.statistic), 34), rel=1e-10)
    assert result.significant == (result.p_value < 0.05)


def test_a_clear_difference_is_significant() -> None:
    a, b = _losses(10, 60, shift=0.5)
    result = diebold_mariano(a, b, groups=np.zeros(60), horizon=2, step=1)
    assert result.mean_difference > 0
    assert result.statistic > 0
    assert result.significant
    assert result.p_value < 1e-6


# -- series are independent -----------------------------------------------------------------


def test_cross_series_autocovariance_is_not_counted() -> None:
    first_a, first_b = _losses(11, 15, shift=0.1)
    second_a, second_b = _losses(12, 15, shift=0.3)
    a, b = np.concatenate([first_a, second_a]), np.concatenate([first_b, second_b])
    groups = np.repeat([0, 1], 15)
    split = diebold_mariano(a, b, groups=groups, horizon=3, step=1)
    joined = diebold_mariano(a, b, groups=np.zeros(30), horizon=3, step=1)
    assert split.statistic == pytest.approx(reference(a, b, groups, 3, 1)[0], rel=1e-10)
    assert joined.statistic == pytest.approx(reference(a, b, np.zeros(30), 3, 1)[0], rel=1e-10)
    # The two series' junction adds lag-1 and lag-2 products when taken as one series.
    assert split.statistic != pytest.approx(joined.statistic, rel=1e-6)
    # Which series comes first does not matter, nor how the series are labelled.
    swapped = diebold_mariano(
        np.concatenate([second_a, first_a]),
        np.concatenate([second_b, first_b]),
        groups=np.repeat(["y", "x"], 15),
        horizon=3,
        step=1,
    )
    assert swapped.statistic == pytest.approx(split.statistic, rel=1e-12)
    assert swapped.p_value == pytest.approx(split.p_value, rel=1e-10)


def test_single_window_series_contribute_only_their_variance() -> None:
    # Every window its own series: no autocovariance at all, whatever the horizon: the
    # long-run variance is gamma_0, but HLN still corrects for the declared overlap.
    a, b = _losses(13, 20, shift=0.2)
    result = diebold_mariano(a, b, groups=np.arange(20), horizon=5, step=1)
    assert result.lag == 0  # capped: no two windows of one series
    assert result.statistic == pytest.approx(stats.ttest_rel(a, b).statistic, rel=1e-10)


def test_split_series_are_rejected() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        diebold_mariano(np.ones(4), np.zeros(4), groups=[0, 1, 0, 1], horizon=2, step=1)


# -- the kernel fallback --------------------------------------------------------------------


def test_bartlett_when_the_rectangular_variance_is_not_positive() -> None:
    # An alternating differential: gamma_1 ~ -gamma_0, so gamma_0 + 2 gamma_1 < 0.
    rng = np.random.default_rng(14)
    d = np.tile([1.0, -0.6], 15) + rng.normal(0.0, 0.05, 30)
    b = rng.uniform(1.0, 2.0, 30)
    a = b + d
    result = diebold_mariano(a, b, groups=np.zeros(30), horizon=2, step=1)
    assert result.test == DM_TEST_BARTLETT
    assert result.lag == 1
    centred = d - d.mean()
    gamma = [centred @ centred / 30, centred[1:] @ centred[:-1] / 30]
    assert gamma[0] + 2 * gamma[1] < 0  # the case the fallback is for
    statistic, p_value, _ = reference(a, b, np.zeros(30), 2, 1, bartlett=True)
    assert result.statistic == pytest.approx(statistic, rel=1e-10)
    assert result.p_value == pytest.approx(p_value, rel=1e-9)


def test_bartlett_when_the_rectangular_variance_is_only_rounding() -> None:
    # Full overlap in every series (lag 4 for 5 windows each) and each series' differential
    # centred on the overall mean: the rectangular V is exactly 0 in theory, rounding noise
    # (of either sign) in floats, which must not become an enormous statistic.
    rng = np.random.default_rng(1)
    groups = np.repeat([0, 1, 2], 5)
    for _ in range(5):
        x = rng.normal(size=5)
        x -= x.mean()
        d = np.concatenate([x, -x[::-1], rng.permutation(x)]) + 0.37
        b = rng.uniform(1.0, 2.0, 15)
        result = diebold_mariano(b + d, b, groups=groups, horizon=24, step=1)
        assert result.test == DM_TEST_BARTLETT
        assert result.lag == 4
        statistic, _, _ = reference(b + d, b, groups, 24, 1, bartlett=True)
        assert result.statistic == pytest.approx(statistic, rel=1e-9)
        assert abs(result.statistic) < 10


def test_rectangular_when_positive() -> None:
    a, b = _losses(15, 40, shift=0.1)
    result = diebold_mariano(a, b, groups=np.zeros(40), horizon=3, step=1)
    assert result.test == DM_TEST
    assert result.statistic == pytest.approx(reference(a, b, np.zeros(40), 3, 1)[0], rel=1e-10)
    assert result.statistic != pytest.approx(
        reference(a, b, np.zeros(40), 3, 1, bartlett=True)[0], rel=1e-6
    )


# -- undefined tests ------------------------------------------------------------------------


def _untested(result: DieboldMariano) -> bool:
    return (
        math.isnan(result.statistic)
        and math.isnan(result.p_value)
        and not result.significant
        and not result.tested
    )


def test_nan_pairs_are_dropped_and_keep_their_places() -> None:
    a, b = _losses(16, 20, shift=0.2)
    a[[3, 4, 11]] = NAN
    b[15] = NAN
    result = diebold_mariano(a, b, groups=np.zeros(20), horizon=3, step=1)
    assert result.samples == 16
    keep = ~(np.isnan(a) | np.isnan(b))
    assert result.mean_difference == pytest.approx(np.mean(a[keep] - b[keep]), rel=1e-12)
    assert result.statistic == pytest.approx(reference(a, b, np.zeros(20), 3, 1)[0], rel=1e-10)
    # Not the same as closing the gaps (which would pair windows 2 and 5 at lag 1).
    closed = diebold_mariano(a[keep], b[keep], groups=np.zeros(16), horizon=3, step=1)
    assert closed.statistic != pytest.approx(result.statistic, rel=1e-6)


@pytest.mark.parametrize("n", [0, 1])
def test_fewer_than_two_pairs(n: int) -> None:
    result = diebold_mariano(np.ones(n), np.zeros(n), groups=np.zeros(n), horizon=1, step=1)
    assert _untested(result)
    assert result.samples == n
    assert (math.isnan(result.mean_difference)) == (n == 0)


def test_all_pairs_dropped() -> None:
    result = diebold_mariano([NAN, 1.0, 2.0], [1.0, NAN, NAN], groups=[0, 0, 0], horizon=1, step=1)
    assert _untested(result)
    assert result.samples == 0
    assert math.isnan(result.mean_difference)


def test_constant_differential_is_untestable() -> None:
    b = np.linspace(0.5, 2.0, 12)
    same = diebold_mariano(b, b, groups=np.zeros(12), horizon=2, step=1)
    assert _untested(same) and same.mean_difference == 0.0
    shifted = diebold_mariano(b + 0.1, b, groups=np.zeros(12), horizon=2, step=1)
    assert _untested(shifted)
    assert shifted.mean_difference == pytest.approx(0.1)  # rounding noise is not variance


def test_overlap_too_long_for_the_sample_is_untestable() -> None:
    # One series, every window overlapping every other: h = n, the HLN factor is 0.
    a, b = _losses(17, 6, shift=0.2)
    result = diebold_mariano(a, b, groups=np.zeros(6), horizon=10, step=1)
    assert result.lag == 5
    assert _untested(result)


def test_infinite_losses_are_dropped() -> None:
    a, b = _losses(18, 10, shift=0.2)
    a[2] = math.inf
    result = diebold_mariano(a, b, groups=np.zeros(10), horizon=1, step=1)
    assert result.samples == 9
    keep = np.arange(10) != 2
    assert result.statistic == pytest.approx(stats.ttest_rel(a[keep], b[keep]).statistic)


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="length"):
        diebold_mariano(np.ones(3), np.ones(4), groups=np.zeros(3), horizon=1, step=1)
    with pytest.raises(ValueError, match="length"):
        diebold_mariano(np.ones(3), np.ones(3), groups=np.zeros(2), horizon=1, step=1)
    with pytest.raises(ValueError, match="at least 1"):
        diebold_mariano(np.ones(3), np.ones(3), groups=np.zeros(3), horizon=0, step=1)
    with pytest.raises(ValueError, match="at least 1"):
        diebold_mariano(np.ones(3), np.ones(3), groups=np.zeros(3), horizon=2, step=0)


# -- properties -----------------------------------------------------------------------------

Case = tuple[FloatArray, FloatArray, npt.NDArray[np.int_], int, int]
"""loss_a, loss_b, groups, horizon, step."""
losses = st.floats(0.0, 100.0, allow_subnormal=False) | st.just(NAN)


@st.composite
def comparisons(draw: st.DrawFn) -> Case:
    sizes = draw(st.lists(st.integers(1, 12), min_size=1, max_size=4))
    n = sum(sizes)
    a = draw(hnp.arrays(np.float64, n, elements=losses))
    b = draw(hnp.arrays(np.float64, n, elements=losses))
    return (
        a,
        b,
        np.repeat(np.arange(len(sizes)), sizes),
        draw(st.integers(1, 8)),
        draw(st.integers(1, 4)),
    )


@settings(max_examples=80, deadline=None)
@given(comparisons())
def test_properties(case: Case) -> None:
    a, b, groups, horizon, step = case
    result = diebold_mariano(a, b, groups=groups, horizon=horizon, step=step)
    swapped = diebold_mariano(b, a, groups=groups, horizon=horizon, step=step)
    assert result.samples == swapped.samples
    assert result.lag == swapped.lag <= math.ceil(horizon / step) - 1
    assert result.tested == swapped.tested
    if not result.tested:
        assert _untested(result) and _untested(swapped)
        return
    # a against b is b against a with the sign of the differential flipped.
    assert swapped.statistic == pytest.approx(-result.statistic, rel=1e-9)
    assert swapped.p_value == pytest.approx(result.p_value, rel=1e-9)
    assert 0.0 <= result.p_value <= 1.0
    assert result.significant == (result.p_value < 0.05)
    # Scale-free: the same losses in other units give the same test.
    scaled = diebold_mariano(4.0 * a, 4.0 * b, groups=groups, horizon=horizon, step=step)
    assert scaled.statistic == pytest.approx(result.statistic, rel=1e-9)
    bartlett = result.test == DM_TEST_BARTLETT
    statistic, p_value, lag = reference(a, b, groups, horizon, step, bartlett=bartlett)
    assert result.lag == lag
    assert result.statistic == pytest.approx(statistic, rel=1e-8)
    assert result.p_value == pytest.approx(p_value, rel=1e-7, abs=1e-300)


# -- verdict --------------------------------------------------------------------------------


def _result(**fields: float | int | bool | str) -> DieboldMariano:
    base: dict[str, float | int | bool | str] = {
        "test": DM_TEST,
        "samples": 40,
        "mean_difference": -0.29,
        "statistic": -3.2,
        "p_value": 0.003,
        "lag": 2,
        "significant": True,
    }
    base.update(fields)
    return DieboldMariano(**base)  # type: ignore[arg-type]


def test_verdict_a_more_accurate() -> None:
    text = verdict("seasonal_naive:1", "lstm:2", 0.91, 1.20, _result())
    assert text == (
        "seasonal_naive:1 is more accurate: MASE 0.91 vs 1.2 (-24%), "
        "significant (Diebold-Mariano p=0.003 over 40 windows)"
    )


def test_verdict_b_more_accurate() -> None:
    result = _result(mean_difference=0.5, statistic=4.0, p_value=1e-5)
    text = verdict("a:1", "b:2", 1.5, 1.0, result)
    assert text == (
        "b:2 is more accurate: MASE 1 vs 1.5 (-33%), "
        "significant (Diebold-Mariano p<0.001 over 40 windows)"
    )


def test_verdict_no_significant_difference() -> None:
    result = _result(mean_difference=-0.03, statistic=-0.8, p_value=0.41, significant=False)
    text = verdict("a:1", "b:2", 0.98, 1.01, result)
    assert (
        text == "no significant difference: MASE 0.98 (a:1) vs 1.01 (b:2) (p=0.41 over 40 windows)"
    )


def test_verdict_not_testable() -> None:
    untested = {"statistic": NAN, "p_value": NAN, "significant": False}
    few = verdict("a:1", "b:2", NAN, NAN, _result(samples=1, **untested))
    assert few.startswith("not testable: too few windows") and "(1 window)" in few
    overlap = verdict("a:1", "b:2", 0.9, 1.0, _result(samples=6, lag=5, **untested))
    assert overlap == (
        "not testable: too few windows for the overlap of their forecasts (HAC lag 5, 6 windows)"
    )
    same = verdict("a:1", "b:2", 1.0, 1.0, _result(mean_difference=0.0, **untested))
    assert same == "not testable: a:1 and b:2 have the same MASE on every window (40 windows)"
    constant = verdict("a:1", "b:2", 1.1, 1.0, _result(mean_difference=0.1, **untested))
    assert constant.startswith("not testable: the MASE difference is the same on every window")


def test_verdict_of_a_real_test() -> None:
    a, b = _losses(19, 40, shift=0.5)
    result = diebold_mariano(a, b, groups=np.zeros(40), horizon=2, step=1)
    text = verdict("a:1", "b:2", float(np.mean(a)), float(np.mean(b)), result)
    assert text.startswith("b:2 is more accurate: MASE ")
    assert text.endswith("over 40 windows)")


def test_no_scipy_at_run_time() -> None:
    # scipy.stats costs the gateway ~60 MB of memory; it is a test-only dependency.
    code = (
        "import sys; sys.path[:0] = ['server', 'gen/python']; "
        "import forecast_gateway.backtest.scores, forecast_gateway.backtest.comparison; "
        "print('scipy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
