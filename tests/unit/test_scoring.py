import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from forecast_gateway.ab.scoring import (
    PAIRED_TEST,
    WELCH_TEST,
    Comparison,
    compare,
    score,
)
from forecast_gateway.numerics import naive_scale

ROOT = Path(__file__).resolve().parents[2]

# No subnormals: halving 5e-324 rounds to 0, which no scale-free metric survives.
finite = st.floats(
    min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False
)
positive = st.floats(min_value=1e-3, max_value=1e3)

# Nearly constant samples make numpy (and scipy, the reference) warn; compare() must not.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")


def series(size: int) -> st.SearchStrategy[npt.NDArray[Any]]:
    return arrays(np.float64, size, elements=finite)


# -- naive_scale and score on known numbers ---------------------------------------------


def test_naive_scale_is_the_mean_absolute_one_step_change() -> None:
    assert naive_scale(np.array([1.0, 2.0, 4.0, 3.0])) == pytest.approx((1 + 2 + 1) / 3)


@pytest.mark.parametrize(
    "window", [[5.0, 5.0, 5.0], [7.0], [], [1e6, 1e6 * (1 + 1e-15), 1e6]], ids=str
)
def test_naive_scale_of_a_constant_or_too_short_window_is_zero(window: list[float]) -> None:
    assert naive_scale(np.array(window)) == 0.0


def test_score_on_known_numbers() -> None:
    result = score(np.array([1.0, 2.0, 3.0]), np.array([2.0, 2.0, 5.0]), scale=1.5)
    assert result.steps == 3
    assert result.mae == pytest.approx(1.0)
    assert result.smape == pytest.approx(100 * (2 / 3 + 0 + 4 / 8) / 3)
    assert result.mase == pytest.approx(1.0 / 1.5)


def test_nan_actuals_are_steps_not_reported_yet() -> None:
    result = score(np.array([1.0, 2.0, 3.0]), np.array([2.0, np.nan, 5.0]), scale=1.0)
    assert result.steps == 2
    assert result.mae == pytest.approx(1.5)
    assert result.smape == pytest.approx(100 * (2 / 3 + 4 / 8) / 2)


def test_no_reported_step_scores_nan() -> None:
    result = score(np.array([1.0, 2.0]), np.array([np.nan, np.nan]), scale=1.0)
    assert result.steps == 0
    assert math.isnan(result.mae) and math.isnan(result.smape) and math.isnan(result.mase)


def test_smape_zero_over_zero_is_a_perfect_step_and_zero_vs_nonzero_is_200() -> None:
    assert score(np.zeros(3), np.zeros(3), scale=1.0).smape == 0.0
    assert score(np.zeros(2), np.array([5.0, -1.0]), scale=1.0).smape == pytest.approx(200.0)


def test_mase_is_nan_when_the_window_was_constant() -> None:
    result = score(np.array([1.0]), np.array([2.0]), scale=naive_scale(np.full(8, 3.0)))
    assert result.mae == 1.0
    assert math.isnan(result.mase)


def test_score_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="2 forecast values but 3 actuals"):
        score(np.zeros(2), np.zeros(3), scale=1.0)


# -- score properties ---------------------------------------------------------------------


@given(st.integers(1, 32).flatmap(lambda n: st.tuples(series(n), series(n))), positive)
def test_score_ranges(pair: tuple[npt.NDArray[Any], npt.NDArray[Any]], scale: float) -> None:
    values, actuals = pair
    result = score(values, actuals, scale)
    assert result.steps == values.size
    assert result.mae >= 0
    assert 0.0 <= result.smape <= 200.0 + 1e-9
    assert result.mase == pytest.approx(result.mae / scale)


@given(st.integers(1, 32).flatmap(series), positive)
def test_a_perfect_forecast_scores_zero(values: npt.NDArray[Any], scale: float) -> None:
    result = score(values, values.copy(), scale)
    assert (result.mae, result.smape, result.mase) == (0.0, 0.0, 0.0)


@given(st.integers(1, 32).flatmap(lambda n: st.tuples(series(n), series(n))))
def test_smape_is_symmetric(pair: tuple[npt.NDArray[Any], npt.NDArray[Any]]) -> None:
    values, actuals = pair
    assert score(values, actuals, 1.0).smape == pytest.approx(score(actuals, values, 1.0).smape)


@given(
    st.integers(2, 32).flatmap(
        lambda n: st.tuples(series(n), series(n), arrays(np.bool_, n, elements=st.booleans()))
    )
)
def test_unreported_steps_are_ignored(
    pair: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]],
) -> None:
    values, actuals, missing = pair
    assume(not missing.all())
    masked = np.where(missing, np.nan, actuals)
    assert score(values, masked, 2.0) == score(values[~missing], actuals[~missing], 2.0)


@given(
    st.integers(2, 32).flatmap(lambda n: st.tuples(series(n), series(n), series(n))),
    st.floats(1e-2, 1e2),
)
def test_smape_and_mase_are_scale_free(
    triple: tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]], factor: float
) -> None:
    values, actuals, window = triple
    scale = naive_scale(window)
    assume(scale > 1e-3)
    plain = score(values, actuals, scale)
    scaled = score(values * factor, actuals * factor, naive_scale(window * factor))
    assert scaled.smape == pytest.approx(plain.smape, rel=1e-9, abs=1e-9)
    assert scaled.mase == pytest.approx(plain.mase, rel=1e-9, abs=1e-12)


# -- compare --------------------------------------------------------------------------------


def test_paired_matches_scipy() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 0.3, 40)
    b = a + rng.normal(0.1, 0.2, 40)
    result = compare(a, b, paired=True)
    reference = stats.ttest_rel(a, b)
    interval = reference.confidence_interval(0.95)
    assert result.test == PAIRED_TEST == "paired t-test"
    assert result.samples == 40
    assert result.mean_difference == pytest.approx(float(np.mean(a - b)))
    assert result.p_value == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))
    assert result.significant is bool(reference.pvalue < 0.05)


def test_welch_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(1.0, 0.3, 25)
    b = rng.normal(1.2, 0.9, 60)
    result = compare(a, b, paired=False)
    reference = stats.ttest_ind(a, b, equal_var=False)
    interval = reference.confidence_interval(0.95)
    assert result.test == WELCH_TEST == "Welch two-sample t-test"
    assert result.samples == 25
    assert result.mean_difference == pytest.approx(float(a.mean() - b.mean()))
    assert result.p_value == pytest.approx(reference.pvalue)
    assert (result.ci_low, result.ci_high) == pytest.approx((interval.low, interval.high))


@pytest.mark.parametrize("paired", [True, False])
def test_clearly_different_samples_are_significant(paired: bool) -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(1.0, 0.2, 50)
    b = rng.normal(2.0, 0.2, 50)
    result = compare(a, b, paired=paired)
    assert result.significant
    assert result.p_value < 1e-6
    assert result.ci_low < result.mean_difference < result.ci_high < 0


@pytest.mark.parametrize("paired", [True, False])
def test_same_distribution_is_rarely_significant(paired: bool) -> None:
    rng = np.random.default_rng(4)
    trials = 400
    hits = sum(
        compare(rng.normal(1, 0.5, 30), rng.normal(1, 0.5, 30), paired=paired).significant
        for _ in range(trials)
    )
    assert hits / trials < 0.09  # nominal 5%


def test_confidence_interval_covers_the_true_difference_about_95_percent() -> None:
    rng = np.random.default_rng(5)
    trials = 400
    covered = 0
    for _ in range(trials):
        result = compare(rng.normal(1.0, 0.4, 20), rng.normal(1.3, 1.0, 35), paired=False)
        covered += result.ci_low <= -0.3 <= result.ci_high
    assert 0.91 <= covered / trials <= 0.99


@given(
    st.integers(2, 20).flatmap(
        lambda n: st.tuples(
            arrays(np.float64, n, elements=st.floats(0, 10)),
            arrays(np.float64, n, elements=st.floats(0, 10)),
        )
    ),
    st.booleans(),
)
def test_swapping_sides_negates_the_difference(
    pair: tuple[npt.NDArray[Any], npt.NDArray[Any]], paired: bool
) -> None:
    a, b = pair
    forward, backward = compare(a, b, paired=paired), compare(b, a, paired=paired)
    assert backward.mean_difference == pytest.approx(-forward.mean_difference, abs=1e-12)
    assert backward.samples == forward.samples
    assert forward.tested == backward.tested
    if forward.tested:
        assert backward.p_value == pytest.approx(forward.p_value, abs=1e-12)
        assert backward.ci_low == pytest.approx(-forward.ci_high, abs=1e-9)


@pytest.mark.parametrize(
    ("a", "b", "paired", "samples", "mean"),
    [
        ([1.0], [2.0], True, 1, -1.0),
        ([], [], True, 0, math.nan),
        ([1.0], [2.0, 3.0, 4.0], False, 1, -2.0),
        ([1.0, 2.0], [], False, 0, math.nan),
    ],
)
def test_too_few_samples_is_not_tested(
    a: list[float], b: list[float], paired: bool, samples: int, mean: float
) -> None:
    result = compare(a, b, paired=paired)
    assert result.samples == samples
    assert result.mean_difference == pytest.approx(mean, nan_ok=True)
    assert not result.tested and not result.significant
    assert math.isnan(result.p_value) and math.isnan(result.ci_low) and math.isnan(result.ci_high)


@pytest.mark.parametrize(
    ("a", "b", "paired", "mean"),
    [
        ([1.0, 2.0, 3.0], [1.0, 2.0, 3.0], True, 0.0),  # identical: no difference at all
        ([1.0, 2.0, 3.0], [0.5, 1.5, 2.5], True, 0.5),  # constant difference: t undefined
        ([1.0, 1.0, 1.0], [2.0, 2.0], False, -1.0),  # both groups constant
    ],
)
def test_zero_variance_is_not_tested(
    a: list[float], b: list[float], paired: bool, mean: float
) -> None:
    result = compare(a, b, paired=paired)
    assert result.mean_difference == pytest.approx(mean)
    assert not result.tested and not result.significant
    assert math.isnan(result.ci_low)


def test_welch_with_one_constant_group_is_the_one_sample_test() -> None:
    varying = np.array([0.8, 1.1, 1.4, 0.9, 1.2])
    constant = np.full(4, 2.0)
    result = compare(constant, varying, paired=False)
    reference = stats.ttest_1samp(varying, 2.0)
    assert result.test == WELCH_TEST
    assert result.p_value == pytest.approx(reference.pvalue)
    interval = reference.confidence_interval(0.95)
    assert (result.ci_low, result.ci_high) == pytest.approx(
        (2.0 - interval.high, 2.0 - interval.low)
    )


def test_paired_drops_pairs_with_a_nan() -> None:
    result = compare([1.0, math.nan, 2.0, 4.0], [0.5, 1.0, math.nan, 3.0], paired=True)
    assert result.samples == 2
    assert result.mean_difference == pytest.approx(0.75)


def test_paired_requires_equal_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        compare([1.0, 2.0], [1.0], paired=True)


# -- compare against scipy's t-tests on random samples -------------------------------------
# compare() computes the tests from the sample moments (no scipy at run time); these pin
# its p-values and intervals to scipy's on many samples, sizes and spreads.


def _assert_matches(result: Comparison, p_value: float, interval: tuple[float, float]) -> None:
    assert abs(result.p_value - p_value) < 1e-12
    assert (result.ci_low, result.ci_high) == pytest.approx(interval, rel=1e-12, abs=1e-12)
    assert result.significant is bool(p_value < 0.05)


def _scipy(reference: Any, shift: float = 0.0) -> tuple[float, tuple[float, float]]:
    """A scipy test result's p-value and 95% interval (minus `shift`)."""
    interval = reference.confidence_interval(0.95)
    return float(reference.pvalue), (interval.low - shift, interval.high - shift)


@pytest.mark.parametrize("seed", range(40))
def test_paired_matches_scipy_on_random_samples(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 200))
    a = rng.lognormal(0.0, rng.uniform(0.1, 1.0), n)
    b = a + rng.normal(rng.uniform(-0.5, 0.5), rng.uniform(0.01, 2.0), n)
    _assert_matches(compare(a, b, paired=True), *_scipy(stats.ttest_rel(a, b)))


@pytest.mark.parametrize("seed", range(40))
def test_welch_matches_scipy_on_random_samples(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    a = rng.normal(1.0, rng.uniform(0.01, 2.0), int(rng.integers(2, 150)))
    b = rng.normal(rng.uniform(0.0, 2.0), rng.uniform(0.01, 3.0), int(rng.integers(2, 150)))
    _assert_matches(compare(a, b, paired=False), *_scipy(stats.ttest_ind(a, b, equal_var=False)))


@pytest.mark.parametrize("seed", range(20))
def test_welch_with_a_constant_group_matches_scipy_one_sample_test(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    varying = rng.normal(1.0, rng.uniform(0.01, 2.0), int(rng.integers(2, 100)))
    level = float(rng.normal(1.0, 1.0))
    constant = np.full(int(rng.integers(2, 10)), level)
    # The one-sample interval is of mean(varying); compare()'s is of the difference.
    p_value, (low, high) = _scipy(stats.ttest_1samp(varying, level), shift=level)
    _assert_matches(compare(varying, constant, paired=False), p_value, (low, high))
    _assert_matches(compare(constant, varying, paired=False), p_value, (-high, -low))


@pytest.mark.parametrize("paired", [True, False])
def test_many_samples_match_scipy(paired: bool) -> None:
    # Tens of thousands of degrees of freedom: the asymptotic branch of student_t.
    rng = np.random.default_rng(7)
    a = rng.normal(1.0, 1.0, 30_000)
    b = a + rng.normal(0.01, 1.0, 30_000) if paired else rng.normal(1.02, 2.0, 20_000)
    reference = stats.ttest_rel(a, b) if paired else stats.ttest_ind(a, b, equal_var=False)
    _assert_matches(compare(a, b, paired=paired), *_scipy(reference))


def test_the_gateway_does_not_import_scipy() -> None:
    # scipy.stats costs the gateway process ~60 MB of memory; it is a test-only dependency.
    code = (
        "import sys; sys.path[:0] = ['server', 'gen/python']; "
        "import forecast_gateway.api.server; print('scipy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"
