"""Always-valid comparisons (ab.sequential): the error rate holds under continuous monitoring."""

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from forecast_gateway.ab import sequential
from forecast_gateway.ab.report import verdict
from forecast_gateway.ab.scoring import Moments, compare_paired, compare_welch

EXPERIMENTS = 600
LOOK_EVERY = 20
MAX_SAMPLES = 400
TOLERANCE = 0.02
"""Over 600 simulated experiments the sampling error of a 5% rate is ~0.9%."""


def monitor(differences: npt.NDArray[Any]) -> tuple[float, float, npt.NDArray[Any]]:
    """Look after every LOOK_EVERY new pairs, as a team watching GetExperiment would.

    Returns the share of experiments the sequential test ever declared
    conclusive, the share the fixed-sample t-test ever declared significant,
    and the sample size at which each experiment first became conclusive (0: never).
    """
    first = np.zeros(len(differences), dtype=int)
    t_test = np.zeros(len(differences), dtype=bool)
    for n, row in looks(differences):
        for i, moments in enumerate(row):
            if not first[i] and sequential.paired(moments).conclusive:
                first[i] = n
            t_test[i] |= compare_paired(moments).significant
    return float((first > 0).mean()), float(t_test.mean()), first


def looks(samples: npt.NDArray[Any]) -> list[tuple[int, list[Moments]]]:
    """Each experiment's moments after every LOOK_EVERY values (as the running sums give them)."""
    sums, squares = np.cumsum(samples, axis=1), np.cumsum(samples**2, axis=1)
    result = []
    for n in range(LOOK_EVERY, samples.shape[1] + 1, LOOK_EVERY):
        means = sums[:, n - 1] / n
        variances = (squares[:, n - 1] - n * means**2) / (n - 1)
        row = [Moments(n, float(m), float(v)) for m, v in zip(means, variances, strict=True)]
        result.append((n, row))
    return result


@pytest.mark.parametrize("shape", ["normal", "skewed"])
def test_under_the_null_watching_continuously_keeps_the_error_rate(shape: str) -> None:
    rng = np.random.default_rng(11)
    size = (EXPERIMENTS, MAX_SAMPLES)
    if shape == "normal":
        differences = rng.normal(0.0, 1.0, size)
    else:  # MASE-like: right-skewed errors of two equally good versions
        differences = rng.lognormal(0.0, 0.8, size) - rng.lognormal(0.0, 0.8, size)
    sequential_rate, t_test_rate, _ = monitor(differences)
    # 1000 experiments: the sampling error of a 5% rate is ~0.7%.
    assert sequential_rate <= sequential.ALPHA + TOLERANCE
    assert t_test_rate > 3 * sequential.ALPHA  # what the fixed-sample test does when watched


def test_a_real_difference_reaches_a_verdict() -> None:
    rng = np.random.default_rng(12)
    rate, _, first = monitor(rng.normal(0.3, 1.0, (200, MAX_SAMPLES)))
    assert rate > 0.95
    assert float(np.median(first[first > 0])) <= 200


def test_two_samples_under_the_null_keep_the_error_rate() -> None:
    rng = np.random.default_rng(13)
    a = rng.lognormal(0.0, 0.6, (EXPERIMENTS, MAX_SAMPLES))
    b = rng.lognormal(0.0, 0.6, (EXPERIMENTS, MAX_SAMPLES))
    ever = np.zeros(EXPERIMENTS, dtype=bool)
    welch = np.zeros(EXPERIMENTS, dtype=bool)
    for (_, left_row), (_, right_row) in zip(looks(a), looks(b), strict=True):
        for i, (left, right) in enumerate(zip(left_row, right_row, strict=True)):
            ever[i] |= sequential.two_sample(left, right).conclusive
            welch[i] |= compare_welch(left, right).significant
    assert ever.mean() <= sequential.ALPHA + TOLERANCE
    assert welch.mean() > 3 * sequential.ALPHA


def test_the_p_value_and_the_sequence_agree() -> None:
    for mean in (0.05, 0.2, 0.5):
        result = sequential.paired(Moments(80, mean, 1.0))
        assert (result.p_value < sequential.ALPHA) == (result.cs_low > 0)
        assert result.cs_low < mean < result.cs_high


def test_the_sequence_is_wider_than_the_fixed_sample_interval() -> None:
    moments = Moments(100, 0.3, 1.0)
    fixed, always = compare_paired(moments), sequential.paired(moments)
    assert always.cs_low < fixed.ci_low and always.cs_high > fixed.ci_high


@pytest.mark.parametrize(
    "moments",
    [Moments(1, 0.5, math.nan), Moments(30, 0.5, 0.0), Moments(0, math.nan, math.nan)],
)
def test_untestable_comparisons_are_never_conclusive(moments: Moments) -> None:
    result = sequential.paired(moments)
    assert math.isnan(result.p_value) and not result.conclusive


def test_a_few_samples_are_never_conclusive() -> None:
    result = sequential.paired(Moments(sequential.MIN_SAMPLES - 1, 5.0, 0.01))
    assert result.p_value < sequential.ALPHA and not result.conclusive


def test_verdicts_in_words() -> None:
    conclusive = sequential.paired(Moments(65, 0.21, 0.04))  # version 1 is worse
    assert verdict("1", "2", 0.52, 0.31, conclusive) == (
        "version 2 is more accurate: MASE 0.31 vs 0.52 (-40%), conclusive after 65 paired forecasts"
    )
    open_question = sequential.paired(Moments(30, -0.01, 1.0))
    assert verdict("1", "2", 0.50, 0.51, open_question) == (
        "not conclusive yet: MASE 0.5 (version 1) vs 0.51 (version 2) after 30 paired forecasts"
    )
    split = sequential.two_sample(Moments(1, 0.5, math.nan), Moments(1, 0.4, math.nan))
    assert verdict("1", "2", 0.5, 0.4, split).startswith("not conclusive yet: too few")
