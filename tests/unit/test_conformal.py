"""forecast_gateway.core.conformal: the split-conformal guarantee, measured, and its invariants.

The guarantee (the module docstring): with n calibration scores and a new
score exchangeable with them (no ties),

- P(y <= q_tau) lies in [tau, tau + 1/(n + 1)];
- P(lower_c <= y <= upper_c) lies in [c, c + 2/(n + 1)] (equal-tailed).

It holds on average over calibration sets, so the test repeats
calibrate-then-test many times (vectorized) and compares the mean hit rate
with that bracket, widened by SIGMAS standard errors of the estimate (the
standard deviation of the per-repetition hit rates over sqrt(repetitions)).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forecast_gateway.core.conformal import (
    bound_table,
    interval_ranks,
    min_scores_for_interval,
    min_scores_for_quantile,
    quantile_rank,
    sorted_pool,
)
from forecast_gateway.numerics import Levels

FloatArray = npt.NDArray[np.float64]
Draw = Callable[[np.random.Generator, tuple[int, int]], FloatArray]

COVERAGES = (0.8, 0.95)
QUANTILES = (0.05, 0.1, 0.5, 0.9)
LEVELS = Levels(COVERAGES, QUANTILES)
REPETITIONS = 1500
"""Calibrate-then-test repetitions per (distribution, n)."""
TESTS_PER_REPETITION = 40
"""New scores drawn per calibration set (the per-repetition hit rate averages them)."""
SIGMAS = 4.0
"""Sampling tolerance: the estimate may fall this many standard errors outside the bracket.
60 one-sided checks at 4 SE: a false alarm about once in 500 seeds; the seed is fixed."""

DISTRIBUTIONS: dict[str, Draw] = {
    "normal": lambda rng, shape: rng.normal(0.0, 1.0, shape),
    "exponential (skewed)": lambda rng, shape: rng.exponential(1.0, shape),
    "lognormal (skewed)": lambda rng, shape: rng.lognormal(0.0, 1.0, shape) - 1.0,
    "student t, 1.5 df (heavy tails)": lambda rng, shape: rng.standard_t(1.5, shape),
    "cauchy (no mean)": lambda rng, shape: rng.standard_cauchy(shape) * 3.0 + 10.0,
}


def hit_rate(hits: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """Mean hit rate over repetitions and its standard error."""
    per_repetition = hits.mean(axis=1)
    se = per_repetition.std(ddof=1) / math.sqrt(hits.shape[0])
    return float(per_repetition.mean()), float(se)


@pytest.mark.parametrize("n", [19, 99, 250])
@pytest.mark.parametrize("distribution", sorted(DISTRIBUTIONS))
def test_coverage_and_quantile_hit_rates_hold_the_guarantee(distribution: str, n: int) -> None:
    seed = sorted(DISTRIBUTIONS).index(distribution) * 1000 + n
    rng = np.random.default_rng(seed)
    draw = DISTRIBUTIONS[distribution]
    calibration = draw(rng, (REPETITIONS, n))
    new = draw(rng, (REPETITIONS, TESTS_PER_REPETITION))
    table = bound_table([sorted_pool(row) for row in calibration], LEVELS)  # [rows, repetitions]
    slack = 1.0 / (n + 1)
    for index, coverage in enumerate(COVERAGES):
        lower, upper = table[2 * index][:, None], table[2 * index + 1][:, None]
        if n < min_scores_for_interval(coverage):  # 95% at n = 19: none, never a made-up one
            assert np.isnan(lower).all() and np.isnan(upper).all()
            continue
        mean, se = hit_rate((lower <= new) & (new <= upper))
        low, high = coverage, coverage + 2 * slack
        assert low - SIGMAS * se <= mean <= high + SIGMAS * se, (
            f"{distribution}, n={n}: {coverage:g} interval covered {mean:.4f} "
            f"(se {se:.4f}), guarantee [{low:.4f}, {high:.4f}]"
        )
    for index, level in enumerate(QUANTILES):
        quantile = table[2 * len(COVERAGES) + index][:, None]
        assert np.isfinite(quantile).all()  # n >= 19 is enough for every level here
        mean, se = hit_rate(new <= quantile)
        low, high = level, level + slack
        assert low - SIGMAS * se <= mean <= high + SIGMAS * se, (
            f"{distribution}, n={n}: P(y <= q_{level:g}) = {mean:.4f} "
            f"(se {se:.4f}), guarantee [{low:.4f}, {high:.4f}]"
        )


def test_the_measurement_would_catch_an_off_by_one_rank() -> None:
    """The tolerance is tight enough: one rank lower on the upper bound fails the check."""
    n, coverage = 19, 0.8
    rng = np.random.default_rng(7)
    calibration = np.sort(rng.normal(size=(REPETITIONS, n)), axis=1)
    new = rng.normal(size=(REPETITIONS, TESTS_PER_REPETITION))
    low, high = interval_ranks(n, coverage)
    lower, upper = calibration[:, low - 1, None], calibration[:, high - 2, None]  # high - 1
    mean, se = hit_rate((lower <= new) & (new <= upper))
    assert mean < coverage - SIGMAS * se


# -- ranks and thresholds -----------------------------------------------------------------


def test_ranks_follow_the_formulas() -> None:
    assert interval_ranks(19, 0.8) == (2, 18)  # floor(20 * 0.1), ceil(20 * 0.9)
    assert interval_ranks(39, 0.95) == (1, 39)
    assert interval_ranks(99, 0.95) == (2, 98)  # floor(2.5), ceil(97.5)
    assert quantile_rank(19, 0.9) == 18  # ceil(20 * 0.9)
    assert quantile_rank(99, 0.5) == 50
    assert quantile_rank(5, 0.01) == 1  # never below the smallest score


@pytest.mark.parametrize(
    ("coverage", "needed"), [(0.5, 3), (0.8, 9), (0.9, 19), (0.95, 39), (0.99, 199)]
)
def test_an_interval_needs_the_documented_number_of_scores(coverage: float, needed: int) -> None:
    assert min_scores_for_interval(coverage) == needed
    for n, exists in ((needed - 1, False), (needed, True)):
        table = bound_table([sorted_pool(np.arange(float(n)))], Levels(coverages=(coverage,)))
        assert bool(np.isfinite(table).all()) is exists, (coverage, n)
        assert bool(np.isnan(table).all()) is not exists, (coverage, n)


@pytest.mark.parametrize(
    ("level", "needed"), [(0.1, 1), (0.5, 1), (0.8, 4), (0.9, 9), (0.95, 19), (0.975, 39)]
)
def test_a_quantile_needs_the_documented_number_of_scores(level: float, needed: int) -> None:
    assert min_scores_for_quantile(level) == needed
    for n, exists in ((needed - 1, False), (needed, True)):
        table = bound_table([sorted_pool(np.arange(float(n)))], Levels(quantiles=(level,)))
        assert bool(np.isfinite(table).all()) is exists, (level, n)


probabilities = st.floats(0.005, 0.995, allow_nan=False).map(lambda p: round(p, 3))


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), coverage=probabilities, level=probabilities)
def test_nan_exactly_when_too_few_scores(n: int, coverage: float, level: float) -> None:
    pool = sorted_pool(np.linspace(-1.0, 1.0, n))
    table = bound_table([pool], Levels((coverage,), (level,)))
    assert bool(np.isfinite(table[0:2]).all()) is (n >= min_scores_for_interval(coverage))
    assert bool(np.isnan(table[0:2]).all()) is (n < min_scores_for_interval(coverage))
    assert bool(np.isfinite(table[2]).all()) is (n >= min_scores_for_quantile(level))


# -- invariants over arbitrary pools -------------------------------------------------------

pools = st.lists(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False), min_size=0, max_size=120),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    steps=pools,
    coverages=st.lists(probabilities, min_size=1, max_size=6, unique=True),
    levels=st.lists(probabilities, min_size=1, max_size=8, unique=True),
)
def test_intervals_nest_quantiles_rise_and_lower_stays_below_upper(
    steps: list[list[float]], coverages: list[float], levels: list[float]
) -> None:
    sorted_coverages, sorted_levels = sorted(coverages), sorted(levels)
    table = bound_table(
        [sorted_pool(step) for step in steps], Levels(tuple(sorted_coverages), tuple(sorted_levels))
    )
    intervals = table[: 2 * len(coverages)]
    lower, upper = intervals[0::2], intervals[1::2]
    quantiles = table[2 * len(coverages) :]
    with np.errstate(invalid="ignore"):
        both = np.isfinite(lower) & np.isfinite(upper)
        assert (lower[both] <= upper[both]).all()
        assert (np.isfinite(lower) == np.isfinite(upper)).all()
        for narrow, wide in zip(range(len(coverages) - 1), range(1, len(coverages)), strict=True):
            present = both[wide]  # a wider interval exists only where the narrower one does
            assert both[narrow][present].all()
            assert (lower[wide][present] <= lower[narrow][present]).all()
            assert (upper[narrow][present] <= upper[wide][present]).all()
        for below, above in itertools.pairwise(quantiles):
            present = np.isfinite(above)
            assert np.isfinite(below)[present].all()
            assert (below[present] <= above[present]).all()


def test_a_95_interval_contains_the_80_one_on_real_sized_pools() -> None:
    rng = np.random.default_rng(3)
    steps = [sorted_pool(rng.standard_t(3, size=n)) for n in (39, 165, 256)]
    table = bound_table(steps, Levels((0.95, 0.8), (0.1, 0.5, 0.9)))
    lower95, upper95, lower80, upper80, q10, q50, q90 = table
    assert np.isfinite(table).all()
    assert (lower95 <= lower80).all() and (upper80 <= upper95).all()
    assert (lower80 < upper80).all()
    assert (q10 <= q50).all() and (q50 <= q90).all()


def test_sorted_pool_drops_non_finite_scores_and_sorts() -> None:
    pool = sorted_pool([3.0, math.nan, -1.0, math.inf, 2.0, -math.inf])
    assert pool.tolist() == [-1.0, 2.0, 3.0]
    assert sorted_pool([]).size == 0


def test_bound_table_rows_follow_the_request_order() -> None:
    pool = sorted_pool(np.arange(1.0, 100.0))  # 1..99
    table = bound_table([pool, pool[:5]], Levels((0.95, 0.8), (0.8, 0.1)))
    assert table.shape == (6, 2)
    assert table[:, 0].tolist() == [2.0, 98.0, 10.0, 90.0, 80.0, 10.0]
    assert np.isnan(table[:4, 1]).all()  # 5 scores: no 80% or 95% interval
    assert table[4:, 1].tolist() == [5.0, 1.0]  # ranks ceil(6 * 0.8) = 5, ceil(6 * 0.1) = 1
