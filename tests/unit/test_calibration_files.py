"""The shipped conformal calibration scores (model_repository/*/*/calibration.json)."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from forecast_gateway.core.conformal import min_scores_for_interval  # noqa: E402
from training import calibrate  # noqa: E402
from training.data import load_co2, train_size  # noqa: E402
from training.served import MODEL_REPOSITORY  # noqa: E402

VERSIONS = [("lstm_timeseries", "1"), ("lstm_timeseries", "2")]
VERSIONS += [("moving_average", "1"), ("moving_average", "2")]


def config_parameters(model: str) -> dict[str, str]:
    """config.pbtxt's string parameters, parsed here independently of training/calibrate.py."""
    text = (MODEL_REPOSITORY / model / "config.pbtxt").read_text()
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    config = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {key: value["string_value"] for key, value in config["parameters"].items()}


def parameter(model: str, version: str, name: str) -> str:
    parameters = config_parameters(model)
    specific = f"v{version}.{name}"
    return parameters[specific] if specific in parameters else parameters[name]


def shipped(model: str, version: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(calibrate.calibration_path(model, version).read_text())
    return document


def test_calibrated_versions_ship_one_file_and_others_none() -> None:
    """VERSIONS ship calibration.json; any other version may ship none.

    A version without the file (a model added without held-out scores, such
    as seasonal_naive) is served NOT_CALIBRATED until actuals arrive.
    """
    found = sorted(p.relative_to(MODEL_REPOSITORY) for p in MODEL_REPOSITORY.glob("*/*/*.json"))
    assert found == [Path(m, v, "calibration.json") for m, v in VERSIONS]
    directories = {p.parent for p in MODEL_REPOSITORY.glob("*/[0-9]*/model.py")}
    assert {MODEL_REPOSITORY / m / v for m, v in VERSIONS} <= directories


@pytest.mark.parametrize(("model", "version"), VERSIONS)
def test_file_shape_and_metadata(model: str, version: str) -> None:
    document = shipped(model, version)
    assert document["format"] == 1
    assert (document["model"], document["version"]) == (model, version)
    assert document["score"] == "(actual - forecast) / naive_scale(window)"
    assert document["window"] == int(parameter(model, version, "sequence_length"))
    scores = document["scores"]
    assert len(scores) == int(parameter(model, version, "max_horizon")) == 64
    counts = {len(step) for step in scores}
    assert len(counts) == 1, "every step has one score per calibration origin"
    assert counts.pop() >= max(40, min_scores_for_interval(0.95))
    assert all(isinstance(v, float) and math.isfinite(v) for step in scores for v in step)
    assert all(float(f"{v:.6g}") == v for step in scores for v in step)  # 6 significant digits


def test_calibration_origins_precede_the_evaluation_actuals() -> None:
    series = load_co2()
    split = calibrate.Split.of_co2()
    calibration, evaluation = split.calibration.origins, split.evaluation.origins
    assert calibration[0] == train_size(series.shape[0])  # the test part, nothing before it
    assert calibration[-1] + 64 <= evaluation[0]  # no evaluation actual inside calibration
    assert evaluation[-1] + 64 == series.shape[0]  # the last origin with 64 actuals
    assert abs(len(calibration) - len(evaluation)) <= 1
    assert np.all(np.diff(calibration) == 1) and np.all(np.diff(evaluation) == 1)
    for model, version in VERSIONS:
        assert len(shipped(model, version)["scores"][0]) == len(calibration)
        data = shipped(model, version)["data"]
        assert f"points {calibration[0]}..{calibration[-1]} of {series.shape[0]}" in data


def test_moving_average_scores_match_the_textbook_definition() -> None:
    """Recomputed without the served code: (actual - window mean) / mean |diff(window)|."""
    series = load_co2()
    scores = np.array(shipped("moving_average", "1")["scores"])  # [step, origin]
    first = train_size(series.shape[0])
    for index in (0, 1, 80, scores.shape[1] - 1):
        window = series[first + index - 10 : first + index]
        scale = np.mean(np.abs(np.diff(window)))
        for step in (1, 12, 64):
            expected = (series[first + index + step - 1] - window.mean()) / scale
            assert scores[step - 1, index] == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(("model", "version"), VERSIONS)
def test_regenerating_reproduces_the_shipped_file(model: str, version: str) -> None:
    """All four regenerate in ~1.5 s (LSTM in-process on CPU), so none is skipped.

    moving_average v1 must match byte for byte. The others go through BLAS
    (torch, a numpy matmul), whose last bits may differ on another CPU, so
    their scores must match to 1e-5 (a float32 ulp of the forecast, scaled).
    """
    started = time.perf_counter()
    document = calibrate.calibration_document(
        calibrate.ServedVersion.load(model, version), calibrate.Split.of_co2()
    )
    assert time.perf_counter() - started < 30
    text = calibrate.calibration_path(model, version).read_text()
    if (model, version) == ("moving_average", "1"):
        assert calibrate.render(document) == text
        return
    expected = json.loads(text)
    assert {k: v for k, v in document.items() if k != "scores"} == {
        k: v for k, v in expected.items() if k != "scores"
    }
    np.testing.assert_allclose(document["scores"], expected["scores"], rtol=1e-5, atol=1e-5)


def test_render_round_trips_and_rounds_to_six_digits() -> None:
    document = {"format": 1, "scores": [[1.0, -0.5], [2.5, 3.0]]}
    assert json.loads(calibrate.render(document)) == document
    assert calibrate.round_significant(1.23456789) == 1.23457
    assert calibrate.round_significant(-0.000123456789) == -0.000123457


def test_interval_figures_coverage_width_and_winkler() -> None:
    """99 scores 1..99: the 80% interval is [s(10), s(90)] = [10, 90] at every step."""
    calibration = [list(np.arange(1.0, 100.0))] * 12
    evaluation = np.tile(np.array([[50.0], [5.0], [95.0]]), (1, 12))
    figures = calibrate.interval_figures(calibration, evaluation)
    for step in ("1", "5", "12", "mean_1_12"):
        row = figures["0.8"][step]
        assert row["coverage"] == pytest.approx(1 / 3, abs=1e-4)
        assert row["width"] == 80
        # inside: 80; 5 below 10 and 5 above 90: 80 + (2 / 0.2) * 5 = 130
        assert row["winkler"] == pytest.approx((80 + 130 + 130) / 3, abs=1e-4)
    # 95%: ranks floor(100 * 0.025) = 2 and ceil(100 * 0.975) = 98: [2, 98], all inside
    assert figures["0.95"]["1"] == {"coverage": 1.0, "width": 96.0, "winkler": 96.0}
