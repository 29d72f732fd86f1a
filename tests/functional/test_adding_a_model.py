"""The README's "Adding a model" steps, followed exactly, in a copy of the model repository.

The files are the README's own code blocks (each marked
`<!-- adding-a-model: <path> -->`), written into a copy of
model_repository; a real Triton loads it and a real gateway with the
shipped config/gateway.toml (no entry for either model) serves them: a
point model the gateway z-scores, and a fixed-horizon quantile model with
its own scaling whose quantiles come back as intervals.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import ROOT, GatewayProcess, start_gateway, stop_process
from tests.functional.test_broken_model import start_triton_on
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

MARKER = re.compile(r"<!-- adding-a-model: (\S+) -->\n```\w*\n(.*?)```", re.DOTALL)


def readme_files() -> dict[str, str]:
    """path -> content of every block the README marks as a step of adding a model."""
    return dict(MARKER.findall((ROOT / "README.md").read_text()))


def test_the_readme_marks_both_models_files() -> None:
    assert sorted(readme_files()) == [
        "model_repository/drift/1/model.py",
        "model_repository/drift/config.pbtxt",
        "model_repository/weekly_band/1/model.py",
        "model_repository/weekly_band/config.pbtxt",
    ]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("added")
    shutil.copytree(
        ROOT / "model_repository",
        root / "model_repository",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    for path, content in readme_files().items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    return root / "model_repository"


@pytest.fixture(scope="module")
def stack(repository: Path) -> Iterator[tuple[TritonProcess, GatewayProcess]]:
    logs = repository.parent / "logs"
    logs.mkdir()
    triton = start_triton_on(repository, logs)
    try:
        gateway = start_gateway(
            triton.grpc_url,
            logs / "gateway.log",
            FORECAST_CALIBRATION_DIR=str(repository),
            FORECAST_ROUTING_FILE="",
        )
        try:
            yield triton, gateway
        finally:
            stop_process(gateway.process)
    finally:
        triton.stop()


@pytest.fixture(scope="module")
def stub(
    stack: tuple[TritonProcess, GatewayProcess],
) -> Iterator[forecast_service_pb2_grpc.ForecastServiceStub]:
    with grpc.insecure_channel(stack[1].target) as channel:
        yield forecast_service_pb2_grpc.ForecastServiceStub(channel)


def test_both_models_are_listed_with_what_they_declare(
    stub: forecast_service_pb2_grpc.ForecastServiceStub,
) -> None:
    models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
    assert {"drift", "weekly_band", "lstm_timeseries", "moving_average"} <= set(models)
    (drift,) = models["drift"].versions
    assert drift.unavailable_reason == "" and drift.output_kind == "point"
    assert (drift.min_sequence_length, drift.max_sequence_length) == (2, 512)
    (band,) = models["weekly_band"].versions
    assert band.output_kind == "quantiles" and band.horizon_mode == "fixed"
    assert list(band.quantile_levels) == [0.1, 0.5, 0.9] and list(band.frequencies) == ["D"]


def test_the_point_model_forecasts_in_the_series_units(
    stub: forecast_service_pb2_grpc.ForecastServiceStub,
) -> None:
    history = [100.0 + 2.0 * i for i in range(30)]
    answer = stub.Forecast(
        pb.ForecastRequest(model="drift", history=history, horizon=3), timeout=10
    )
    assert answer.sequence_length == 24
    assert list(answer.values) == pytest.approx([160.0, 162.0, 164.0], rel=1e-5)


def test_the_quantile_model_serves_its_own_band_for_the_asked_steps(
    stub: forecast_service_pb2_grpc.ForecastServiceStub,
) -> None:
    week = [300.0, 310.0, 305.0, 320.0, 330.0, 390.0, 350.0]
    history = [v + (i // 7) + (i * 37) % 11 for i, v in enumerate(week * 6)]
    answer = stub.Forecast(
        pb.ForecastRequest(
            model="weekly_band", history=history, horizon=3, interval_coverages=[0.8]
        ),
        timeout=10,
    )
    assert list(answer.values) == pytest.approx(history[-7:-4], rel=1e-6)  # last week repeated
    (band,) = answer.intervals
    assert all(lo < v < hi for lo, v, hi in zip(band.lower, answer.values, band.upper, strict=True))
    assert len(band.lower) == 3
    assert "model quantiles" in answer.uncertainty.method
