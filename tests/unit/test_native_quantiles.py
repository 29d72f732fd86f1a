"""Intervals and quantiles from a quantile model's own outputs (core/native.py)."""

from __future__ import annotations

import numpy as np
import pytest

from forecast_gateway.ab import TRACKED
from forecast_gateway.core.calibration import Status
from forecast_gateway.core.native import native_uncertainty, quantile_rows, tracked_table
from forecast_gateway.numerics import Levels

DECLARED = (0.05, 0.1, 0.5, 0.9, 0.95)
STEPS = np.array([[1.0, 2.0, 5.0, 8.0, 9.0], [10.0, 20.0, 50.0, 80.0, 90.0]])


def test_a_declared_level_is_returned_as_the_model_gave_it() -> None:
    rows = quantile_rows(DECLARED, STEPS, Levels((0.8,), (0.5,)))
    np.testing.assert_allclose(rows, [[2.0, 20.0], [8.0, 80.0], [5.0, 50.0]])


def test_a_level_between_two_declared_ones_is_interpolated_per_step() -> None:
    rows = quantile_rows(DECLARED, STEPS, Levels((), (0.3, 0.925)))
    np.testing.assert_allclose(rows, [[3.5, 35.0], [8.5, 85.0]])


def test_crossing_quantiles_are_sorted_before_use() -> None:
    crossed = np.array([[1.0, 6.0, 5.0, 4.0, 9.0]])
    rows = quantile_rows(DECLARED, crossed, Levels((0.8,), ()))
    np.testing.assert_allclose(rows[:, 0], [4.0, 6.0])


def test_native_uncertainty_says_where_the_bounds_come_from() -> None:
    uncertainty = native_uncertainty(DECLARED, STEPS, Levels((0.9,), (0.5,)))
    assert uncertainty.status is Status.NOT_CALIBRATED
    assert "model quantiles" in uncertainty.method and "not conformalized" in uncertainty.detail
    (interval,) = uncertainty.intervals
    np.testing.assert_allclose(interval.lower, [1.0, 10.0])
    np.testing.assert_allclose(interval.upper, [9.0, 90.0])


def test_the_tracked_table_is_in_scale_units_around_the_point_forecast() -> None:
    declared = (0.025, 0.05, 0.1, 0.5, 0.9, 0.95, 0.975)
    quantiles = np.array([[-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]]) + 10.0
    table = tracked_table(declared, quantiles, np.array([10.0]), 2.0, TRACKED)
    assert table is not None
    # rows: 0.8 lower/upper, 0.95 lower/upper, then the quantiles 0.1, 0.5, 0.9
    np.testing.assert_allclose(table[:, 0], [-0.5, 0.5, -1.5, 1.5, -0.5, 0.0, 0.5])


@pytest.mark.parametrize("scale", [0.0, float("nan")])
def test_no_tracked_table_without_a_scale(scale: float) -> None:
    assert tracked_table(DECLARED, STEPS[:1], np.array([5.0]), scale, TRACKED) is None


def test_no_tracked_table_when_the_declared_levels_do_not_reach_the_tracked_ones() -> None:
    assert tracked_table(DECLARED, STEPS[:1], np.array([5.0]), 1.0, TRACKED) is None
