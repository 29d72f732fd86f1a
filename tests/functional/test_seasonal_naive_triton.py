"""seasonal_naive served by the session's real Triton, called directly with tritonclient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from tests.unit.test_seasonal_naive import reference
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

MODEL = "seasonal_naive"


@pytest.fixture(scope="module")
def client(triton: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as connection:
        yield connection


def inputs(
    history: npt.NDArray[Any], horizon: int, seasons: list[int] | int
) -> list[grpcclient.InferInput]:
    rows = np.asarray(history, dtype=np.float32).reshape(-1, np.shape(history)[-1])
    steps = np.full((rows.shape[0], 1), horizon, dtype=np.int32)
    season = np.broadcast_to(np.asarray(seasons, dtype=np.int32).reshape(-1, 1), steps.shape)
    tensors = []
    for name, array, kind in (
        ("HISTORY", rows, "FP32"),
        ("HORIZON", steps, "INT32"),
        ("SEASON", np.ascontiguousarray(season), "INT32"),
    ):
        tensor = grpcclient.InferInput(name, list(array.shape), kind)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


def infer(
    client: Any, history: npt.NDArray[Any], horizon: int, seasons: list[int] | int
) -> npt.NDArray[Any]:
    result = client.infer(MODEL, inputs(history, horizon, seasons), model_version="1")
    forecast: npt.NDArray[Any] = result.as_numpy("FORECAST")
    return forecast


def test_ready_with_its_contract(client: Any) -> None:
    assert client.is_model_ready(MODEL, "1")
    config = client.get_model_config(MODEL, "1", as_json=True)["config"]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert parameters["forecast.contract"] == "1"
    assert parameters["forecast.season_input"] == "SEASON"
    assert config["max_batch_size"] == 256
    assert "SEASON" in {i["name"] for i in config["input"]}


def test_forecast_repeats_the_last_season_in_raw_units(client: Any) -> None:
    rng = np.random.default_rng(0)
    weekly = 400.0 + 3.0 * np.sin(np.arange(364) * 2 * np.pi / 52) + rng.normal(size=364)
    rows = np.stack([weekly, weekly * 10, weekly - 400]).astype(np.float32)
    forecast = infer(client, rows, 64, [52, 7, 1])
    assert forecast.shape == (3, 64) and forecast.dtype == np.float32
    for row, season, got in zip(rows, (52, 7, 1), forecast, strict=True):
        assert got.tolist() == reference(row, 64, season)
    np.testing.assert_array_equal(forecast[0, :52], rows[0, -52:])


def test_a_window_shorter_than_its_season_is_naive(client: Any) -> None:
    window = np.array([5.0, 6.0, 7.0, 8.5], dtype=np.float32)
    np.testing.assert_array_equal(infer(client, window, 5, 52), [[8.5] * 5])


def test_any_window_within_its_limits(client: Any) -> None:
    for length in (1, 12, 1024):
        window = np.arange(length, dtype=np.float32)
        expected = [reference(window, 3, 12)]
        np.testing.assert_array_equal(infer(client, window, 3, 12), expected)


@pytest.mark.parametrize(
    ("length", "horizon", "season", "message"),
    [
        (1025, 5, 12, "between 1 and 1024"),
        (52, 65, 12, "HORIZON must be between 1 and 64"),
        (52, 0, 12, "HORIZON must be between 1 and 64"),
        (52, 5, 0, "SEASON must be at least 1"),
    ],
)
def test_invalid_requests_get_invalid_argument(
    client: Any, length: int, horizon: int, season: int, message: str
) -> None:
    with pytest.raises(InferenceServerException) as error:
        infer(client, np.zeros(length, np.float32), horizon, season)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in str(error.value.message())


def test_concurrent_requests_each_get_their_own_answer(client: Any) -> None:
    """Requests the dynamic batcher may merge: other seasons, horizons, one invalid among them."""
    rng = np.random.default_rng(1)
    windows = rng.normal(size=(48, 60)).astype(np.float32)
    horizons = [5, 12, 0, 64, 1, 30] * 8
    seasons = [7, 12, 52, 60, 1, 24] * 8
    results: list[Any] = [None] * len(horizons)
    done = threading.Semaphore(0)

    def callback(index: int, result: Any, error: InferenceServerException | None) -> None:
        results[index] = error if error is not None else result.as_numpy("FORECAST")
        done.release()

    for index, (window, horizon, season) in enumerate(zip(windows, horizons, seasons, strict=True)):
        client.async_infer(
            MODEL,
            inputs(window[None, :], horizon, season),
            lambda result, error, i=index: callback(i, result, error),
            model_version="1",
        )
    for _ in horizons:
        assert done.acquire(timeout=60)
    for window, horizon, season, result in zip(windows, horizons, seasons, results, strict=True):
        if horizon == 0:
            assert isinstance(result, InferenceServerException)
        else:
            assert result.tolist() == [reference(window, horizon, season)]
