"""The models of model_repository/ served by a real Triton, called directly with tritonclient."""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from forecast_gateway.core.normalization import normalize
from tools.embedded_triton import TritonPorts, TritonProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.data import load_co2, train_size  # noqa: E402
from training.evaluate import Backtest, naive_forecast, z_forecaster  # noqa: E402
from training.served import MODEL_REPOSITORY, load_served_module, weights_path  # noqa: E402

pytestmark = pytest.mark.functional

WINDOWS = {("lstm_timeseries", 1): 10, ("lstm_timeseries", 2): 52}
WINDOWS |= {("moving_average", 1): 10, ("moving_average", 2): 52}
VERSIONS = sorted(WINDOWS)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def triton(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TritonProcess]:
    http, grpc, metrics = free_ports(3)
    log_path = tmp_path_factory.mktemp("triton") / "triton.log"
    server = TritonProcess(MODEL_REPOSITORY, TritonPorts(http, grpc, metrics), log_path=log_path)
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


def inputs(history: npt.NDArray[Any], horizon: int) -> list[grpcclient.InferInput]:
    rows = np.asarray(history, dtype=np.float32).reshape(-1, np.shape(history)[-1])
    steps = np.full((rows.shape[0], 1), horizon, dtype=np.int32)
    history_input = grpcclient.InferInput("HISTORY", list(rows.shape), "FP32")
    history_input.set_data_from_numpy(rows)
    horizon_input = grpcclient.InferInput("HORIZON", list(steps.shape), "INT32")
    horizon_input.set_data_from_numpy(steps)
    return [history_input, horizon_input]


def infer(
    client: Any, model: str, version: int, history: npt.NDArray[Any], horizon: int
) -> npt.NDArray[Any]:
    result = client.infer(model, inputs(history, horizon), model_version=str(version))
    forecast: npt.NDArray[Any] = result.as_numpy("FORECAST")
    return forecast


def infer_concurrently(
    client: Any, model: str, version: int, windows: npt.NDArray[Any], horizons: list[int]
) -> list[npt.NDArray[Any] | InferenceServerException]:
    """One request per row, all in flight at once (what the dynamic batcher merges)."""
    results: list[Any] = [None] * len(horizons)
    done = threading.Semaphore(0)

    def callback(index: int, result: Any, error: InferenceServerException | None) -> None:
        results[index] = error if error is not None else result.as_numpy("FORECAST")
        done.release()

    for index, (window, horizon) in enumerate(zip(windows, horizons, strict=True)):
        client.async_infer(
            model,
            inputs(window[None, :], horizon),
            lambda result, error, i=index: callback(i, result, error),
            model_version=str(version),
        )
    for _ in horizons:
        assert done.acquire(timeout=60)
    return results


def z_windows(count: int, window: int, seed: int = 0) -> npt.NDArray[Any]:
    walks = np.random.default_rng(seed).normal(size=(count, window)).cumsum(axis=1)
    return normalize(walks)[0]


@pytest.mark.parametrize(("model", "version"), VERSIONS)
def test_every_version_is_ready_with_its_window(client: Any, model: str, version: int) -> None:
    backend = load_served_module("forecast_backend.py")
    assert client.is_model_ready(model, str(version))
    config = client.get_model_config(model, str(version), as_json=True)["config"]
    parameters = backend.string_parameters(config)
    limits = backend.ForecastLimits.from_parameters(parameters, version)
    assert limits.sequence_length == WINDOWS[model, version]


@pytest.mark.parametrize(("model", "version"), VERSIONS)
@pytest.mark.parametrize(("rows", "horizon"), [(1, 1), (1, 12), (3, 64)])
def test_forecast_has_horizon_values(
    client: Any, model: str, version: int, rows: int, horizon: int
) -> None:
    forecast = infer(client, model, version, z_windows(rows, WINDOWS[model, version]), horizon)
    assert forecast.shape == (rows, horizon)
    assert forecast.dtype == np.float32
    assert np.all(np.isfinite(forecast))


def test_moving_average_accepts_any_length_within_its_limits(client: Any) -> None:
    for length in (1, 7, 1024):
        window = np.arange(length, dtype=np.float32)
        forecast = infer(client, "moving_average", 1, window, 3)
        np.testing.assert_allclose(forecast, [[window.mean()] * 3], rtol=1e-6)


@pytest.mark.parametrize(
    ("model", "version", "length", "horizon", "message"),
    [
        ("lstm_timeseries", 1, 52, 5, "needs exactly 10"),
        ("lstm_timeseries", 2, 10, 5, "needs exactly 52"),
        ("lstm_timeseries", 2, 52, 65, "HORIZON must be between 1 and 64"),
        ("moving_average", 1, 1025, 5, "between 1 and 1024"),
        ("moving_average", 2, 52, 0, "HORIZON must be between 1 and 64"),
    ],
)
def test_invalid_requests_get_invalid_argument(
    client: Any, model: str, version: int, length: int, horizon: int, message: str
) -> None:
    with pytest.raises(InferenceServerException) as error:
        infer(client, model, version, np.zeros(length, np.float32), horizon)
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert message in str(error.value.message())


def test_errors_are_per_request_inside_a_batch(client: Any) -> None:
    horizons = [5, 0, 7, 65, 12, 3] * 8
    results = infer_concurrently(client, "lstm_timeseries", 2, z_windows(48, 52), horizons)
    for horizon, result in zip(horizons, results, strict=True):
        if 1 <= horizon <= 64:
            assert isinstance(result, np.ndarray) and result.shape == (1, horizon)
        else:
            assert isinstance(result, InferenceServerException)


@pytest.mark.parametrize(("model", "version"), [("lstm_timeseries", 1), ("lstm_timeseries", 2)])
def test_concurrent_requests_are_batched(client: Any, model: str, version: int) -> None:
    """Requests that queue while the model runs are executed together.

    Only the LSTM is checked: moving_average executes faster than one client
    thread sends, so few of its requests ever wait in the queue together.
    """

    def counts() -> tuple[int, int]:
        stats = client.get_inference_statistics(model, str(version), as_json=True)
        entry = stats["model_stats"][0]
        return int(entry.get("inference_count", 0)), int(entry.get("execution_count", 0))

    # A full batch (256 rows, longest horizon) keeps the one instance busy
    # while the 128 small requests arrive, so they wait in Triton's queue
    # together; up to three bursts, so a starved client thread cannot fake a
    # failure. A model or config that cannot batch fails all three.
    window = WINDOWS[model, version]
    for attempt in range(3):
        before = counts()
        blocker = threading.Thread(
            target=infer, args=(client, model, version, z_windows(256, window, seed=99), 64)
        )
        blocker.start()
        windows = z_windows(128, window, seed=attempt)
        results = infer_concurrently(client, model, version, windows, [12] * 128)
        blocker.join()
        # Triton records statistics after the Python backend has sent the
        # responses: wait (briefly) until the counts stop lagging the answers.
        settle = time.monotonic() + 5.0
        while (after := counts())[0] - before[0] < 256 + 128 and time.monotonic() < settle:
            time.sleep(0.05)
        assert all(isinstance(r, np.ndarray) and r.shape == (1, 12) for r in results)
        inferences = after[0] - before[0] - 256
        executions = after[1] - before[1] - 1  # the blocker ran alone (a full batch)
        assert inferences == 128
        if executions < inferences:
            break
    assert executions < inferences, f"no batching: {executions} executions for {inferences}"


@pytest.mark.parametrize("version", [1, 2])
def test_lstm_matches_in_process_torch(client: Any, version: int) -> None:
    lstm_network = load_served_module("lstm_timeseries/lstm_network.py")
    network, _ = lstm_network.load_checkpoint(weights_path(version))
    windows = z_windows(16, WINDOWS["lstm_timeseries", version], seed=version)
    with torch.inference_mode():
        expected = lstm_network.forecast(network, torch.from_numpy(windows), 12).numpy()
    served = infer(client, "lstm_timeseries", version, windows, 12)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    one_by_one = infer_concurrently(client, "lstm_timeseries", version, windows, [12] * 16)
    np.testing.assert_allclose(np.concatenate(one_by_one), expected, atol=1e-5)


def test_lstm_v2_beats_naive_and_v1_on_held_out_co2(client: Any) -> None:
    series = load_co2()
    scores: dict[tuple[int, int | str], float] = {}
    for horizon in (5, 12):
        backtest = Backtest.over_test_part(series, train_size(series.shape[0]), horizon)
        backtest = backtest.subsample(3)
        for version in (1, 2):

            def served(z: npt.NDArray[Any], steps: int, version: int = version) -> npt.NDArray[Any]:
                results = infer_concurrently(
                    client, "lstm_timeseries", version, z, [steps] * z.shape[0]
                )
                return np.concatenate(results)

            window = WINDOWS["lstm_timeseries", version]
            scores[horizon, version] = backtest.score(z_forecaster(served), window)
        scores[horizon, "naive"] = backtest.score(naive_forecast, 1)
    for horizon in (5, 12):
        assert scores[horizon, 2] < 0.6 * scores[horizon, "naive"], scores
        assert scores[horizon, 2] < scores[horizon, 1], scores
