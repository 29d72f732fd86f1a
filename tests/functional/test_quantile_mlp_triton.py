"""quantile_mlp served by a real Triton (embedded CPU build), called directly with raw values."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from bench.services import free_port
from tools.embedded_triton import TritonPorts, TritonProcess
from training.quantile_network import HORIZON, LEVELS, WINDOW

pytestmark = pytest.mark.functional

MODEL = Path(__file__).resolve().parents[2] / "model_repository" / "quantile_mlp"


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    """Triton serving a repository with only the shipped quantile_mlp (fast to load)."""
    root = tmp_path_factory.mktemp("quantile_repository")
    shutil.copytree(
        MODEL, root / "repository" / "quantile_mlp", ignore=shutil.ignore_patterns("__pycache__")
    )
    ports = TritonPorts(http=free_port(), grpc=free_port(), metrics=free_port())
    server = TritonProcess(root / "repository", ports, log_path=root / "triton.log")
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(triton: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as connection:
        yield connection


def history_input(rows: npt.ArrayLike) -> list[grpcclient.InferInput]:
    values = np.asarray(rows, dtype=np.float32)
    tensor = grpcclient.InferInput("HISTORY", list(values.shape), "FP32")
    tensor.set_data_from_numpy(values)
    return [tensor]


def sales(rows: int, seed: int = 0) -> npt.NDArray[np.float64]:
    rng = np.random.default_rng(seed)
    pattern = np.array([0.9, 0.85, 0.9, 0.95, 1.1, 1.3, 1.0])[np.arange(WINDOW) % 7]
    return rng.poisson(300 * pattern, (rows, WINDOW)).astype(np.float64)


def in_process(rows: npt.ArrayLike) -> Any:
    session = onnxruntime.InferenceSession(str(MODEL / "1" / "model.onnx"))
    return session.run(None, {"HISTORY": np.asarray(rows, dtype=np.float32)})


def test_declares_the_contract(client: Any) -> None:
    assert client.is_model_ready("quantile_mlp", "1")
    config = client.get_model_config("quantile_mlp", as_json=True)["config"]
    parameters = {k: v["string_value"] for k, v in config["parameters"].items()}
    assert parameters["forecast.contract"] == "1"
    assert parameters["forecast.normalization"] == "none"
    assert parameters["forecast.window"] == str(WINDOW)
    assert parameters["forecast.max_horizon"] == str(HORIZON)
    assert parameters["forecast.quantile_levels"] == ",".join(f"{x:g}" for x in LEVELS)


def test_raw_values_in_raw_quantiles_out(client: Any) -> None:
    rows = sales(4)
    result = client.infer("quantile_mlp", history_input(rows))
    median, quantiles = result.as_numpy("FORECAST"), result.as_numpy("QUANTILES")
    assert median.shape == (4, HORIZON) and quantiles.shape == (4, HORIZON, len(LEVELS))
    expected_median, expected_quantiles = in_process(rows)
    np.testing.assert_allclose(median, expected_median, rtol=1e-5)
    np.testing.assert_allclose(quantiles, expected_quantiles, rtol=1e-5)
    assert np.all(np.diff(quantiles, axis=2) >= 0) and np.all(quantiles >= 0)
    assert np.all((median > 150) & (median < 600))


def test_concurrent_requests_are_batched_and_a_bad_one_fails_alone(client: Any) -> None:
    rows = sales(12, seed=1)
    bad = rows[:1].copy()
    bad[0, 10] = np.nan
    requests = [row[None, :] for row in rows] + [bad]
    results: list[Any] = [None] * len(requests)
    done = threading.Semaphore(0)

    def callback(index: int, result: Any, error: InferenceServerException | None) -> None:
        results[index] = error if error is not None else result.as_numpy("FORECAST")
        done.release()

    for index, request in enumerate(requests):
        client.async_infer(
            "quantile_mlp",
            history_input(request),
            lambda result, error, i=index: callback(i, result, error),
        )
    for _ in requests:
        assert done.acquire(timeout=30)
    expected, _ = in_process(rows)
    for index, result in enumerate(results[:-1]):
        np.testing.assert_allclose(result[0], expected[index], rtol=1e-5)
    assert isinstance(results[-1], InferenceServerException)
    assert "NaN" in str(results[-1])


def test_a_window_of_the_wrong_length_is_refused(client: Any) -> None:
    with pytest.raises(InferenceServerException, match=r"56|shape"):
        client.infer("quantile_mlp", history_input(np.ones((1, WINDOW - 1))))
