"""The seasonal naive model (model_repository/seasonal_naive/): its pure forecast and config."""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from google.protobuf import json_format, text_format
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.grpc import model_config_pb2

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / "model_repository" / "seasonal_naive"
MODEL_PY = MODEL_DIR / "1" / "model.py"


def load_model_module() -> ModuleType:
    """model.py by path under its own name (every version's file is called model.py)."""
    spec = importlib.util.spec_from_file_location("seasonal_naive_model", MODEL_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


sn = load_model_module()


def config_json() -> dict[str, Any]:
    """config.pbtxt as the JSON Triton passes in args["model_config"]."""
    message = text_format.Parse(
        (MODEL_DIR / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
    )
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result


def parameters() -> dict[str, str]:
    return {k: v["string_value"] for k, v in config_json()["parameters"].items()}


def reference(row: npt.NDArray[Any], horizon: int, season: int) -> list[float]:
    """Step by step, as the textbook writes it: y[T - m + ((h - 1) mod m)], naive if m > T."""
    length = len(row)
    m = season if season <= length else 1
    return [float(row[length - m + ((h - 1) % m)]) for h in range(1, horizon + 1)]


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 40)), elements=finite),
    st.integers(1, 64),
    st.data(),
)
def test_each_step_is_the_value_one_season_before(
    windows: npt.NDArray[np.float32], horizon: int, data: st.DataObject
) -> None:
    seasons = np.array(
        data.draw(st.lists(st.integers(1, 60), min_size=len(windows), max_size=len(windows))),
        dtype=np.int32,
    )
    forecast = sn.seasonal_naive(windows, horizon, seasons[:, None])
    assert forecast.shape == (windows.shape[0], horizon)
    assert forecast.dtype == np.float32
    for row, season, got in zip(windows, seasons, forecast, strict=True):
        assert got.tolist() == reference(row, horizon, int(season))


def test_the_last_season_repeats() -> None:
    window = np.arange(1, 9, dtype=np.float32)[None, :]  # 1..8
    np.testing.assert_array_equal(
        sn.seasonal_naive(window, 6, np.array([[4]])), [[5, 6, 7, 8, 5, 6]]
    )
    np.testing.assert_array_equal(
        sn.seasonal_naive(window, 9, np.array([[8]])), [[1, 2, 3, 4, 5, 6, 7, 8, 1]]
    )


def test_season_one_and_a_window_shorter_than_the_season_are_naive() -> None:
    window = np.array([[3.0, 1.0, 4.0, 1.5]], dtype=np.float32)
    np.testing.assert_array_equal(sn.seasonal_naive(window, 3, np.array([1])), [[1.5] * 3])
    np.testing.assert_array_equal(sn.seasonal_naive(window, 3, np.array([5])), [[1.5] * 3])
    np.testing.assert_array_equal(sn.seasonal_naive(window, 3, np.array([52])), [[1.5] * 3])


def test_rows_with_different_seasons_in_one_batch() -> None:
    windows = np.tile(np.arange(10, dtype=np.float32), (3, 1))
    forecast = sn.seasonal_naive(windows, 4, np.array([[1], [3], [20]]))
    np.testing.assert_array_equal(forecast, [[9, 9, 9, 9], [7, 8, 9, 7], [9, 9, 9, 9]])


def test_raw_values_come_back_unscaled() -> None:
    window = np.array([[1e5, 2e5, 3e5, -4e5]], dtype=np.float32)
    np.testing.assert_array_equal(
        sn.seasonal_naive(window, 4, np.array([2])), [[3e5, -4e5, 3e5, -4e5]]
    )


# --- limits and validation ---------------------------------------------------------------

LIMITS = sn.Limits(1, 1024, 64)


def request(
    length: int, horizon: int, season: int = 4, rows: int = 1
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    history = np.arange(rows * length, dtype=np.float32).reshape(rows, length)
    return (
        history,
        np.full((rows, 1), horizon, dtype=np.int32),
        np.full((rows, 1), season, dtype=np.int32),
    )


def test_limits_come_from_the_shipped_config() -> None:
    assert sn.Limits.from_config(config_json(), 1) == LIMITS


def test_limits_read_n_or_min_max_and_the_version_override() -> None:
    def config(**values: str) -> dict[str, Any]:
        return {"parameters": {k: {"string_value": v} for k, v in values.items()}}

    exact = config(**{"forecast.window": "52", "forecast.max_horizon": "12"})
    assert sn.Limits.from_config(exact, 1) == sn.Limits(52, 52, 12)
    override = config(
        **{"forecast.window": "1:100", "v2.forecast.window": "7:14", "forecast.max_horizon": "8"}
    )
    assert sn.Limits.from_config(override, 2) == sn.Limits(7, 14, 8)
    assert sn.Limits.from_config(override, "1") == sn.Limits(1, 100, 8)
    with pytest.raises(ValueError, match=r"forecast\.max_horizon"):
        sn.Limits.from_config(config(**{"forecast.window": "1:5"}), 1)
    with pytest.raises(ValueError, match="MIN:MAX"):
        sn.Limits.from_config(config(**{"forecast.window": "a:5", "forecast.max_horizon": "8"}), 1)
    with pytest.raises(ValueError, match="min <= max"):
        sn.Limits.from_config(config(**{"forecast.window": "9:5", "forecast.max_horizon": "8"}), 1)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (request(1025, 5), "between 1 and 1024"),
        (request(10, 0), "HORIZON must be between 1 and 64"),
        (request(10, 65), "HORIZON must be between 1 and 64"),
        (request(10, 5, season=0), "SEASON must be at least 1"),
        (
            (np.full((1, 10), np.nan, np.float32), *request(10, 5)[1:]),
            "NaN or infinite",
        ),
        (
            (
                np.zeros((2, 10), np.float32),
                np.array([[5], [6]], np.int32),
                request(10, 5, rows=2)[2],
            ),
            "same HORIZON",
        ),
        ((np.zeros((2, 10), np.float32), *request(10, 5)[1:]), "one value per HISTORY row"),
        ((np.zeros((0, 10), np.float32), *request(10, 5)[1:]), "shape [batch, length]"),
    ],
)
def test_invalid_requests_are_explained(arrays: tuple[Any, Any, Any], message: str) -> None:
    error = sn.validate(*arrays, LIMITS)
    assert error is not None and message in error


def test_a_batch_is_one_pass_per_window_length_and_errors_stay_per_request() -> None:
    requests = [
        request(10, 3),
        request(10, 7, season=2, rows=2),
        request(5, 4, season=7),
        request(10, 0),
        request(12, 2, season=12),
    ]
    results = sn.forecast_requests(
        [r[0] for r in requests], [r[1] for r in requests], [r[2] for r in requests], LIMITS
    )
    assert [getattr(r, "shape", None) for r in results] == [(1, 3), (2, 7), (1, 4), None, (1, 2)]
    assert isinstance(results[3], str) and "HORIZON" in results[3]
    for (history, horizon, season), result in zip(requests, results, strict=True):
        if isinstance(result, np.ndarray):
            alone = sn.seasonal_naive(history, int(horizon[0, 0]), season)
            np.testing.assert_array_equal(result, alone)
            assert result.flags.c_contiguous


def test_initialize_reads_the_config() -> None:
    model = sn.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(config_json()),
            "model_name": "seasonal_naive",
            "model_version": "1",
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        }
    )
    assert model.limits == LIMITS


# --- the config and the file itself ------------------------------------------------------


def test_config_declares_the_contract() -> None:
    config = config_json()
    assert config["backend"] == "python"
    assert config["max_batch_size"] == 256
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": "200"}
    inputs = {i["name"]: (i["data_type"], i["dims"]) for i in config["input"]}
    assert inputs == {
        "HISTORY": ("TYPE_FP32", ["-1"]),
        "HORIZON": ("TYPE_INT32", ["1"]),
        "SEASON": ("TYPE_INT32", ["1"]),
    }
    assert [(o["name"], o["data_type"], o["dims"]) for o in config["output"]] == [
        ("FORECAST", "TYPE_FP32", ["-1"])
    ]
    declared = parameters()
    assert {k: v for k, v in declared.items() if k.startswith("forecast.")} == {
        "forecast.contract": "1",
        "forecast.normalization": "none",
        "forecast.window": "1:1024",
        "forecast.default_window": "364",
        "forecast.horizon": "any",
        "forecast.max_horizon": "64",
        "forecast.default_horizon": "12",
        "forecast.season_input": "SEASON",
        "forecast.frequencies": "any",
    }
    assert declared["description"]
    # The default window holds a full season of each natural one the gateway sends.
    assert all(m <= 364 for m in (60, 24, 7, 5, 52, 12, 4, 1))


def test_model_py_is_self_contained() -> None:
    """numpy and the backend's utils only (plus the standard library): no shared module."""
    tree = ast.parse(MODEL_PY.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) == {"numpy", "triton_python_backend_utils"}
    assert imported & {"sys", "os", "importlib", "pathlib"} == set()  # no sys.path shim
    assert not (MODEL_DIR / "1" / "calibration.json").exists()  # NOT_CALIBRATED until actuals
