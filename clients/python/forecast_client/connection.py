"""How the client reaches a gateway: TLS or plaintext, a bearer token, and the retry policy.

Kept apart from the RPC methods so the CLI and `ForecastClient` build the
channel the same way, and so the rules can be tested without a server:

- TLS is on when asked for (`tls=True`) or implied by a CA or client
  certificate, like grpcurl's `-cacert` / `-cert` / `-key`; without a CA
  the system's trusted roots verify the gateway.
- The token goes in the `authorization: Bearer <token>` metadata the
  gateway reads (docs/security.md). It is checked here, before gRPC sees it,
  so no error message can echo it back.
- Every call of `forecast.v1.ForecastService` is retried on UNAVAILABLE by
  gRPC itself (a service config), so a rolling restart of the gateways is
  invisible to callers. The calls of `google.longrunning.Operations` are
  retried by `ForecastClient` with the same policy and backoffs
  (`RetryPolicy.backoff_s`): the service config names one service.
"""

from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path

import grpc

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "RETRIED_SERVICE",
    "RetryPolicy",
    "SettingError",
    "bearer_metadata",
    "channel_credentials",
    "channel_options",
    "read_token_file",
]

PathLike = str | os.PathLike[str]
RETRIED_SERVICE = "forecast.v1.ForecastService"
AUTHORIZATION = "authorization"
# What the gateway accepts as a token (auth.py): visible ASCII, no spaces.
_TOKEN = re.compile(r"[\x21-\x7e]+")
_MAX_ATTEMPTS = 5  # gRPC caps maxAttempts at 5 (gRFC A6)


class SettingError(ValueError):
    """A connection setting is unusable; `option` names it ("cacert", "token", ...)."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC's own retries (gRFC A6) for every ForecastService method.

    A call that ends UNAVAILABLE (the gateway is restarting, or a replica
    went away) is sent again after a random backoff of up to
    `initial_backoff_s * backoff_multiplier**n` (at most `max_backoff_s`),
    `max_attempts` tries in all, within the call's deadline. Calls that
    GOAWAY caught before the gateway read them are retried by gRPC core on a
    new connection whatever the policy. `retryable_codes` are status code
    names.

    ReportActuals is retried too: it writes the given values at the given
    horizon steps, so a second delivery of the same request leaves the same
    stored state and the same scores (only the gateway's
    `forecast_gateway_actuals_received_total` counter counts it twice).
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= _MAX_ATTEMPTS:
            raise ValueError(f"max_attempts must be 2..{_MAX_ATTEMPTS}, got {self.max_attempts}")
        if not 0 < self.initial_backoff_s <= self.max_backoff_s:
            raise ValueError("backoffs must satisfy 0 < initial_backoff_s <= max_backoff_s")
        if self.backoff_multiplier <= 0:
            raise ValueError(f"backoff_multiplier must be > 0, got {self.backoff_multiplier}")
        known = {code.name for code in grpc.StatusCode}
        unknown = [code for code in self.retryable_codes if code not in known]
        if unknown or not self.retryable_codes:
            raise ValueError(f"retryable_codes must be gRPC status code names, got {unknown}")

    def backoff_s(self, retry: int) -> float:
        """The pause before retry number `retry` (1 = the second attempt), drawn as gRPC does."""
        ceiling = self.initial_backoff_s * self.backoff_multiplier ** (retry - 1)
        return random.uniform(0.0, min(ceiling, self.max_backoff_s))

    def method_config(self) -> dict[str, object]:
        """The service config's methodConfig entry (gRFC A6) carrying this policy."""
        policy = {
            "maxAttempts": self.max_attempts,
            "initialBackoff": f"{self.initial_backoff_s}s",
            "maxBackoff": f"{self.max_backoff_s}s",
            "backoffMultiplier": self.backoff_multiplier,
            "retryableStatusCodes": list(self.retryable_codes),
        }
        return {"name": [{"service": RETRIED_SERVICE}], "retryPolicy": policy}


DEFAULT_RETRY_POLICY = RetryPolicy()
"""The policy `ForecastClient` uses unless given another (or None: no retries)."""


def channel_options(
    retry_policy: RetryPolicy | None, load_balancing: str | None = None
) -> list[tuple[str, str | int]]:
    """The channel options for retries with `retry_policy` (None: off) and the LB policy.

    `load_balancing` is a gRPC policy name: "round_robin" spreads calls over
    every address the target resolves to (several replicas); gRPC's default
    is "pick_first".
    """
    config: dict[str, object] = {}
    if retry_policy is not None:
        config["methodConfig"] = [retry_policy.method_config()]
    if load_balancing is not None:
        config["loadBalancingConfig"] = [{load_balancing: {}}]
    options: list[tuple[str, str | int]] = [("grpc.enable_retries", int(retry_policy is not None))]
    if config:
        options.append(("grpc.service_config", json.dumps(config)))
    return options


def channel_credentials(
    *,
    tls: bool = False,
    cacert: PathLike | None = None,
    cert: PathLike | None = None,
    key: PathLike | None = None,
) -> grpc.ChannelCredentials | None:
    """TLS credentials from PEM files, or None for a plaintext channel.

    A CA, or a client certificate, implies TLS. `cert` and `key` (mTLS) go
    together. Raises SettingError naming the option whose file is missing,
    unreadable or not PEM.
    """
    if (cert is None) != (key is None):
        raise SettingError(
            "cert" if cert is None else "key",
            "cert and key go together (the client certificate and its key)",
        )
    if not (tls or cacert is not None or cert is not None):
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem("cacert", cacert),
        private_key=_read_pem("key", key),
        certificate_chain=_read_pem("cert", cert),
    )


def bearer_metadata(token: str) -> tuple[str, str]:
    """The metadata pair for `token`; SettingError (without the token) if it is malformed."""
    token = token.strip()
    if not _TOKEN.fullmatch(token):
        raise SettingError("token", "a token is printable ASCII without spaces, and not empty")
    return AUTHORIZATION, f"Bearer {token}"


def read_token_file(path: PathLike) -> str:
    """The token in `path` (one token; surrounding blank space and newlines ignored).

    Raises SettingError naming the file, never its content.
    """
    try:
        text = _read_bytes("token_file", path).decode("ascii").strip()
    except UnicodeDecodeError:
        text = ""
    if not _TOKEN.fullmatch(text):
        raise SettingError("token_file", f"{path}: expected one token (printable ASCII, no spaces)")
    return text


def _read_pem(option: str, path: PathLike | None) -> bytes | None:
    """The PEM file of `option`, checked here: gRPC would only fail at the handshake."""
    if path is None:
        return None
    data = _read_bytes(option, path)
    if b"-----BEGIN " not in data:
        raise SettingError(option, f"{path}: not a PEM file")
    return data


def _read_bytes(option: str, path: PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise SettingError(option, f"cannot read {path}: {error.strerror}") from None
