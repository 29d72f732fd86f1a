"""A model that fails to load harms no other: the real embedded Triton on a repository with one.

The repository is copied to a temp dir and broken there: moving_average's
version 2 raises in `initialize` and a model whose config.pbtxt cannot be
parsed is added. Triton must stay up, report itself live and ready (the
gateway's health reads server readiness), serve every other model, and list
the broken versions UNAVAILABLE in its repository index with the load error
as their reason.
"""

from __future__ import annotations

import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import ROOT, GatewayProcess, start_gateway, start_triton, stop_process
from tests.polling import eventually_sync
from tools.embedded_triton import TritonProcess, previous_log_path

pytestmark = pytest.mark.functional

BROKEN_MESSAGE = "broken on purpose: the weights are missing"
BROKEN_MODEL_PY = f'''"""A version whose initialize raises (test_broken_model.py)."""


class TritonPythonModel:
    def initialize(self, args):
        raise RuntimeError("{BROKEN_MESSAGE}")

    def execute(self, requests):
        return []
'''


@pytest.fixture(scope="module")
def broken_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("broken") / "model_repository"
    shutil.copytree(
        ROOT / "model_repository", repository, ignore=shutil.ignore_patterns("__pycache__")
    )
    (repository / "moving_average" / "2" / "model.py").write_text(BROKEN_MODEL_PY)
    unreadable = repository / "unreadable_config"
    (unreadable / "1").mkdir(parents=True)
    (unreadable / "config.pbtxt").write_text('name: "unreadable_config"\ninput [ {\n')
    (unreadable / "1" / "model.py").write_text(BROKEN_MODEL_PY)
    return repository


PREVIOUS_LOG = "the previous run's log\n"


def start_triton_on(repository: Path, log_dir: Path) -> TritonProcess:
    """A ready Triton on `repository` whose log path already holds a previous run's log.

    The start must move that log aside (`tools.embedded_triton.rotate_log`).
    """
    return start_triton(log_dir, repository, lambda path: path.write_text(PREVIOUS_LOG))


@pytest.fixture(scope="module")
def triton(broken_repository: Path) -> Iterator[TritonProcess]:
    log_dir = broken_repository.parent / "logs"
    log_dir.mkdir()
    server = start_triton_on(broken_repository, log_dir)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def client(triton: TritonProcess) -> Iterator[grpcclient.InferenceServerClient]:
    with grpcclient.InferenceServerClient(triton.grpc_url) as connection:
        yield connection


def http_status(triton: TritonProcess, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{triton.ports.http}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_triton_stays_live_and_ready(
    triton: TritonProcess, client: grpcclient.InferenceServerClient
) -> None:
    assert http_status(triton, "/v2/health/live") == 200
    assert http_status(triton, "/v2/health/ready") == 200
    assert client.is_server_live() and client.is_server_ready()


def infer(
    client: grpcclient.InferenceServerClient, model: str, version: str, window: int, **extra: int
) -> npt.NDArray[np.float32]:
    tensors = [grpcclient.InferInput("HISTORY", [1, window], "FP32")]
    tensors[0].set_data_from_numpy(np.linspace(-1, 1, window, dtype=np.float32)[None, :])
    for name, value in {"HORIZON": 5, **extra}.items():
        tensors.append(grpcclient.InferInput(name, [1, 1], "INT32"))
        tensors[-1].set_data_from_numpy(np.array([[value]], dtype=np.int32))
    forecast: npt.NDArray[np.float32] = client.infer(
        model, tensors, model_version=version
    ).as_numpy("FORECAST")
    return forecast


def test_the_other_models_serve(client: grpcclient.InferenceServerClient) -> None:
    for model, version, window, extra in (
        ("lstm_timeseries", "1", 10, {}),
        ("lstm_timeseries", "2", 52, {}),
        ("seasonal_naive", "1", 20, {"SEASON": 7}),
    ):
        assert client.is_model_ready(model, version)
        forecast = infer(client, model, version, window, **extra)
        assert forecast.shape == (1, 5) and np.all(np.isfinite(forecast))


def test_the_broken_version_is_unavailable_with_its_error(
    triton: TritonProcess, client: grpcclient.InferenceServerClient
) -> None:
    assert not client.is_model_ready("moving_average", "2")

    def index_now() -> dict[tuple[str, str], dict[str, str]]:
        return {
            (m["name"], m.get("version", "")): m
            for m in client.get_model_repository_index(as_json=True)["models"]
        }

    # Triton unloads the failed model's sibling versions after it reports ready
    # (UNLOADING first): wait until that has settled.
    eventually_sync(
        lambda: index_now()["moving_average", "1"]["state"] == "UNAVAILABLE",
        timeout_s=30.0,
        message="moving_average 1 was never unloaded",
    )
    index = index_now()
    broken = index["moving_average", "2"]
    assert broken["state"] == "UNAVAILABLE"
    assert BROKEN_MESSAGE in broken["reason"]
    assert "RuntimeError" in broken["reason"]
    # Triton loads a model's versions all or none: the sibling is unloaded with it.
    assert index["moving_average", "1"]["state"] == "UNAVAILABLE"
    assert index["moving_average", "1"]["reason"] == "unloaded"
    assert index["lstm_timeseries", "1"]["state"] == "READY"
    # A config Triton cannot parse: listed by name only, no version, state or reason.
    assert index["unreadable_config", ""] == {"name": "unreadable_config"}


def test_unavailable_versions_name_each_failure(triton: TritonProcess) -> None:
    found = {(v.model, v.version): v for v in triton.unavailable_versions()}
    assert {("moving_average", "1"), ("moving_average", "2"), ("unreadable_config", "")} <= set(
        found
    )
    assert not {m for m, _ in found} & {"lstm_timeseries", "seasonal_naive"}
    assert BROKEN_MESSAGE in found["moving_average", "2"].reason
    unreadable = found["unreadable_config", ""]
    assert unreadable.state == ""
    assert "unreadable_config" in unreadable.reason
    assert "config.pbtxt" in unreadable.reason  # the log's line about it


def test_the_log_starts_fresh_and_keeps_the_previous_one(triton: TritonProcess) -> None:
    assert triton.log_path is not None
    assert previous_log_path(triton.log_path).read_text() == PREVIOUS_LOG
    text = triton.log_path.read_text()
    assert PREVIOUS_LOG not in text
    assert BROKEN_MESSAGE in text


@pytest.fixture(scope="module")
def gateway_on_broken(triton: TritonProcess, broken_repository: Path) -> Iterator[GatewayProcess]:
    process = start_gateway(
        triton.grpc_url,
        broken_repository.parent / "logs" / "gateway.log",
        FORECAST_ROUTING_FILE="",
        FORECAST_CALIBRATION_DIR=str(broken_repository),
    )
    yield process
    stop_process(process.process)


def test_the_gateway_serves_the_others_and_says_why_the_broken_one_is_not(
    gateway_on_broken: GatewayProcess,
) -> None:
    with grpc.insecure_channel(gateway_on_broken.target) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        models = {m.name: m for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models}
        reasons = {v.version: v.unavailable_reason for v in models["moving_average"].versions}
        assert BROKEN_MESSAGE in reasons["2"] and reasons["1"] == "unloaded"
        answer = stub.Forecast(
            pb.ForecastRequest(model="lstm_timeseries", history=[float(i) for i in range(60)]),
            timeout=10,
        )
        assert len(answer.values) == answer.horizon > 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.Forecast(
                pb.ForecastRequest(model="moving_average", history=[1.0] * 20), timeout=10
            )
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
