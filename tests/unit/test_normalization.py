import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from forecast_gateway.core.normalization import denormalize, fit_window, normalize

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@given(arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 64)), elements=finite))
def test_denormalize_undoes_normalize(rows: npt.NDArray[np.float64]) -> None:
    z, scaling = normalize(rows)
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    back = denormalize(z, scaling)
    # float32 keeps ~7 significant digits of the z-scores.
    tolerance = 1e-5 * np.maximum(1.0, np.abs(rows).max(axis=1, keepdims=True))
    assert np.all(np.abs(back - rows) <= tolerance)


@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 64)), elements=finite))
def test_normalized_rows_have_zero_mean_and_unit_or_zero_std(rows: npt.NDArray[np.float64]) -> None:
    z, _ = normalize(rows)
    assert np.allclose(z.mean(axis=1), 0.0, atol=1e-4)
    stds = z.std(axis=1)
    assert np.all(np.isclose(stds, 1.0, atol=1e-3) | np.isclose(stds, 0.0, atol=1e-3))


@given(finite, st.integers(1, 100), st.floats(-10, 10))
def test_constant_series_maps_to_zeros_and_back_to_the_constant(
    value: float, length: int, model_output: float
) -> None:
    rows = np.full((1, length), value)
    z, scaling = normalize(rows)
    assert np.all(z == 0.0)
    assert 0.0 < scaling.std[0] <= 1.000001e-9 * max(1.0, abs(value))
    # Whatever a model answers in z units, the forecast stays at the constant.
    back = denormalize(np.full((1, 3), model_output), scaling)
    assert np.allclose(back, value, rtol=1e-7, atol=1e-7)


def test_rows_are_independent() -> None:
    rows = np.array([[1.0, 2.0, 3.0], [100.0, 200.0, 300.0]])
    z, scaling = normalize(rows)
    assert np.allclose(z[0], z[1])
    assert scaling.mean.tolist() == [2.0, 200.0]


@given(st.lists(finite, min_size=1, max_size=50), st.integers(1, 50))
def test_fit_window_keeps_the_most_recent_points(values: list[float], window: int) -> None:
    history = np.asarray(values)
    if window > len(values):
        with pytest.raises(ValueError):
            fit_window(history, window)
    else:
        assert fit_window(history, window).tolist() == values[-window:]


def test_denormalize_rejects_row_mismatch() -> None:
    _, scaling = normalize(np.ones((2, 3)))
    with pytest.raises(ValueError):
        denormalize(np.zeros((3, 2)), scaling)
