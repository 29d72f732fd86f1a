"""Access to the gateway: TLS credentials for its port and bearer tokens per method.

Tokens come from `auth_token_file`, read once at start-up (one per line;
blank lines and `#` comments are skipped). Only their SHA-256 digests are
kept, and a presented token is compared with every digest using
`hmac.compare_digest`. No token, and no part of the file, ever goes into a
log line or an error message.

The rule, applied by `TokenAuthorizer.check` for every ForecastService call
(health and reflection are never checked, for probes and tools):

- a method in `STATE_CHANGING_METHODS` needs a valid token whenever a token
  file is configured; a method in `READ_METHODS` needs one only with
  `auth_required_for_reads`; a method in neither (a new RPC nobody
  classified yet) is treated as state-changing;
- no `authorization` metadata: UNAUTHENTICATED, reason TOKEN_MISSING;
- metadata that is not exactly one `Bearer <token>`: UNAUTHENTICATED,
  reason TOKEN_MALFORMED;
- a well-formed token that is not in the file: PERMISSION_DENIED, reason
  TOKEN_INVALID.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from forecast_gateway.config import GatewayConfig
from forecast_gateway.errors import ConfigError, PermissionDenied, Unauthenticated

SERVICE = "/forecast.v1.ForecastService/"
STATE_CHANGING_METHODS = frozenset(
    f"{SERVICE}{name}" for name in ("ReportActuals", "StartBacktest", "StartForecastBatch")
)
"""Methods that change the gateway's state: add every new one here."""
READ_METHODS = frozenset(
    f"{SERVICE}{name}"
    for name in (
        "Forecast",
        "ForecastBatch",
        "StreamForecast",
        "CompareVersions",
        "GetExperiment",
        "ListExperiments",
        "ListModels",
        "GetModel",
        "Backtest",
    )
)
"""Methods that only read (a forecast records nothing a caller can change)."""

AUTHORIZATION_HEADER = "authorization"
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[\x21-\x7e]+")  # visible ASCII: valid in HTTP/2 metadata, no spaces


@dataclass(frozen=True)
class TokenAuthorizer:
    """Checks the bearer token of a call against the configured tokens."""

    digests: tuple[bytes, ...] = field(repr=False)
    required_for_reads: bool = False

    @classmethod
    def from_config(cls, config: GatewayConfig) -> TokenAuthorizer | None:
        """The authorizer for `config`, or None when no token file is configured.

        Raises ConfigError if the token file is missing, unreadable or holds
        no token, and if reads are to be guarded without a token file.
        """
        if not config.auth_token_file:
            if config.auth_required_for_reads:
                raise ConfigError("auth_required_for_reads needs auth_token_file (the tokens)")
            return None
        return cls.from_tokens(
            load_tokens(Path(config.auth_token_file)), config.auth_required_for_reads
        )

    @classmethod
    def from_tokens(
        cls, tokens: Iterable[str], required_for_reads: bool = False
    ) -> TokenAuthorizer:
        """An authorizer accepting `tokens` (kept only as SHA-256 digests)."""
        return cls(tuple(_digest(t) for t in tokens), required_for_reads)

    def requires_token(self, method: str) -> bool:
        """Whether `method` (the full "/package.Service/Method" name) needs a token."""
        if method in READ_METHODS:
            return self.required_for_reads
        return True

    def check(self, method: str, metadata: Iterable[tuple[str, str | bytes]]) -> None:
        """Return if the call may proceed; raise Unauthenticated or PermissionDenied if not."""
        if not self.requires_token(method):
            return
        values = [v for k, v in metadata if k.lower() == AUTHORIZATION_HEADER]
        if not values:
            raise Unauthenticated(
                "this call needs a token: send metadata 'authorization: Bearer <token>'",
                reason="TOKEN_MISSING",
            )
        token = _bearer_token(values)
        if token is None:
            raise Unauthenticated(
                "malformed authorization metadata: expected one 'Bearer <token>'",
                reason="TOKEN_MALFORMED",
            )
        if not self._accepts(token):
            raise PermissionDenied(
                "the token is not valid for this gateway", reason="TOKEN_INVALID"
            )

    def _accepts(self, token: str) -> bool:
        """Constant-time comparison with every known token (no early exit)."""
        presented = _digest(token)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched


def load_tokens(path: Path) -> tuple[str, ...]:
    """The tokens in `path`: one per line, blank lines and `#` comments skipped.

    Raises ConfigError naming the file (and line), never its content.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"auth_token_file={path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"auth_token_file={path}: cannot read it ({error.strerror})") from None
    tokens: list[str] = []
    for number, line in enumerate(raw.splitlines(), start=1):
        text = line.strip()
        if not text or text.startswith(b"#"):
            continue
        if not _TOKEN.fullmatch(text.decode("latin-1")):
            raise ConfigError(
                f"auth_token_file={path}: line {number}: a token must be printable ASCII "
                "without spaces"
            )
        if len(text) < MIN_TOKEN_LENGTH:
            raise ConfigError(
                f"auth_token_file={path}: line {number}: a token must have at least "
                f"{MIN_TOKEN_LENGTH} characters (e.g. `openssl rand -hex 32`)"
            )
        tokens.append(text.decode("ascii"))
    if not tokens:
        raise ConfigError(
            f"auth_token_file={path}: no token in it (every line is blank or a comment)"
        )
    return tuple(tokens)


def server_credentials(config: GatewayConfig) -> grpc.ServerCredentials | None:
    """TLS credentials for the gateway's port, or None when no certificate is configured.

    With `tls_client_ca_file` the port requires a client certificate signed
    by that CA (mTLS). Raises ConfigError if a file is missing or not PEM.
    """
    if not config.tls_cert_file:
        return None
    certificate = _read_pem("tls_cert_file", config.tls_cert_file)
    key = _read_pem("tls_key_file", config.tls_key_file)
    client_ca = (
        _read_pem("tls_client_ca_file", config.tls_client_ca_file)
        if config.tls_client_ca_file
        else None
    )
    return grpc.ssl_server_credentials(
        [(key, certificate)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def _read_pem(key: str, path: str) -> bytes:
    try:
        content = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}={path}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{key}={path}: cannot read it ({error.strerror})") from None
    if b"-----BEGIN " not in content:
        raise ConfigError(f"{key}={path}: not a PEM file")
    return content


def _bearer_token(values: list[str | bytes]) -> str | None:
    """The token of a single well-formed `Bearer <token>` value, else None."""
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN.fullmatch(token):
        return None
    return token


def caller(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """Who is calling, as the SHA-256 of their bearer token ("" without one): an owner key.

    Long-running operations are kept under it, so only the same token reads
    or cancels them; the token itself is never stored.
    """
    values = [v for k, v in metadata if k.lower() == AUTHORIZATION_HEADER]
    token = _bearer_token(values) if values else None
    return _digest(token).hex() if token is not None else ""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("ascii")).digest()
