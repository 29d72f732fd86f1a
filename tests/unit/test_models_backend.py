"""Unit tests of the Triton model code in model_repository/ (no Triton, no pb_utils)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from google.protobuf import json_format, text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from training.served import MODEL_REPOSITORY, load_served_module, weights_path  # noqa: E402

backend = load_served_module("forecast_backend.py")
smoothing = load_served_module("moving_average/smoothing.py")
lstm_network = load_served_module("lstm_timeseries/lstm_network.py")

MODELS = {"lstm_timeseries": {1: 10, 2: 52}, "moving_average": {1: 10, 2: 52}}

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


def config_json(model: str) -> dict[str, Any]:
    """The model's config.pbtxt as the JSON Triton passes in args["model_config"]."""
    text = (MODEL_REPOSITORY / model / "config.pbtxt").read_text()
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def model_args(model: str, version: int) -> dict[str, str]:
    """The args dict Triton's Python backend gives `initialize` on a CPU instance."""
    return {
        "model_config": json.dumps(config_json(model)),
        "model_name": model,
        "model_version": str(version),
        "model_repository": str(MODEL_REPOSITORY / model),
        "model_instance_kind": "CPU",
        "model_instance_device_id": "0",
    }


def served_model_class(model: str, module: str, name: str) -> Any:
    load_served_module(f"{model}/{module}.py")
    return getattr(sys.modules[module], name)


# --- parameter resolution and the config files -------------------------------------------


def test_version_specific_parameter_wins() -> None:
    parameters = {"sequence_length": "10", "v2.sequence_length": "52"}
    assert backend.resolve_parameter(parameters, "sequence_length", 2) == "52"
    assert backend.resolve_parameter(parameters, "sequence_length", "2") == "52"
    assert backend.resolve_parameter(parameters, "sequence_length", 1) == "10"
    assert backend.resolve_parameter(parameters, "missing", 1) is None
    assert backend.resolve_parameter(parameters, "missing", 1, "x") == "x"


@given(
    st.dictionaries(st.sampled_from(["a", "b", "v1.a", "v2.a", "v3.b"]), st.text(max_size=3)),
    st.sampled_from(["a", "b"]),
    st.integers(1, 3),
)
def test_resolution_is_version_key_then_model_wide(
    parameters: dict[str, str], name: str, version: int
) -> None:
    expected = parameters.get(f"v{version}.{name}", parameters.get(name))
    assert backend.resolve_parameter(parameters, name, version) == expected


@pytest.mark.parametrize("model", sorted(MODELS))
def test_config_declares_the_fixed_interface(model: str) -> None:
    config = config_json(model)
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 256
    assert config["version_policy"] == {"all": {}}
    # No queue policy: it made Triton 2.51's batcher stall 500 ms (see config.pbtxt).
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "200"}
    assert config["instance_group"] == [{"count": 1}]  # no kind: GPU when present, else CPU
    inputs = {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]}
    assert inputs == {"HISTORY": ("TYPE_FP32", ["-1"]), "HORIZON": ("TYPE_INT32", ["1"])}
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("FORECAST", "TYPE_FP32", ["-1"])
    ]


@pytest.mark.parametrize(("model", "version"), [(m, v) for m in MODELS for v in MODELS[m]])
def test_config_limits_per_version(model: str, version: int) -> None:
    parameters = backend.string_parameters(config_json(model))
    limits = backend.ForecastLimits.from_parameters(parameters, version)
    assert limits.sequence_length == MODELS[model][version]
    assert (limits.default_horizon, limits.max_horizon) == (12, 64)
    assert limits.description
    if model == "lstm_timeseries":
        assert limits.min_sequence_length == limits.max_sequence_length == limits.sequence_length
    else:
        assert (limits.min_sequence_length, limits.max_sequence_length) == (1, 1024)


def test_limits_reject_missing_and_inconsistent_parameters() -> None:
    good = {
        "default_horizon": "12",
        "max_horizon": "64",
        "sequence_length": "10",
        "min_sequence_length": "10",
        "max_sequence_length": "10",
    }
    assert backend.ForecastLimits.from_parameters(good, 1).sequence_length == 10
    with pytest.raises(ValueError, match="max_horizon"):
        backend.ForecastLimits.from_parameters({**good, "max_horizon": "lots"}, 1)
    with pytest.raises(ValueError, match="sequence_length"):
        backend.ForecastLimits.from_parameters({**good, "v1.min_sequence_length": "11"}, 1)
    no_max = {k: v for k, v in good.items() if k != "max_horizon"}
    with pytest.raises(ValueError, match=re.escape("'forecast.max_horizon' or 'max_horizon'")):
        backend.ForecastLimits.from_parameters(no_max, 1)
    with pytest.raises(ValueError, match="default_horizon 65 <= max_horizon 64"):
        backend.ForecastLimits.from_parameters({**good, "default_horizon": "65"}, 1)
    no_window = {k: v for k, v in good.items() if "sequence_length" not in k}
    with pytest.raises(
        ValueError, match=re.escape("'forecast.default_window' or 'sequence_length'")
    ):
        backend.ForecastLimits.from_parameters(no_window, 1)


# --- the contract's keys (docs/model-contract.md), the legacy keys as their defaults ------


def limits_of(version: int = 1, /, **parameters: str) -> Any:
    """ForecastLimits of `parameters` (keys with dots as `forecast__window`, `v2__...`)."""
    keys = {k.replace("__", "."): v for k, v in parameters.items()}
    return backend.ForecastLimits.from_parameters(keys, version)


def windows(limits: Any) -> tuple[int, int, int, int, int]:
    """(min, default, max) window and (default, max) horizon."""
    return (
        limits.min_sequence_length,
        limits.sequence_length,
        limits.max_sequence_length,
        limits.default_horizon,
        limits.max_horizon,
    )


def test_contract_window_n_is_exactly_n() -> None:
    limits = limits_of(forecast__window="52", forecast__max_horizon="64")
    assert windows(limits) == (52, 52, 52, 64, 64)  # default horizon: the max


def test_contract_window_min_max_with_its_default_window() -> None:
    limits = limits_of(
        forecast__window="1:1024",
        forecast__default_window="364",
        forecast__max_horizon="64",
        forecast__default_horizon="12",
    )
    assert windows(limits) == (1, 364, 1024, 12, 64)


def test_default_window_falls_back_to_sequence_length_then_the_max() -> None:
    assert windows(limits_of(forecast__window="5:20", sequence_length="8", max_horizon="9")) == (
        5,
        8,
        20,
        9,
        9,
    )
    assert limits_of(forecast__window="5:20", max_horizon="9").sequence_length == 20


def test_contract_keys_beat_the_legacy_keys() -> None:
    legacy = {
        "sequence_length": "10",
        "min_sequence_length": "10",
        "max_sequence_length": "10",
        "default_horizon": "12",
        "max_horizon": "64",
    }
    limits = limits_of(
        **legacy,
        forecast__window="2:30",
        forecast__default_window="20",
        forecast__max_horizon="32",
        forecast__default_horizon="4",
    )
    assert windows(limits) == (2, 20, 30, 4, 32)
    # forecast.window replaces the whole legacy range, even a version's own legacy keys
    assert windows(limits_of(2, **legacy, v2__min_sequence_length="3", forecast__window="1:50"))[
        :3
    ] == (1, 10, 50)


def test_contract_keys_are_overridden_per_version() -> None:
    parameters = {
        "forecast__window": "1:100",
        "v2__forecast__window": "52",
        "forecast__max_horizon": "64",
        "v2__forecast__default_horizon": "8",
    }
    assert windows(limits_of(1, **parameters)) == (1, 100, 100, 64, 64)
    assert windows(limits_of(2, **parameters)) == (52, 52, 52, 8, 64)


def test_legacy_range_keys_default_to_the_default_window() -> None:
    assert windows(limits_of(sequence_length="10", max_horizon="5")) == (10, 10, 10, 5, 5)
    assert windows(limits_of(forecast__default_window="7", max_horizon="5"))[:3] == (7, 7, 7)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"forecast__window": "a:5"}, "'forecast.window' must be N or MIN:MAX"),
        ({"forecast__window": "1-5"}, "'forecast.window' must be N or MIN:MAX"),
        ({"forecast__window": "9:5"}, "min 9 <= default 5 <= max 5"),
        ({"forecast__window": "0:5"}, "min 0"),
        ({"forecast__window": "1:5", "forecast__default_window": "6"}, "default 6 <= max 5"),
        ({"forecast__window": "5", "forecast__default_window": "x"}, "'forecast.default_window'"),
        ({"forecast__window": "5", "forecast__default_horizon": "65"}, "default_horizon 65"),
        ({"forecast__window": "5", "forecast__max_horizon": "lots"}, "'forecast.max_horizon'"),
    ],
)
def test_bad_contract_keys_are_named(parameters: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as error:
        limits_of(**{"forecast__max_horizon": "64", **parameters})
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("model", "frequencies", "season"),
    [("lstm_timeseries", "W", "52"), ("moving_average", "any", None)],
)
def test_shipped_models_declare_the_contract_and_their_frequencies(
    model: str, frequencies: str, season: str | None
) -> None:
    parameters = backend.string_parameters(config_json(model))
    assert parameters["forecast.contract"] == "1"
    assert parameters["forecast.frequencies"] == frequencies
    assert parameters.get("forecast.season_length") == season
    # Window and horizon stay on the legacy keys (the contract's defaults).
    assert not {"forecast.window", "forecast.max_horizon"} & set(parameters)


def test_device_follows_the_instance_kind() -> None:
    assert backend.select_device("CPU", "0") == "cpu"
    assert backend.select_device("KIND_CPU", 0) == "cpu"
    assert backend.select_device("GPU", "1") == "cuda:1"


# --- request validation and batching ------------------------------------------------------

LIMITS = backend.ForecastLimits("test", 12, 64, 10, 2, 20)


def request(
    length: int, horizon: int, rows: int = 1
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    history = np.arange(rows * length, dtype=np.float32).reshape(rows, length)
    return history, np.full((rows, 1), horizon, dtype=np.int32)


@pytest.mark.parametrize(
    ("history", "horizon", "message"),
    [
        (*request(1, 5), "between 2 and 20"),
        (*request(21, 5), "between 2 and 20"),
        (*request(10, 0), "HORIZON must be between 1 and 64"),
        (*request(10, 65), "HORIZON must be between 1 and 64"),
        (np.full((1, 10), np.nan, np.float32), np.array([[5]], np.int32), "NaN"),
        (np.zeros((2, 10), np.float32), np.array([[5], [6]], np.int32), "same HORIZON"),
    ],
)
def test_invalid_requests_are_explained(
    history: npt.NDArray[np.float64], horizon: npt.NDArray[np.float64], message: str
) -> None:
    error = backend.validate_request(history, horizon, LIMITS)
    assert error is not None
    assert message in error


def test_one_predict_per_window_length_with_the_largest_horizon() -> None:
    calls: list[tuple[tuple[int, ...], int]] = []

    def predict(windows: npt.NDArray[np.float64], horizon: int) -> npt.NDArray[np.float64]:
        calls.append((windows.shape, horizon))
        return windows[:, -1:] + np.arange(1, horizon + 1, dtype=np.float32)

    requests = [
        request(10, 3),
        request(10, 7, rows=2),
        request(5, 4),
        request(30, 4),
        request(10, 1),
    ]
    results = backend.forecast_batch(
        [r[0] for r in requests], [r[1] for r in requests], LIMITS, predict
    )
    assert sorted(calls) == [((1, 5), 4), ((4, 10), 7)]
    assert [getattr(r, "shape", None) for r in results] == [(1, 3), (2, 7), (1, 4), None, (1, 1)]
    assert isinstance(results[3], backend.RequestError) and not results[3].internal
    np.testing.assert_array_equal(
        results[1], [[10, 11, 12, 13, 14, 15, 16], [20, 21, 22, 23, 24, 25, 26]]
    )
    np.testing.assert_array_equal(results[4], [[10]])


def test_a_failing_predict_only_fails_its_own_group() -> None:
    def predict(windows: npt.NDArray[np.float64], horizon: int) -> npt.NDArray[np.float64]:
        if windows.shape[1] == 5:
            raise RuntimeError("boom")
        return np.zeros((windows.shape[0], horizon), np.float32)

    results = backend.forecast_batch(
        [request(5, 2)[0], request(10, 2)[0]],
        [request(5, 2)[1], request(10, 2)[1]],
        LIMITS,
        predict,
    )
    assert isinstance(results[0], backend.RequestError) and results[0].internal
    assert "boom" in results[0].message
    assert results[1].shape == (1, 2)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 25), st.integers(0, 66), st.integers(1, 3)), min_size=1, max_size=8
    )
)
def test_batched_results_equal_one_request_at_a_time(specs: list[tuple[int, int, int]]) -> None:
    requests = [request(length, horizon, rows) for length, horizon, rows in specs]
    histories, horizons = [r[0] for r in requests], [r[1] for r in requests]
    batched = backend.forecast_batch(histories, horizons, LIMITS, smoothing.simple_moving_average)
    for (history, horizon), result in zip(requests, batched, strict=True):
        alone = backend.forecast_batch(
            [history], [horizon], LIMITS, smoothing.simple_moving_average
        )
        if isinstance(result, backend.RequestError):
            assert alone[0] == result
        else:
            assert result.shape == (history.shape[0], int(horizon[0, 0]))
            assert result.dtype == np.float32
            np.testing.assert_allclose(result, alone[0])


# --- moving average and simple exponential smoothing --------------------------------------

windows_strategy = hnp.arrays(
    np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite
)


@given(windows_strategy, st.integers(1, 64))
def test_moving_average_is_the_flat_window_mean(
    windows: npt.NDArray[np.float64], horizon: int
) -> None:
    forecast = smoothing.simple_moving_average(windows, horizon)
    assert forecast.shape == (windows.shape[0], horizon)
    expected = windows.astype(np.float64).mean(axis=1)
    np.testing.assert_allclose(forecast, np.repeat(expected[:, None], horizon, axis=1))


def ses_loop(row: npt.NDArray[np.float64], alpha: float) -> float:
    level = float(row[0])
    for value in row[1:]:
        level = alpha * float(value) + (1 - alpha) * level
    return level


@given(windows_strategy, st.integers(1, 12), st.floats(0.01, 1.0))
def test_exponential_smoothing_matches_the_recursion(
    windows: npt.NDArray[np.float64], horizon: int, alpha: float
) -> None:
    forecast = smoothing.exponential_smoothing(windows, horizon, alpha)
    assert forecast.shape == (windows.shape[0], horizon)
    expected = [ses_loop(row, alpha) for row in windows]
    np.testing.assert_allclose(forecast[:, 0], expected, rtol=1e-9, atol=1e-6)
    assert np.all(forecast == forecast[:, :1])  # flat at the final level
    low, high = windows.min(axis=1), windows.max(axis=1)
    assert np.all(forecast[:, 0] >= low - 1e-4) and np.all(forecast[:, 0] <= high + 1e-4)


@given(st.integers(1, 300), st.floats(0.01, 1.0))
def test_smoothing_weights_sum_to_one(length: int, alpha: float) -> None:
    weights = smoothing.exponential_smoothing_weights(length, alpha)
    assert weights.shape == (length,)
    assert np.all(weights >= 0)
    assert weights.sum() == pytest.approx(1.0)


@given(windows_strategy, st.floats(0.05, 1.0), st.floats(-10, 10), st.floats(0.1, 10))
def test_exponential_smoothing_is_affine_equivariant(
    windows: npt.NDArray[np.float64], alpha: float, shift: float, scale: float
) -> None:
    rows = windows.astype(np.float64)
    moved = smoothing.exponential_smoothing(rows * scale + shift, 3, alpha)
    np.testing.assert_allclose(
        moved, smoothing.exponential_smoothing(rows, 3, alpha) * scale + shift, atol=1e-6
    )


def test_exponential_smoothing_with_alpha_one_is_naive() -> None:
    windows = np.array([[1.0, 5.0, 2.0], [3.0, 3.0, 9.0]])
    np.testing.assert_allclose(smoothing.exponential_smoothing(windows, 2, 1.0), [[2, 2], [9, 9]])
    with pytest.raises(ValueError, match="alpha"):
        smoothing.exponential_smoothing(windows, 2, 0.0)


@pytest.mark.parametrize(
    ("version", "name"), [(1, "SimpleMovingAverageModel"), (2, "ExponentialSmoothingModel")]
)
def test_moving_average_models_initialize_from_their_config(version: int, name: str) -> None:
    model = served_model_class("moving_average", "moving_average_model", name)()
    model.initialize(model_args("moving_average", version))
    assert model.limits.sequence_length == MODELS["moving_average"][version]
    windows = np.linspace(-1, 1, 3 * 10, dtype=np.float32).reshape(3, 10)
    assert model.predict(windows, 5).shape == (3, 5)


# --- the LSTM network ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def network() -> Any:
    torch.manual_seed(0)
    return lstm_network.LSTMForecaster().eval()


@pytest.mark.parametrize(("batch", "window", "horizon"), [(1, 10, 1), (3, 10, 12), (5, 52, 64)])
def test_lstm_forecast_shapes(network: Any, batch: int, window: int, horizon: int) -> None:
    with torch.inference_mode():
        forecast = lstm_network.forecast(network, torch.randn(batch, window), horizon)
    assert forecast.shape == (batch, horizon)
    assert forecast.dtype == torch.float32


def test_lstm_forecast_is_autoregressive(network: Any) -> None:
    """Step k equals the one-step prediction after the window plus the first k - 1 predictions."""
    windows = torch.randn(4, 10)
    with torch.inference_mode():
        forecast = lstm_network.forecast(network, windows, 6)
        for k in range(6):
            extended = torch.cat([windows, forecast[:, :k]], dim=1)
            torch.testing.assert_close(forecast[:, k], network(extended), atol=1e-5, rtol=1e-5)
            each_step = network.predict_each_step(extended)
            torch.testing.assert_close(each_step[:, -1], network(extended), atol=1e-5, rtol=1e-5)
        shorter = lstm_network.forecast(network, windows, 3)
    torch.testing.assert_close(shorter, forecast[:, :3])


def test_lstm_rows_are_independent(network: Any) -> None:
    windows = torch.randn(6, 10)
    with torch.inference_mode():
        batched = lstm_network.forecast(network, windows, 5)
        alone = torch.cat([lstm_network.forecast(network, windows[i : i + 1], 5) for i in range(6)])
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_lstm_rejects_a_zero_horizon(network: Any) -> None:
    with pytest.raises(ValueError, match="horizon"):
        lstm_network.forecast(network, torch.zeros(1, 10), 0)


def test_checkpoint_round_trip(network: Any, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    lstm_network.save_checkpoint(network, path, {"window": 10, "seed": 0})
    reloaded, metadata = lstm_network.load_checkpoint(path)
    assert metadata["window"] == 10 and metadata["hidden_size"] == 64
    windows = torch.randn(2, 10)
    with torch.inference_mode():
        torch.testing.assert_close(
            lstm_network.forecast(reloaded, windows, 4), lstm_network.forecast(network, windows, 4)
        )


@pytest.mark.parametrize("version", [1, 2])
def test_shipped_lstm_weights_match_their_config(version: int) -> None:
    path = weights_path(version)
    assert path.stat().st_size < 1_000_000
    model = served_model_class("lstm_timeseries", "lstm_model", "LSTMTimeseriesModel")()
    threads = torch.get_num_threads()
    try:
        model.initialize(model_args("lstm_timeseries", version))
        assert torch.get_num_threads() == 1  # the config's torch_num_threads
    finally:
        torch.set_num_threads(threads)
    window = MODELS["lstm_timeseries"][version]
    assert model.metadata["window"] == window
    forecast = model.predict(np.zeros((2, window), np.float32), 7)
    assert forecast.shape == (2, 7) and np.all(np.isfinite(forecast))


def test_no_bytecode_in_the_model_repository_root() -> None:
    """A __pycache__ next to the models would be loaded by Triton as a model."""
    modules: list[ModuleType] = [backend, smoothing, lstm_network]
    assert all(m.__file__ for m in modules)
    assert not (MODEL_REPOSITORY / "__pycache__").exists()


def test_a_predict_with_the_wrong_shape_is_an_internal_error() -> None:
    results = backend.forecast_batch(
        [request(10, 4)[0]], [request(10, 4)[1]], LIMITS, lambda w, h: np.zeros((1, h - 1))
    )
    assert isinstance(results[0], backend.RequestError) and results[0].internal
    assert "shape" in results[0].message
