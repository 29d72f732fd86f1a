"""Token rules and TLS credential loading (auth.py), without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import given
from hypothesis import strategies as st

from forecast.v1 import forecast_service_pb2
from forecast_gateway.api.auth import (
    READ_METHODS,
    STATE_CHANGING_METHODS,
    TokenAuthorizer,
    load_tokens,
    server_credentials,
)
from forecast_gateway.api.status import to_status
from forecast_gateway.config import GatewayConfig, ModelConfig
from forecast_gateway.errors import (
    Code,
    ConfigError,
    GatewayError,
    PermissionDenied,
    Unauthenticated,
)

TOKEN = "s3cret-token-0123456789abcdef"
OTHER = "another-token-fedcba9876543210"
SERVICE = "/forecast.v1.ForecastService/"
WRITE = f"{SERVICE}ReportActuals"
READ = f"{SERVICE}Forecast"


def config(**fields: Any) -> GatewayConfig:
    return GatewayConfig(models=(ModelConfig("moving_average"),), **fields)


def authorizer(tmp_path: Path, text: str, reads: bool = False) -> TokenAuthorizer:
    path = tmp_path / "tokens"
    path.write_text(text)
    built = TokenAuthorizer.from_config(
        config(auth_token_file=str(path), auth_required_for_reads=reads)
    )
    assert built is not None
    return built


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


def reason(error: GatewayError) -> str:
    status = to_status(error, "req-1")
    (blob,) = [v for k, v in status.trailing_metadata if k == "grpc-status-details-bin"]
    info = error_details_pb2.ErrorInfo()
    status_pb2.Status.FromString(blob).details[0].Unpack(info)
    got: str = info.reason
    return got


def test_every_service_method_is_classified_once() -> None:
    service = forecast_service_pb2.DESCRIPTOR.services_by_name["ForecastService"]
    methods = {f"/{service.full_name}/{m.name}" for m in service.methods}
    assert not READ_METHODS & STATE_CHANGING_METHODS
    assert methods == READ_METHODS | STATE_CHANGING_METHODS, (
        "classify every new RPC in auth.py: READ_METHODS or STATE_CHANGING_METHODS"
    )
    starts = {WRITE.replace("ReportActuals", f"Start{k}") for k in ("Backtest", "ForecastBatch")}
    assert {WRITE} | starts == STATE_CHANGING_METHODS


def test_tokens_skip_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# rotated 2024-05-01\n\n  {TOKEN}  \n\t\n#{OTHER}\n{OTHER}\r\n")
    assert load_tokens(path) == (TOKEN, OTHER)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "no token in it"),
        ("# only a comment\n\n   \n", "no token in it"),
        (f"{TOKEN} trailing-part-of-a-token\n", "line 1: a token must be printable ASCII"),
        (f"\n{TOKEN}é\n", "line 2: a token must be printable ASCII"),
        ("short-secret\n", "line 1: a token must have at least 16 characters"),
    ],
)
def test_a_bad_token_file_stops_start_up_without_revealing_it(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match="auth_token_file=") as caught:
        TokenAuthorizer.from_config(config(auth_token_file=str(path)))
    text = str(caught.value)
    assert message in text
    for secret in (TOKEN, "trailing-part", "short-secret"):
        assert secret not in text


def test_no_token_file_means_no_authorizer_and_reads_cannot_be_guarded_without_one() -> None:
    assert TokenAuthorizer.from_config(config()) is None
    with pytest.raises(ConfigError, match="auth_required_for_reads needs auth_token_file"):
        TokenAuthorizer.from_config(config(auth_required_for_reads=True))


def test_state_changing_calls_need_a_valid_token(tmp_path: Path) -> None:
    guard = authorizer(tmp_path, f"{TOKEN}\n{OTHER}\n")
    guard.check(WRITE, bearer(TOKEN))
    guard.check(WRITE, bearer(OTHER))  # several tokens: rotation without downtime
    guard.check(WRITE, [("authorization", f"bearer   {TOKEN} ")])
    with pytest.raises(Unauthenticated) as missing:
        guard.check(WRITE, [("x-request-id", "abc")])
    assert missing.value.code is Code.UNAUTHENTICATED
    assert reason(missing.value) == "TOKEN_MISSING"
    with pytest.raises(PermissionDenied) as wrong:
        guard.check(WRITE, bearer(TOKEN + "x"))
    assert wrong.value.code is Code.PERMISSION_DENIED
    assert reason(wrong.value) == "TOKEN_INVALID"
    assert TOKEN not in wrong.value.message


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", TOKEN)],
        [("authorization", f"Basic {TOKEN}")],
        [("authorization", "Bearer")],
        [("authorization", "Bearer ")],
        [("authorization", f"Bearer {TOKEN} extra")],
        [("authorization", f"Bearer {TOKEN}"), ("authorization", f"Bearer {TOKEN}")],
    ],
)
def test_malformed_authorization_is_unauthenticated(
    tmp_path: Path, metadata: list[tuple[str, str]]
) -> None:
    guard = authorizer(tmp_path, TOKEN)
    with pytest.raises(Unauthenticated) as caught:
        guard.check(WRITE, metadata)
    assert reason(caught.value) == "TOKEN_MALFORMED"
    assert TOKEN not in caught.value.message


def test_reads_are_open_unless_required(tmp_path: Path) -> None:
    open_reads = authorizer(tmp_path, TOKEN)
    for method in READ_METHODS:
        assert not open_reads.requires_token(method)
        open_reads.check(method, [])
    guarded = authorizer(tmp_path, TOKEN, reads=True)
    for method in READ_METHODS:
        assert guarded.requires_token(method)
        guarded.check(method, bearer(TOKEN))
        with pytest.raises(Unauthenticated):
            guarded.check(method, [])
        with pytest.raises(PermissionDenied):
            guarded.check(method, bearer(OTHER))


def test_an_unclassified_method_is_treated_as_state_changing(tmp_path: Path) -> None:
    guard = authorizer(tmp_path, TOKEN)
    assert guard.requires_token(f"{SERVICE}DeleteEverything")
    with pytest.raises(Unauthenticated):
        guard.check(f"{SERVICE}DeleteEverything", [])


def test_the_authorizer_keeps_no_token_in_clear(tmp_path: Path) -> None:
    guard = authorizer(tmp_path, TOKEN)
    assert TOKEN not in repr(guard)
    assert all(TOKEN.encode() not in digest for digest in guard.digests)


@given(
    st.just(TOKEN)
    | st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1)
    | st.builds(lambda n: TOKEN[:n], st.integers(1, len(TOKEN) - 1))
)
def test_only_the_configured_token_is_accepted(candidate: str) -> None:
    guard = TokenAuthorizer.from_tokens([TOKEN])
    if candidate == TOKEN:
        guard.check(WRITE, bearer(candidate))
    else:
        with pytest.raises(PermissionDenied):
            guard.check(WRITE, bearer(candidate))


def test_no_certificate_means_a_plaintext_port() -> None:
    assert server_credentials(config()) is None


def test_certificate_files_are_checked_at_start_up(tmp_path: Path) -> None:
    pem = tmp_path / "cert.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n")
    not_pem = tmp_path / "key.txt"
    not_pem.write_text("hunter2")
    with pytest.raises(ConfigError, match=r"tls_key_file=.*: no such file"):
        server_credentials(config(tls_cert_file=str(pem), tls_key_file=str(tmp_path / "nope")))
    with pytest.raises(ConfigError, match=r"tls_key_file=.*: not a PEM file") as caught:
        server_credentials(config(tls_cert_file=str(pem), tls_key_file=str(not_pem)))
    assert "hunter2" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"tls_client_ca_file=.*: no such file"):
        server_credentials(
            config(
                tls_cert_file=str(pem),
                tls_key_file=str(pem),
                tls_client_ca_file=str(tmp_path / "nope"),
            )
        )
