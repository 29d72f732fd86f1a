import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import stats

from forecast_gateway import student_t

DEGREES = [0.5, 1, 1.5, 2, 3, 5.7, 10, 30, 100, 1e4, 1e6]
MAGNITUDES = [1e-3, 1e-2, 0.1, 0.5, 1, 1.5, 2, 2.5, 3, 5, 7, 10, 20, 30, 50]
STATISTICS = [0.0, math.inf, -math.inf, *MAGNITUDES, *(-t for t in MAGNITUDES)]
PROBABILITIES = [1e-10, 1e-6, 1e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.3, 0.4, 0.45]
QUANTILES = [*PROBABILITIES, *(1 - q for q in PROBABILITIES)]


# -- the survival function --------------------------------------------------------------------


@pytest.mark.parametrize("df", DEGREES)
@pytest.mark.parametrize("t", STATISTICS)
def test_sf_matches_scipy(t: float, df: float) -> None:
    expected = float(stats.t.sf(t, df))
    assert student_t.sf(t, df) == pytest.approx(expected, rel=1e-11, abs=1e-300)


@pytest.mark.parametrize("df", DEGREES)
def test_two_sided_p_values_match_scipy(df: float) -> None:
    worst = max(
        abs(2 * student_t.sf(abs(t), df) - 2 * float(stats.t.sf(abs(t), df))) for t in STATISTICS
    )
    assert worst < 1e-13


@pytest.mark.parametrize("df", [*DEGREES, 1e10, math.inf])
def test_sf_special_values(df: float) -> None:
    assert student_t.sf(0.0, df) == 0.5
    assert student_t.sf(-0.0, df) == 0.5
    assert student_t.sf(math.inf, df) == 0.0
    assert student_t.sf(-math.inf, df) == 1.0
    assert math.isnan(student_t.sf(math.nan, df))


@pytest.mark.parametrize("df", [0.0, -1.0, math.nan, -math.inf])
def test_sf_without_positive_degrees_of_freedom_is_nan(df: float) -> None:
    assert math.isnan(student_t.sf(1.0, df))


def test_sf_of_a_huge_statistic_is_the_power_law_tail_not_zero() -> None:
    # P[T > t] ~ C t**-df: with df = 0.5 it is still ~1e-100 at t = 1e200 (t**2 overflows).
    assert student_t.sf(1e200, 0.5) == pytest.approx(float(stats.t.sf(1e200, 0.5)), rel=1e-11)
    assert student_t.sf(1e300, 1.0) == pytest.approx(1 / (math.pi * 1e300), rel=1e-12)
    assert student_t.sf(-1e300, 1.0) == 1.0


@pytest.mark.parametrize("t", [1e-3, 0.5, 1.96, 3, 8])
def test_large_degrees_of_freedom_approach_the_normal(t: float) -> None:
    normal = 0.5 * math.erfc(t / math.sqrt(2))
    assert student_t.sf(t, math.inf) == normal
    assert student_t.sf(t, 1e300) == pytest.approx(normal, rel=1e-14)
    assert student_t.sf(t, 1e12) == pytest.approx(float(stats.t.sf(t, 1e12)), rel=1e-11)


@pytest.mark.parametrize("t", [0.5, 1.9, 2.5, 4, 10])
def test_sf_is_continuous_where_it_switches_to_the_asymptotic_tail(t: float) -> None:
    below = student_t.sf(t, student_t.ASYMPTOTIC_DF * (1 - 1e-12))
    assert student_t.sf(t, student_t.ASYMPTOTIC_DF) == pytest.approx(below, rel=1e-11)


@pytest.mark.parametrize("df", [*DEGREES, 1e8])
def test_sf_is_accurate_near_the_median_from_below(df: float) -> None:
    # sf(-t) = 1/2 + P[0 < T < t] is not computed as 1 - sf(t), so it keeps its digits.
    for t in MAGNITUDES:
        assert student_t.sf(-t, df) == pytest.approx(float(stats.t.sf(-t, df)), rel=1e-13)


@given(st.floats(-1e6, 1e6), st.floats(0.05, 1e9))
def test_sf_is_a_symmetric_probability(t: float, df: float) -> None:
    upper = student_t.sf(t, df)
    assert 0.0 <= upper <= 1.0
    assert upper + student_t.sf(-t, df) == pytest.approx(1.0, abs=1e-15)


# -- the quantile -----------------------------------------------------------------------------


@pytest.mark.parametrize("df", DEGREES)
@pytest.mark.parametrize("q", QUANTILES)
def test_ppf_matches_scipy(q: float, df: float) -> None:
    assert student_t.ppf(q, df) == pytest.approx(float(stats.t.ppf(q, df)), rel=1e-10)


@pytest.mark.parametrize("df", [1, 2.5, 7, 50, 1e4, 1e9])
def test_ppf_975_the_confidence_interval_quantile(df: float) -> None:
    assert student_t.ppf(0.975, df) == pytest.approx(float(stats.t.ppf(0.975, df)), rel=1e-12)


@pytest.mark.parametrize("q", [1e-300, 1e-12, 0.1, 0.5 - 1e-12, 0.5 + 1e-9, 0.9, 1 - 1e-15])
def test_ppf_of_the_cauchy_distribution_is_the_tangent(q: float) -> None:
    # df = 1 has the closed form tan(pi (q - 1/2)) (= -cot(pi q), accurate in the tails);
    # near the median scipy is off by up to 1e-5 relative (its 0.5 - 1e-12 quantile).
    if 0.25 < q < 0.75:
        expected = math.tan(math.pi * (q - 0.5))
    else:
        expected = -1 / math.tan(math.pi * q) if q < 0.5 else 1 / math.tan(math.pi * (1 - q))
    assert student_t.ppf(q, 1.0) == pytest.approx(expected, rel=1e-12)


@given(
    st.floats(1e-200, 0.5, exclude_max=True)
    | st.floats(0.5, 1, exclude_min=True, exclude_max=True),
    st.floats(0.1, 1e9),
)
def test_ppf_inverts_sf(q: float, df: float) -> None:
    t = student_t.ppf(q, df)
    assume(math.isfinite(t))  # beyond the largest float for tiny df and tiny q
    assert student_t.sf(abs(t), df) == pytest.approx(min(q, 1 - q), rel=1e-11)
    assert (t > 0) is (q > 0.5)


def test_ppf_special_values() -> None:
    assert student_t.ppf(0.5, 3.0) == 0.0
    assert student_t.ppf(0.0, 3.0) == -math.inf
    assert student_t.ppf(1.0, 3.0) == math.inf
    for q, df in [(math.nan, 3.0), (-0.1, 3.0), (1.1, 3.0), (0.9, math.nan), (0.9, 0.0)]:
        assert math.isnan(student_t.ppf(q, df))
    assert student_t.ppf(0.975, math.inf) == pytest.approx(1.959963984540054, rel=1e-14)


def test_ppf_overflows_to_infinity_when_the_quantile_is_past_the_largest_float() -> None:
    # df = 0.5: P[T > t] ~ t**-0.5, so the 1e-200 tail is near t = 1e400.
    assert student_t.ppf(1e-200, 0.5) == -math.inf
    assert student_t.ppf(1 - 1e-16, 0.5) == pytest.approx(float(stats.t.ppf(1 - 1e-16, 0.5)))
