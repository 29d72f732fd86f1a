"""Filling the missing points of a window: each method, the edges, and what it counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forecast_gateway.core.filling import describe_missing, missing_in_window, window_of
from forecast_gateway.core.timeline import Axis, Fill

NAN = math.nan
HISTORY = np.array([1.0, NAN, 3.0, 4.0, NAN, NAN, 7.0, NAN])


@pytest.mark.parametrize(
    ("fill", "expected"),
    [
        (Fill.LINEAR, [3.0, 4.0, 5.0, 6.0, 7.0, 7.0]),  # the last holds the last observed
        (Fill.PREVIOUS, [3.0, 4.0, 4.0, 4.0, 7.0, 7.0]),
        (Fill.ZERO, [3.0, 4.0, 0.0, 0.0, 7.0, 0.0]),
    ],
)
def test_each_method_fills_the_window_and_counts(fill: Fill, expected: list[float]) -> None:
    values, filled = window_of(HISTORY, 6, fill)
    assert values.tolist() == expected
    assert filled == 3


def test_a_fill_looks_before_the_window() -> None:
    history = np.array([2.0, NAN, NAN, 8.0])
    assert window_of(history, 3, Fill.LINEAR)[0].tolist() == [4.0, 6.0, 8.0]
    assert window_of(history, 3, Fill.PREVIOUS)[0].tolist() == [2.0, 2.0, 8.0]


def test_leading_missing_points_take_the_first_observed_value() -> None:
    history = np.array([NAN, NAN, 5.0, 6.0])
    assert window_of(history, 4, Fill.PREVIOUS)[0].tolist() == [5.0, 5.0, 5.0, 6.0]
    assert window_of(history, 4, Fill.LINEAR)[0].tolist() == [5.0, 5.0, 5.0, 6.0]


def test_a_complete_window_is_returned_as_is() -> None:
    window, count = window_of(np.array([NAN, 1.0, 2.0]), 2, Fill.NONE)
    assert window.tolist() == [1.0, 2.0] and count == 0


def test_missing_points_are_described_by_time_or_index() -> None:
    missing = missing_in_window(HISTORY, 6)
    assert missing.tolist() == [4, 5, 7]
    assert describe_missing(missing, None) == "at index 4, 5, 7"
    day = 86_400 * 10**9
    axis = Axis(start=0, frequency="D")
    assert describe_missing(missing, axis) == (
        "at 1970-01-05T00:00:00Z (index 4), 1970-01-06T00:00:00Z (index 5), "
        "1970-01-08T00:00:00Z (index 7)"
    )
    assert describe_missing(np.arange(5), Axis(start=day, frequency="D")).endswith(", ...")
