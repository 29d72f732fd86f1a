"""CQR of a quantile model's intervals (core/cqr.py, core/native.py, ab/pools.add_cqr_scores).

The offsets against a direct implementation of Romano, Patterson & Candes
(2019), the scores against the recorded tracked bounds, how the served
uncertainty says what is conformalized, and the coverage guarantee on
exchangeable synthetic data.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast_gateway.ab import TRACKED, Role
from forecast_gateway.ab.aggregates import UNSCORED, StoredPrediction
from forecast_gateway.ab.pools import CqrScores, add_cqr_scores
from forecast_gateway.core import cqr
from forecast_gateway.core.calibration import Status
from forecast_gateway.core.native import native_uncertainty, tracked_table
from forecast_gateway.numerics import FloatArray, Levels

DECLARED = (0.025, 0.1, 0.5, 0.9, 0.975)


def direct_offset(scores: list[float], coverage: float) -> float:
    """Romano et al. (2019), eq. (7): the (1 - alpha)(1 + 1/n)-th empirical quantile of E."""
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    return sorted(scores)[k - 1] if k <= n else math.nan


@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=0, max_size=60),
    st.sampled_from([0.5, 0.8, 0.9, 0.95]),
)
def test_the_offset_is_the_ceil_n_plus_1_c_th_smallest_score(
    scores: list[float], coverage: float
) -> None:
    got = cqr.offset(np.sort(np.asarray(scores, dtype=np.float64)), coverage)
    want = direct_offset(scores, coverage)
    assert (math.isnan(got) and math.isnan(want)) or got == want


@pytest.mark.parametrize(("coverage", "fewest"), [(0.8, 4), (0.95, 19)])
def test_an_offset_is_nan_below_the_minimum_pool_size(coverage: float, fewest: int) -> None:
    assert cqr.min_scores(coverage) == fewest
    assert math.isnan(cqr.offset(np.arange(fewest - 1, dtype=np.float64), coverage))
    assert cqr.offset(np.arange(fewest, dtype=np.float64), coverage) == fewest - 1


def test_a_positive_offset_widens_a_negative_one_narrows_and_crossing_gives_the_midpoint() -> None:
    lower, upper = np.array([0.0, 0.0, 0.0]), np.array([4.0, 4.0, 4.0])
    low, high = cqr.conformalize(lower, upper, np.array([0.5, -0.5, -3.0]), 2.0)
    assert low.tolist() == [-1.0, 1.0, 2.0]  # step 3: 0 + 6 > 4 - 6, the midpoint
    assert high.tolist() == [5.0, 3.0, 2.0]


def test_nesting_widens_a_wider_coverage_to_contain_the_narrower() -> None:
    eighty = (np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    ninety_five = (np.array([-2.0, -0.5]), np.array([0.5, 2.0]))
    (_, _), (low, high) = cqr.nest([eighty, ninety_five])
    assert low.tolist() == [-2.0, -1.0] and high.tolist() == [1.0, 2.0]


def test_the_offset_table_is_per_coverage_and_step_with_its_pool_sizes() -> None:
    pools = [[np.arange(4.0), np.arange(3.0)], [np.arange(19.0), np.arange(40.0)]]
    table = cqr.offset_table((0.8, 0.95), pools)
    assert table.scores == ((4, 3), (19, 40))
    np.testing.assert_array_equal(table.offsets, [[3.0, np.nan], [18.0, 38.0]])
    assert table.row(0.95) == 1 and table.row(0.9) is None


# -- scores from the recorded tracked bounds ----------------------------------------------


def recorded(
    values: FloatArray, quantiles: FloatArray, scale: float, native: bool = True
) -> StoredPrediction:
    """A stored prediction whose bounds are the model's quantiles as execute records them."""
    table = tracked_table(DECLARED, quantiles, values, scale, TRACKED)
    assert table is not None
    bounds = table.astype("<f4").astype(np.float64).ravel()  # the store keeps float32
    return StoredPrediction("1", Role.SERVED, values, UNSCORED, bounds, scale, native)


def test_scores_are_max_of_lo_minus_y_and_y_minus_hi_over_the_scale_per_tracked_coverage() -> None:
    values = np.array([10.0, 20.0, 30.0])
    quantiles = values[:, None] + np.array([-4.0, -2.0, 0.0, 2.0, 4.0])  # 0.8: +-2, 0.95: +-4
    prediction = recorded(values, quantiles, 2.0)
    before = np.full(3, np.nan)
    actuals = np.array([13.0, 19.0, np.nan])
    pools: CqrScores = {}
    add_cqr_scores(pools, "m", prediction, before, actuals, math.nan)
    for coverage, half in ((0.8, 2.0), (0.95, 4.0)):
        want = cqr.scores(values[:2] - half, values[:2] + half, actuals[:2], 2.0)
        got = [pools[("m", "1", step, coverage)][0] for step in (0, 1)]
        np.testing.assert_allclose(got, want, rtol=1e-6)
    assert sorted(pools) == [("m", "1", s, c) for s in (0, 1) for c in (0.8, 0.95)]
    assert pools[("m", "1", 0, 0.8)] == pytest.approx([0.5])  # 13 is 1 above 12: 1 / 2
    corrected: CqrScores = {}
    add_cqr_scores(corrected, "m", prediction, actuals, np.array([14.0, 19.0, np.nan]), 2.0)
    assert corrected == {}  # a correction adds none


def test_a_point_models_bounds_add_no_cqr_score() -> None:
    values = np.array([10.0])
    prediction = recorded(values, values[:, None] + np.array([-4.0, -2, 0, 2, 4]), 1.0, False)
    pools: CqrScores = {}
    add_cqr_scores(pools, "m", prediction, np.full(1, np.nan), np.array([11.0]), 1.0)
    assert pools == {}


# -- what a forecast serves ---------------------------------------------------------------


STEPS = np.array([[8.0, 9.0, 10.0, 11.0, 12.0], [18.0, 19.0, 20.0, 21.0, 22.0]])
"""Two steps: 0.8 band 9..11 and 19..21, 0.95 band 8..12 and 18..22."""


def offsets(eighty: list[float], ninety_five: list[float], sizes: int = 40) -> cqr.CqrTable:
    table = np.array([eighty, ninety_five])
    return cqr.CqrTable((0.8, 0.95), table, ((sizes,) * 2, (sizes,) * 2))


def test_the_tracked_intervals_are_cqr_and_calibrated() -> None:
    result = native_uncertainty(
        DECLARED, STEPS, Levels((0.95, 0.8)), 2.0, offsets([0.5, -0.25], [1.0, 0.0])
    )
    assert result.status is Status.CALIBRATED and result.detail == ""
    assert "CQR" in result.method and "40 scores" in result.method
    ninety_five, eighty = result.intervals
    assert eighty.lower.tolist() == [8.0, 19.5] and eighty.upper.tolist() == [12.0, 20.5]
    assert ninety_five.lower.tolist() == [6.0, 18.0] and ninety_five.upper.tolist() == [14.0, 22.0]
    assert result.scores == (40, 40)


def test_an_untracked_coverage_and_quantiles_stay_the_models_own_and_say_so() -> None:
    result = native_uncertainty(
        DECLARED, STEPS, Levels((0.8, 0.9), (0.5,)), 1.0, offsets([1.0, 1.0], [0.0, 0.0])
    )
    assert result.status is Status.NOT_CALIBRATED
    eighty, ninety = result.intervals
    assert eighty.lower.tolist() == [8.0, 18.0]  # CQR
    assert ninety.lower.tolist() == pytest.approx([8 + 1 / 3, 18 + 1 / 3])  # the model's
    assert result.quantiles[0].values.tolist() == [10.0, 20.0]
    assert result.detail.startswith("CQR for the 0.8 interval")
    assert "CQR is kept for the tracked coverages 80% and 95%" in result.detail
    assert "0.9 interval" in result.detail and "quantiles" in result.detail


def test_too_few_scores_keep_the_models_quantiles_and_say_how_many_are_needed() -> None:
    table = cqr.CqrTable((0.8, 0.95), np.array([[0.5, np.nan], [np.nan] * 2]), ((9, 3), (9, 3)))
    result = native_uncertainty(DECLARED, STEPS, Levels((0.8,)), 1.0, table)
    assert result.status is Status.NOT_CALIBRATED and result.method.startswith("model quantiles")
    assert result.intervals[0].lower.tolist() == [9.0, 19.0]
    assert "not conformalized" in result.detail
    assert "needs 4 scores per horizon step, step 2 has 3" in result.detail
    assert result.scores == (9, 3)


@pytest.mark.parametrize("scale", [0.0, math.nan])
def test_no_scale_no_cqr(scale: float) -> None:
    result = native_uncertainty(DECLARED, STEPS, Levels((0.8,)), scale, offsets([1, 1], [1, 1]))
    assert result.status is Status.NOT_CALIBRATED and "no scale" in result.detail
    assert result.intervals[0].lower.tolist() == [9.0, 19.0]


# -- the guarantee ------------------------------------------------------------------------


def test_cqr_covers_at_least_c_where_a_too_narrow_model_does_not() -> None:
    """Exchangeable synthetic data, heteroscedastic: y = mu + sigma * z, the model's 80% band
    half as wide as the true one. Mean over 200 calibration draws of the held-out coverage."""
    rng = np.random.default_rng(0)
    z80 = 1.2815515655446004
    n, held_out, draws = 100, 2000, 200
    coverages, raw = [], []
    for _ in range(draws):
        sigma = rng.uniform(0.5, 3.0, n + held_out)  # each point's scale
        mu = rng.normal(0.0, 10.0, n + held_out)
        y = mu + sigma * rng.standard_normal(n + held_out)
        lower, upper = mu - 0.5 * z80 * sigma, mu + 0.5 * z80 * sigma
        pool = np.sort(cqr.scores(lower[:n], upper[:n], y[:n], 1.0) / sigma[:n])
        q = cqr.offset(pool, 0.8)
        scaled = cqr.conformalize(lower[n:] / sigma[n:], upper[n:] / sigma[n:], q, 1.0)
        low, high = scaled[0] * sigma[n:], scaled[1] * sigma[n:]  # lo - sigma Q, hi + sigma Q
        coverages.append(np.mean((low <= y[n:]) & (y[n:] <= high)))
        raw.append(np.mean((lower[n:] <= y[n:]) & (y[n:] <= upper[n:])))
    assert np.mean(coverages) >= 0.8 - 0.005
    assert np.mean(coverages) <= 0.8 + 1 / (n + 1) + 0.005  # and not much more
    assert np.mean(raw) < 0.55
