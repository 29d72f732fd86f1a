import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from forecast_gateway.core.catalog import ModelSpec, VersionSpec, VersionState
from forecast_gateway.core.validation import ForecastQuery, check_query, resolve_shape
from forecast_gateway.errors import InvalidArgument

VERSION = VersionSpec("1", VersionState.READY, 10, 10, 10)
FLEXIBLE = VersionSpec("2", VersionState.READY, 10, 1, 100)
MODEL = ModelSpec("m", "", 12, 64, {"1": VERSION, "2": FLEXIBLE})


def query(**overrides: Any) -> ForecastQuery:
    fields: dict[str, Any] = {
        "model": "m",
        "version": "",
        "routing_key": "",
        "history": np.arange(20, dtype=np.float64),
        "horizon": 0,
        "sequence_length": 0,
    }
    fields.update(overrides)
    return ForecastQuery(**fields)


def violated_fields(error: pytest.ExceptionInfo[InvalidArgument]) -> set[str]:
    return {v.field for v in error.value.violations}


def test_valid_query_passes_and_gets_model_defaults() -> None:
    check_query(query(), max_history_length=100)
    assert resolve_shape(query(), MODEL, VERSION).window == 10
    assert resolve_shape(query(), MODEL, VERSION).horizon == 12


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"model": ""}, "model"),
        ({"version": "two"}, "version"),
        ({"history": np.array([])}, "history"),
        ({"history": np.array([math.nan, math.nan])}, "history"),
        ({"history": np.array([1.0, math.inf])}, "history"),
        ({"history": np.zeros(101)}, "history"),
        ({"horizon": -1}, "horizon"),
        ({"sequence_length": -5}, "sequence_length"),
    ],
)
def test_check_query_names_the_field(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        check_query(query(**overrides), max_history_length=100)
    assert violated_fields(error) == {field}
    assert field in str(error.value)


def test_every_violation_is_reported_at_once() -> None:
    with pytest.raises(InvalidArgument) as error:
        check_query(query(model="", history=np.array([]), horizon=-1), max_history_length=100)
    assert violated_fields(error) == {"model", "history", "horizon"}


def test_infinity_message_points_at_the_first_bad_index() -> None:
    with pytest.raises(InvalidArgument, match="first at index 2"):
        check_query(query(history=np.array([1.0, 2.0, math.inf, math.nan])), max_history_length=100)


def test_nan_is_a_missing_value_counted_not_an_error() -> None:
    prepared = check_query(query(history=np.array([1.0, math.nan, 2.0])), max_history_length=100)
    assert prepared.missing == 1


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"history": np.arange(5.0)}, "history"),
        ({"horizon": 65}, "horizon"),
        ({"sequence_length": 11}, "sequence_length"),
    ],
)
def test_resolve_shape_rejects_out_of_range(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        resolve_shape(query(**overrides), MODEL, VERSION)
    assert violated_fields(error) == {field}


@given(st.integers(1, 100), st.integers(1, 64))
def test_flexible_window_accepts_its_whole_range(window: int, horizon: int) -> None:
    shape = resolve_shape(
        query(history=np.zeros(100), sequence_length=window, horizon=horizon), MODEL, FLEXIBLE
    )
    assert (shape.window, shape.horizon) == (window, horizon)
