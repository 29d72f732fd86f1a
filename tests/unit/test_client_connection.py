"""forecast_client.connection and the connection options of ForecastClient and the CLI.

Against an in-process plaintext gRPC server (port 0) that records the
metadata it receives and can fail the first calls with UNAVAILABLE; the TLS
side runs against real gateways in tests/functional/test_cli_secure.py.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

from forecast.v1 import forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client import DEFAULT_RETRY_POLICY, ForecastClient, ForecastError, RetryPolicy
from forecast_client.cli import main
from forecast_client.connection import (
    SettingError,
    bearer_metadata,
    channel_credentials,
    channel_options,
    read_token_file,
)

TOKEN = "tok-unit-0123456789abcdef0123456789"
HISTORY = "1,2,3,4,5,6,7,8,9,10"


class RecordingGateway(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Answers ListModels and ReportActuals; fails the next `unavailable` calls first."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.unavailable = 0
        self.calls: list[tuple[str, dict[str, str]]] = []

    def _record(self, name: str, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append((name, {k: str(v) for k, v in context.invocation_metadata()}))
            failing = self.unavailable > 0
            self.unavailable -= failing
        if failing:
            context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        self._record("ListModels", context)
        return forecast_service_pb2.ListModelsResponse()

    def ReportActuals(self, request, context):  # type: ignore[no-untyped-def]
        self._record("ReportActuals", context)
        return forecast_service_pb2.ReportActualsResponse(
            forecast_id=request.forecast_id, steps_received=len(request.actuals)
        )


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, RecordingGateway]]:
    gateway = RecordingGateway()  # type: ignore[abstract]  # plays only the RPCs its tests call
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(gateway, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", gateway
    grpc_server.stop(None)


@pytest.fixture
def fake(server: tuple[str, RecordingGateway]) -> tuple[str, RecordingGateway]:
    target, gateway = server
    gateway.calls.clear()
    gateway.unavailable = 0
    return target, gateway


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that passes the client's PEM check (its content is never used to connect)."""
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    return path


# --- retries -----------------------------------------------------------------


def test_the_default_policy_retries_unavailable_on_every_method() -> None:
    options = dict(channel_options(DEFAULT_RETRY_POLICY))
    assert options["grpc.enable_retries"] == 1
    config = json.loads(str(options["grpc.service_config"]))
    (method,) = config["methodConfig"]
    assert method["name"] == [{"service": "forecast.v1.ForecastService"}]
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["retryPolicy"]["maxAttempts"] == 5
    assert "loadBalancingConfig" not in config


def test_channel_options_without_retries_and_with_round_robin() -> None:
    assert channel_options(None) == [("grpc.enable_retries", 0)]
    options = dict(channel_options(None, "round_robin"))
    config = json.loads(str(options["grpc.service_config"]))
    assert config == {"loadBalancingConfig": [{"round_robin": {}}]}


@pytest.mark.parametrize("method", ["list_models", "report_actuals"])
def test_calls_survive_unavailable_answers(fake: tuple[str, RecordingGateway], method: str) -> None:
    target, gateway = fake
    gateway.unavailable = 3
    with ForecastClient(target, timeout_s=10) as client:
        if method == "list_models":
            assert client.list_models() == []
        else:
            assert client.report_actuals("f1", [1.0, 2.0]).steps_received == 2
    assert len(gateway.calls) == 4


def test_without_a_retry_policy_unavailable_reaches_the_caller(
    fake: tuple[str, RecordingGateway],
) -> None:
    target, gateway = fake
    gateway.unavailable = 1
    with ForecastClient(target, retry_policy=None) as client, pytest.raises(ForecastError) as e:
        client.list_models()
    assert (e.value.code, e.value.message) == (grpc.StatusCode.UNAVAILABLE, "restarting")
    assert len(gateway.calls) == 1


def test_a_custom_policy_bounds_the_attempts(fake: tuple[str, RecordingGateway]) -> None:
    target, gateway = fake
    gateway.unavailable = 5
    policy = RetryPolicy(max_attempts=2, initial_backoff_s=0.01, max_backoff_s=0.01)
    with ForecastClient(target, retry_policy=policy) as client, pytest.raises(ForecastError) as e:
        client.list_models()
    assert e.value.code is grpc.StatusCode.UNAVAILABLE
    assert len(gateway.calls) == 2


@pytest.mark.parametrize(
    "settings",
    [
        {"max_attempts": 1},
        {"max_attempts": 6},
        {"initial_backoff_s": 0},
        {"initial_backoff_s": 3.0, "max_backoff_s": 1.0},
        {"backoff_multiplier": 0},
        {"retryable_codes": ("UNAVAILABLE", "BUSY")},
        {"retryable_codes": ()},
    ],
)
def test_invalid_retry_policies_are_refused(settings: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**settings)  # type: ignore[arg-type]


# --- the token -------------------------------------------------------------------


def test_the_token_is_sent_as_bearer_metadata(fake: tuple[str, RecordingGateway]) -> None:
    target, gateway = fake
    with ForecastClient(target, token=f" {TOKEN}\n", metadata=[("x-request-id", "r1")]) as client:
        client.list_models()
    ((_, metadata),) = gateway.calls
    assert metadata["authorization"] == f"Bearer {TOKEN}"
    assert metadata["x-request-id"] == "r1"


@pytest.mark.parametrize(
    "token", ["", "   ", "two words-0123456789", "tok\nen-0123456789", "é" * 20]
)
def test_a_malformed_token_is_refused_without_echoing_it(token: str) -> None:
    with pytest.raises(SettingError) as caught:
        bearer_metadata(token)
    assert caught.value.option == "token"
    assert token.strip() == "" or token.strip() not in str(caught.value)


def test_token_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="either as token or in metadata"):
        ForecastClient("x:1", token=TOKEN, metadata=[("Authorization", "Bearer other")])


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text(f"\n{TOKEN}\n")
    assert read_token_file(path) == TOKEN
    path.write_text(f"{TOKEN} {TOKEN}\n")
    with pytest.raises(SettingError) as caught:
        read_token_file(path)
    assert caught.value.option == "token_file"
    assert str(path) in str(caught.value) and TOKEN not in str(caught.value)
    with pytest.raises(SettingError, match="cannot read"):
        read_token_file(tmp_path / "missing")


# --- TLS settings --------------------------------------------------------------------


def test_plaintext_unless_tls_is_asked_for_or_implied(pem: Path) -> None:
    assert channel_credentials() is None
    assert isinstance(channel_credentials(tls=True), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(cacert=pem), grpc.ChannelCredentials)
    assert isinstance(channel_credentials(cert=pem, key=pem), grpc.ChannelCredentials)
    assert ForecastClient("x:1").secure is False
    assert ForecastClient("x:1", cacert=pem).secure is True


@pytest.mark.parametrize(
    ("files", "option", "message"),
    [
        ({"cert": "pem"}, "key", "cert and key go together"),
        ({"key": "pem"}, "cert", "cert and key go together"),
        ({"cacert": "missing"}, "cacert", "cannot read .*missing: No such file"),
        ({"cacert": "text"}, "cacert", "not a PEM file"),
    ],
)
def test_unusable_tls_files_name_the_option(
    pem: Path, files: dict[str, str], option: str, message: str
) -> None:
    (pem.parent / "text").write_text("not a certificate")
    paths = {name: pem if kind == "pem" else pem.parent / kind for name, kind in files.items()}
    with pytest.raises(SettingError, match=message) as caught:
        ForecastClient("x:1", **paths)  # type: ignore[arg-type]
    assert caught.value.option == option


def test_credentials_and_files_are_exclusive(pem: Path) -> None:
    with pytest.raises(ValueError, match="either credentials or"):
        ForecastClient("x:1", credentials=grpc.ssl_channel_credentials(), cacert=pem)


# --- the CLI's connection options ------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_cli_token_from_flag_file_or_environment(
    fake: tuple[str, RecordingGateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, gateway = fake
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file-0123456789abcdef\n")
    monkeypatch.delenv("FORECAST_TOKEN", raising=False)
    monkeypatch.delenv("FORECAST_TOKEN_FILE", raising=False)
    runs = [
        ((), {}),
        (("--token", TOKEN), {}),
        (("--token-file", str(token_file)), {}),
        ((), {"FORECAST_TOKEN": TOKEN}),
        ((), {"FORECAST_TOKEN_FILE": str(token_file)}),
        (("--token", "tok-flag-wins-0123456789abcdef"), {"FORECAST_TOKEN": TOKEN}),
    ]
    for flags, environ in runs:
        with monkeypatch.context() as patch:
            for name, value in environ.items():
                patch.setenv(name, value)
            status, out, err = run_cli(capsys, "--target", target, *flags, "models")
        assert (status, err) == (0, ""), (flags, environ)
        assert TOKEN not in out
    sent = [metadata.get("authorization") for _, metadata in gateway.calls]
    assert sent == [
        None,
        f"Bearer {TOKEN}",
        "Bearer tok-from-file-0123456789abcdef",
        f"Bearer {TOKEN}",
        "Bearer tok-from-file-0123456789abcdef",
        "Bearer tok-flag-wins-0123456789abcdef",
    ]


def test_cli_errors_name_the_flag_or_variable_never_the_token(
    fake: tuple[str, RecordingGateway],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, gateway = fake
    bad = "has space-0123456789abcdef"
    status, out, err = run_cli(capsys, "--target", target, "--token", bad, "models")
    assert status == 2 and out == ""
    assert err.startswith("error: INVALID_ARGUMENT: invalid input\n  field --token: ")
    assert bad not in err and "has space" not in err
    monkeypatch.setenv("FORECAST_CACERT", str(tmp_path / "nowhere.pem"))
    status, _, err = run_cli(capsys, "--target", target, "--json", "models")
    violation = json.loads(err)["error"]["fieldViolations"][0]
    assert status == 2
    assert violation["field"] == "FORECAST_CACERT"
    assert "nowhere.pem" in violation["description"]
    assert gateway.calls == []


def test_cli_plaintext_ignores_the_tls_variables_but_not_the_flags(
    fake: tuple[str, RecordingGateway],
    pem: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    target, gateway = fake
    monkeypatch.setenv("FORECAST_CACERT", str(pem))
    monkeypatch.setenv("FORECAST_TLS", "1")
    assert run_cli(capsys, "--target", target, "--plaintext", "models") == (0, "no models\n", "")
    assert len(gateway.calls) == 1
    status, _, err = run_cli(
        capsys, "--target", target, "--plaintext", "--cacert", str(pem), "models"
    )
    assert status == 2
    assert "field --plaintext: cannot be combined with --cacert" in err
    status, _, err = run_cli(capsys, "--tls", "models", "--plaintext")
    assert status == 2 and "field --plaintext: cannot be combined with --tls" in err
    monkeypatch.setenv("FORECAST_TLS", "maybe")
    status, _, err = run_cli(capsys, "--target", target, "models")
    assert status == 2 and "field FORECAST_TLS: expected 1 or 0" in err


def test_cli_hints_for_a_missing_token(
    fake: tuple[str, RecordingGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    class NeedsToken(RecordingGateway):
        def ListModels(self, request, context):  # type: ignore[no-untyped-def]
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "this call needs a token")

    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(
        NeedsToken(),  # type: ignore[abstract]  # plays only the RPCs its tests call
        grpc_server,
    )
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    try:
        status, _, err = run_cli(capsys, "--target", f"127.0.0.1:{port}", "models")
    finally:
        grpc_server.stop(None)
    assert status == 1
    assert err.splitlines() == [
        "error: UNAUTHENTICATED: this call needs a token",
        "  hint: this call needs a token: pass --token-file FILE (or --token, FORECAST_TOKEN)",
    ]


def test_cli_plot_without_matplotlib_says_which_extra(
    fake: tuple[str, RecordingGateway],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    target, gateway = fake
    monkeypatch.delitem(sys.modules, "forecast_client.plot", raising=False)
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = run_cli(capsys, "--target", target, "plot", "--model", "m",
                             "--history", HISTORY, "--output", str(tmp_path / "p.png"))  # fmt: skip
    assert status == 1
    assert err == (
        "error: FAILED_PRECONDITION: plotting needs matplotlib: "
        "pip install 'forecast-client[plot]'\n"
    )
    assert gateway.calls == []
