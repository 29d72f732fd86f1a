"""Access through real gateway processes: TLS, mTLS, tokens, model allow-list, no secret logged.

Certificates come from a throw-away CA made with the openssl CLI in a tmp dir
(tests/pki.py): a server certificate for 127.0.0.1 / localhost, a client
certificate from the same CA, and a client certificate from an unrelated CA.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as triton_grpc
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status

from bench.services import free_port
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import ROOT, GatewayProcess, start_gateway, stop_process
from tests.pki import Pki, health_check, make_pki, start_locked_gateway, start_tls_gateway
from tools.embedded_triton import TritonProcess

Stub = forecast_service_pb2_grpc.ForecastServiceStub
TOKEN = "tok-6f1d0c7a9b3e4f2a8c5d7e9f01234567"
ROTATED = "tok-new-0a1b2c3d4e5f60718293a4b5c6d7e8f9"
WRONG = "tok-wrong-ffffffffffffffffffffffffffff"
HISTORY = [float(v % 7) for v in range(60)]
SERVICES = {
    "forecast.v1.ForecastService",
    "google.longrunning.Operations",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def listed_services(channel: grpc.Channel) -> set[str]:
    """The services the server lists over reflection (no token sent)."""
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    (reply,) = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    return {s.name for s in reply.list_services_response.service}


def auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def failure(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """The status code and ErrorInfo reason of a call that must fail."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error: Any = caught.value
    status = rpc_status.from_call(error)
    reason = ""
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return error.code(), reason


def every_read(
    stub: Stub, metadata: tuple[tuple[str, str], ...] = ()
) -> dict[str, Callable[[], object]]:
    """One call of every read RPC of the service, ready to run."""
    forecast = pb.ForecastRequest(model="moving_average", history=HISTORY, horizon=3)
    stream = [pb.StreamForecastRequest(request_id="r1", request=forecast)]
    series = [pb.Series(id="a", history=HISTORY)]
    return {
        "Forecast": lambda: stub.Forecast(forecast, metadata=metadata, timeout=10),
        "ForecastBatch": lambda: stub.ForecastBatch(
            pb.ForecastBatchRequest(model="moving_average", series=series),
            metadata=metadata,
            timeout=10,
        ),
        "StreamForecast": lambda: list(
            stub.StreamForecast(iter(stream), metadata=metadata, timeout=10)
        ),
        "CompareVersions": lambda: stub.CompareVersions(
            pb.CompareVersionsRequest(model="moving_average", versions=["1", "2"], history=HISTORY),
            metadata=metadata,
            timeout=10,
        ),
        "GetExperiment": lambda: stub.GetExperiment(
            pb.GetExperimentRequest(model="moving_average"), metadata=metadata, timeout=10
        ),
        "ListModels": lambda: stub.ListModels(
            pb.ListModelsRequest(), metadata=metadata, timeout=10
        ),
        "GetModel": lambda: stub.GetModel(
            pb.GetModelRequest(name="moving_average"), metadata=metadata, timeout=10
        ),
        "Backtest": lambda: stub.Backtest(
            pb.BacktestRequest(
                model="moving_average",
                series=series,
                horizon=3,
                n_windows=2,
                targets=[pb.BacktestTarget(version="1")],
            ),
            metadata=metadata,
            timeout=30,
        ),
    }


def report_actuals(
    stub: Stub, metadata: tuple[tuple[str, str], ...] = ()
) -> pb.ReportActualsResponse:
    """Forecast (open or with the same metadata), then report its actuals."""
    forecast = stub.Forecast(
        pb.ForecastRequest(model="moving_average", history=HISTORY, horizon=3),
        metadata=metadata,
        timeout=10,
    )
    reply: pb.ReportActualsResponse = stub.ReportActuals(
        pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[1.0, 2.0, 3.0]),
        metadata=metadata,
        timeout=10,
    )
    return reply


# --- TLS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_gateway(
    triton: TritonProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("tls") / "gateway.log"
    process = start_tls_gateway(
        triton.grpc_url,
        log_path,
        pki.credentials(),
        FORECAST_TLS_CERT_FILE=str(pki.server_cert),
        FORECAST_TLS_KEY_FILE=str(pki.server_key),
    )
    yield process
    stop_process(process.process)


def test_a_plaintext_client_cannot_talk_to_a_tls_gateway(tls_gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(tls_gateway.target) as channel:
        code, _ = failure(lambda: health_check(channel))
        assert code is grpc.StatusCode.UNAVAILABLE
        stub = Stub(channel)
        code, _ = failure(lambda: stub.ListModels(pb.ListModelsRequest(), timeout=5))
        assert code is grpc.StatusCode.UNAVAILABLE


def test_a_client_trusting_another_ca_is_refused(tls_gateway: GatewayProcess, pki: Pki) -> None:
    with grpc.secure_channel(tls_gateway.target, pki.credentials(trust=pki.rogue_cert)) as channel:
        code, _ = failure(lambda: health_check(channel))
        assert code is grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_client_trusting_the_ca_forecasts_checks_health_and_reflects_over_tls(
    tls_gateway: GatewayProcess, pki: Pki, host: str
) -> None:
    target = f"{host}:{tls_gateway.port}"
    with grpc.secure_channel(target, pki.credentials()) as channel:
        health_check(channel)
        assert listed_services(channel) == SERVICES
        for name, call in every_read(Stub(channel)).items():
            assert call() is not None, name
        assert report_actuals(Stub(channel)).steps_received == 3  # no token file: open


# --- mTLS plus tokens required for reads: the locked-down configuration -----


@pytest.fixture(scope="module")
def locked_gateway(
    triton: TritonProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("locked")
    process = start_locked_gateway(triton.grpc_url, directory, pki, TOKEN)
    yield process
    stop_process(process.process)


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_mtls_refuses_a_client_without_a_certificate_from_the_ca(
    locked_gateway: GatewayProcess, pki: Pki, client: str
) -> None:
    credentials = pki.credentials(pki.rogue if client == "rogue" else None)
    with grpc.secure_channel(locked_gateway.target, credentials) as channel:
        code, _ = failure(lambda: health_check(channel))
        assert code is grpc.StatusCode.UNAVAILABLE
        stub = Stub(channel)
        code, _ = failure(lambda: stub.ListModels(pb.ListModelsRequest(), metadata=auth(TOKEN)))
        assert code is grpc.StatusCode.UNAVAILABLE


def test_mtls_client_with_a_token_reaches_every_rpc(
    locked_gateway: GatewayProcess, pki: Pki
) -> None:
    with grpc.secure_channel(locked_gateway.target, pki.credentials(pki.client)) as channel:
        stub = Stub(channel)
        for name, call in every_read(stub, auth(TOKEN)).items():
            assert call() is not None, name
        assert report_actuals(stub, auth(TOKEN)).steps_received == 3


def test_guarded_reads_need_a_token_but_probes_do_not(
    locked_gateway: GatewayProcess, pki: Pki
) -> None:
    with grpc.secure_channel(locked_gateway.target, pki.credentials(pki.client)) as channel:
        health_check(channel)
        assert listed_services(channel) == SERVICES
        stub = Stub(channel)
        for name, call in every_read(stub).items():
            assert failure(call) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING"), name
        for name, call in every_read(stub, auth(WRONG)).items():
            assert failure(call) == (grpc.StatusCode.PERMISSION_DENIED, "TOKEN_INVALID"), name


# --- tokens on a plaintext port, reads open -----------------------------------


@pytest.fixture(scope="module")
def token_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("tokens")
    tokens = directory / "tokens"
    tokens.write_text(f"\n# current\n{TOKEN}\n# next, during a rotation\n  {ROTATED}\n")
    process = start_gateway(
        triton.grpc_url,
        directory / "gateway.log",
        FORECAST_ROUTING_FILE="",
        FORECAST_AUTH_TOKEN_FILE=str(tokens),
        FORECAST_LOG_LEVEL="debug",
    )
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def token_stub(token_gateway: GatewayProcess) -> Iterator[Stub]:
    with grpc.insecure_channel(token_gateway.target) as channel:
        yield Stub(channel)


def test_reads_and_probes_are_open_by_default(
    token_gateway: GatewayProcess, token_stub: Stub
) -> None:
    for name, call in every_read(token_stub).items():
        assert call() is not None, name
    with grpc.insecure_channel(token_gateway.target) as channel:
        health_check(channel)
        assert listed_services(channel) == SERVICES


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ((), (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")),
        (auth(WRONG), (grpc.StatusCode.PERMISSION_DENIED, "TOKEN_INVALID")),
        ((("authorization", TOKEN),), (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED")),
        (
            (("authorization", f"Basic {TOKEN}"),),
            (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MALFORMED"),
        ),
    ],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_report_actuals_needs_a_valid_token(
    token_stub: Stub, metadata: tuple[tuple[str, str], ...], expected: tuple[grpc.StatusCode, str]
) -> None:
    assert failure(lambda: report_actuals(token_stub, metadata)) == expected


@pytest.mark.parametrize("token", [TOKEN, ROTATED])
def test_report_actuals_with_any_listed_token_is_scored(token_stub: Stub, token: str) -> None:
    reply = report_actuals(token_stub, auth(token))
    assert (reply.model, reply.steps_received) == ("moving_average", 3)


def test_no_token_reaches_the_log_or_the_metrics(
    token_gateway: GatewayProcess, token_stub: Stub
) -> None:
    for metadata in (auth(TOKEN), auth(ROTATED), auth(WRONG), (("authorization", WRONG),)):
        for call in every_read(token_stub, metadata).values():
            call()
        with contextlib.suppress(grpc.RpcError):
            report_actuals(token_stub, metadata)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{token_gateway.metrics_port}/metrics", timeout=5
    ) as reply:
        metrics_text = reply.read().decode()
    log = token_gateway.log_text()
    assert '"reason": "TOKEN_INVALID"' in log and '"status": "PERMISSION_DENIED"' in log
    assert '"rpc": "ReportActuals"' in log and '"status": "OK"' in log
    for secret in (TOKEN, ROTATED, WRONG):
        assert secret not in log
        assert secret not in metrics_text


# --- start-up refuses a broken security configuration ------------------------


@pytest.mark.parametrize(
    ("files", "settings", "message"),
    [
        ({}, {"FORECAST_AUTH_TOKEN_FILE": "{dir}/missing"}, "auth_token_file=.*: no such file"),
        ({"tokens": ""}, {"FORECAST_AUTH_TOKEN_FILE": "{dir}/tokens"}, "no token in it"),
        (
            {"tokens": f"# {TOKEN}\n\n"},
            {"FORECAST_AUTH_TOKEN_FILE": "{dir}/tokens"},
            "no token in it",
        ),
        (
            {"tokens": f"{TOKEN} {ROTATED}\n"},
            {"FORECAST_AUTH_TOKEN_FILE": "{dir}/tokens"},
            "line 1: a token must be printable ASCII",
        ),
        ({}, {"FORECAST_AUTH_REQUIRED_FOR_READS": "true"}, "needs auth_token_file"),
        (
            {"key.pem": "x"},
            {
                "FORECAST_TLS_CERT_FILE": "{dir}/missing.pem",
                "FORECAST_TLS_KEY_FILE": "{dir}/key.pem",
            },
            "tls_cert_file=.*: no such file",
        ),
    ],
    ids=["missing", "empty", "comments-only", "bad-token", "reads-without-tokens", "no-cert"],
)
def test_the_gateway_refuses_to_start_with_a_broken_security_setting(
    triton: TritonProcess,
    tmp_path: Path,
    files: dict[str, str],
    settings: dict[str, str],
    message: str,
) -> None:
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    environment = {
        **os.environ,
        "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
        "FORECAST_HOST": "127.0.0.1",
        "FORECAST_PORT": str(free_port()),
        "FORECAST_METRICS_PORT": "-1",
        "FORECAST_TRITON_URL": triton.grpc_url,
        "FORECAST_ROUTING_FILE": "",
        "FORECAST_STORE_PATH": str(tmp_path / "store.sqlite3"),
        **{k: v.format(dir=tmp_path) for k, v in settings.items()},
    }
    result = subprocess.run(
        [sys.executable, "-m", "forecast_gateway"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert re.search(message, output), output
    assert TOKEN not in output and ROTATED not in output


# --- the model allow-list and Triton's own API ------------------------------


def triton_stats(triton: TritonProcess, model: str) -> list[dict[str, Any]]:
    client = triton_grpc.InferenceServerClient(triton.grpc_url)
    try:
        stats: dict[str, Any] = client.get_inference_statistics(model_name=model, as_json=True)
    finally:
        client.close()
    return sorted(stats["model_stats"], key=lambda s: str(s["version"]))


@pytest.fixture(scope="module")
def narrow_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("narrow") / "gateway.log"
    process = start_gateway(
        triton.grpc_url,
        log_path,
        FORECAST_ROUTING_FILE="",
        FORECAST_MODELS="moving_average",
        FORECAST_ALLOWED_MODELS="moving_average",
    )
    yield process
    stop_process(process.process)


def test_a_triton_model_the_gateway_does_not_list_is_unreachable(
    narrow_gateway: GatewayProcess, triton: TritonProcess
) -> None:
    before = triton_stats(triton, "lstm_timeseries")
    control = triton_stats(triton, "moving_average")
    with grpc.insecure_channel(narrow_gateway.target) as channel:
        stub = Stub(channel)
        request = pb.ForecastRequest(model="lstm_timeseries", history=HISTORY)
        pinned = pb.ForecastRequest(model="lstm_timeseries", version="1", history=HISTORY)
        calls: dict[str, Callable[[], object]] = {
            "Forecast": lambda: stub.Forecast(request, timeout=10),
            "Forecast pinned": lambda: stub.Forecast(pinned, timeout=10),
            "ForecastBatch": lambda: stub.ForecastBatch(
                pb.ForecastBatchRequest(
                    model="lstm_timeseries", series=[pb.Series(id="a", history=HISTORY)]
                ),
                timeout=10,
            ),
            "CompareVersions": lambda: stub.CompareVersions(
                pb.CompareVersionsRequest(
                    model="lstm_timeseries", versions=["1", "2"], history=HISTORY
                ),
                timeout=10,
            ),
            "GetModel": lambda: stub.GetModel(pb.GetModelRequest(name="lstm_timeseries")),
            "GetExperiment": lambda: stub.GetExperiment(
                pb.GetExperimentRequest(model="lstm_timeseries")
            ),
        }
        for name, call in calls.items():
            assert failure(call) == (grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"), name
        streamed = list(
            stub.StreamForecast(
                iter([pb.StreamForecastRequest(request_id="x", request=request)]), timeout=10
            )
        )
        assert [r.error.reason for r in streamed] == ["MODEL_NOT_FOUND"]
        listed = stub.ListModels(pb.ListModelsRequest(), timeout=10)
        assert [m.name for m in listed.models] == ["moving_average"]
        stub.Forecast(pb.ForecastRequest(model="moving_average", history=HISTORY), timeout=10)
    assert triton_stats(triton, "lstm_timeseries") == before
    assert triton_stats(triton, "moving_average") != control  # the probe does see inferences


@pytest.mark.parametrize(
    "method",
    [
        "/inference.GRPCInferenceService/RepositoryModelLoad",
        "/inference.GRPCInferenceService/RepositoryModelUnload",
        "/inference.GRPCInferenceService/RepositoryIndex",
        "/inference.GRPCInferenceService/ModelInfer",
    ],
)
def test_the_gateway_does_not_expose_tritons_api(
    narrow_gateway: GatewayProcess, method: str
) -> None:
    with grpc.insecure_channel(narrow_gateway.target) as channel:
        assert listed_services(channel) == SERVICES
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
        code, _ = failure(lambda: call(b"", timeout=5))
        assert code is grpc.StatusCode.UNIMPLEMENTED
    service = pb.DESCRIPTOR.services_by_name["ForecastService"]
    names = {m.name for m in service.methods}
    assert not {n for n in names if any(w in n for w in ("Load", "Unload", "Repository"))}
