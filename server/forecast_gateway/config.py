"""Gateway configuration: a TOML file plus FORECAST_* environment overrides.

Every key is declared once, below, with its type, range and meaning; pydantic
checks them: numbers finite and in range, no bool or fraction where an int
is due, one of the listed words, unknown keys rejected. The file is checked
with TOML's own types (`port = "1"` is an error); environment variables are
text, parsed by the field's type. Built once at start-up by
`GatewayConfig.load()`, so a bad value stops the gateway with one line naming
the key instead of failing on the first request.

Relative paths (`routing_file`, `store_path`, `sqlite:///` store URLs, the
TLS, token and password files) are resolved against the directory of the
config file that sets them, so a file works from any working directory;
paths from FORECAST_* variables, and the defaults, are relative to the
working directory.
"""

from __future__ import annotations

import os
import sys
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from forecast_gateway import store_urls
from forecast_gateway.errors import ConfigError
from forecast_gateway.names import VERSION_RULE, is_version
from forecast_gateway.triton_target import parse_target

ENV_PREFIX = "FORECAST_"
MAX_CONNECTION_SECONDS = (2**31 - 1) / 1000
"""Longest idle timeout or connection age gRPC accepts (int32 milliseconds, ~24.8 days)."""
MAX_SECONDS = 366 * 24 * 3600.0
"""Longest duration any setting takes: keeps timers and deadlines far from overflow."""
MAX_WORKERS = 256
DEFAULT_CONFIG_FILE = Path("config/gateway.toml")
PATH_KEYS = (
    "routing_file",
    "store_path",
    "store_password_file",
    "tls_cert_file",
    "tls_key_file",
    "tls_client_ca_file",
    "auth_token_file",
    "calibration_dir",
)
"""Keys holding a file path: relative values in a config file are relative to that file."""
SECRET_KEYS = frozenset({"store_url"})
"""Keys whose value may hold a password: never shown in a message."""
Loc = tuple[int | str, ...]


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _version_text(value: object) -> object:
    """`default_version = 2` is read as "2" (the key is a version name)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _store_url(value: str) -> str:
    """Empty, `sqlite:///path`, a plain path or a PostgreSQL URL; never echoes the value."""
    if store_urls.is_known(value):
        return value
    raise ValueError("must be empty, sqlite:///<path>, a file path or postgresql://... (not shown)")


def _triton_url(value: str) -> str:
    """A Triton target the gateway can dial (triton_target.parse_target's rules)."""
    try:
        parse_target(value)
    except ConfigError as error:
        raise ValueError(str(error).removeprefix("triton_url: ")) from None
    return value


Text = Annotated[str, Field(min_length=1)]
Port = Annotated[int, Field(ge=0, le=65535)]
Count = Annotated[int, Field(gt=0, le=2**31 - 1)]
Seconds = Annotated[float, Field(gt=0, le=MAX_SECONDS)]
OptionalSeconds = Annotated[float, Field(ge=0, le=MAX_SECONDS)]
ConnectionSeconds = Annotated[float, Field(ge=0, le=MAX_CONNECTION_SECONDS)]


def _version(value: str) -> str:
    """Empty (the model's default) or a version name (`names.is_version`)."""
    if value and not is_version(value):
        raise ValueError(f"must be empty or {VERSION_RULE}")
    return value


Version = Annotated[
    str,
    BeforeValidator(_version_text),
    StringConstraints(strip_whitespace=True),
    AfterValidator(_version),
]


@dataclass(frozen=True)
class ModelConfig:
    """A model the gateway serves (the allow-list of Triton models callers may reach)."""

    __pydantic_config__ = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strict=True, strip_whitespace=True, min_length=1)]
    """The Triton model name."""
    default_version: Version = ""
    """The version serving requests that name none; empty: the highest ready version."""


class _Settings(BaseModel):
    """The `[gateway]` keys, each validated on its own (FORECAST_<KEY> overrides one)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        strict=True,
        allow_inf_nan=False,
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    host: Text = "0.0.0.0"
    """Address the gRPC server binds."""
    port: Port = 50051
    """gRPC port (0: any free port)."""
    workers: Annotated[int, Field(ge=1, le=MAX_WORKERS)] | Literal["auto"] = 1
    """Gateway processes sharing the port (SO_REUSEPORT); auto: one per usable core."""
    triton_url: Annotated[Text, AfterValidator(_triton_url)] = "127.0.0.1:8001"
    """Triton's gRPC endpoint (host:port, or a dns:/// target for several Tritons)."""
    metrics_port: Annotated[int, Field(ge=-1, le=65535)] = 9100
    """Prometheus /metrics port (-1: off)."""
    max_history_length: Count = 10_000
    """Longest history accepted (points); longer ones are rejected, not truncated."""
    max_message_bytes: Count = 1024 * 1024
    """Largest request message (bytes); larger ones get RESOURCE_EXHAUSTED."""
    default_timeout_s: Seconds = 10.0
    """Deadline of the Triton call when the caller sets none."""
    catalog_refresh_s: Seconds = 1.0
    """How often versions and readiness are re-read from Triton."""
    shutdown_grace_s: OptionalSeconds = 10.0
    """Time in-flight requests get to finish on SIGTERM."""
    shutdown_drain_s: OptionalSeconds = 0.0
    """On SIGTERM, time the gateway keeps serving while reporting NOT_SERVING."""
    max_batch_series: Count = 4096
    """Most series in one ForecastBatch call (and one Backtest)."""
    backtest_timeout_s: Seconds = 300.0
    """Deadline of a Backtest call when the caller sets none (or a later one)."""
    operation_timeout_s: Seconds = 3600.0
    """How long one run of a long-running operation (StartBacktest) may take."""
    operation_ttl_s: Seconds = 86400.0
    """How long a finished operation (its result or error) is kept before it is deleted."""
    operation_concurrency: Annotated[int, Field(ge=1, le=64)] = 1
    """Long-running operations one gateway process runs at once (the others wait, queued)."""
    operation_lease_s: Annotated[float, Field(ge=1.0, le=600.0)] = 15.0
    """A replica's hold on an operation it runs, renewed every third of it: after a
    replica dies, another takes its operations over once this has passed."""
    max_operation_series: Count = 100_000
    """Most series in one StartForecastBatch operation (run in chunks of max_batch_series)."""
    stream_max_pending: Count = 64
    """StreamForecast requests in flight or waiting to be read by the caller."""
    routing_file: str = "config/routing.toml"
    """Routing policies per model, reloaded on change; empty: default routing only."""
    routing_poll_s: Seconds = 2.0
    """How often the routing file is checked for changes."""
    shadow_timeout_s: Seconds = 10.0
    """Timeout of each shadow forecast."""
    max_in_flight: Count = 1024
    """Requests in progress at most; beyond it new ones are shed (RESOURCE_EXHAUSTED)."""
    idle_timeout_s: ConnectionSeconds = 300.0
    """A connection with no call for this long is closed (GOAWAY); 0: never."""
    max_connection_age_s: ConnectionSeconds = 0.0
    """Connections this old get GOAWAY so clients re-resolve and spread; 0: never."""
    triton_retries: Annotated[int, Field(ge=0, le=10)] = 2
    """Retries of a Triton call that failed with UNAVAILABLE, within the deadline."""
    retry_budget_ratio: Annotated[float, Field(ge=0, le=1)] = 0.1
    """Most retries per request over the last seconds (0-1)."""
    tls_cert_file: str = ""
    """TLS certificate (PEM) of the gateway's port; with tls_key_file, TLS is on."""
    tls_key_file: str = ""
    """TLS private key (PEM)."""
    tls_client_ca_file: str = ""
    """CA (PEM) that client certificates must be signed by (mTLS)."""
    auth_token_file: str = ""
    """Bearer tokens, one per line; when set, ReportActuals needs one."""
    auth_required_for_reads: bool = False
    """Also require a token for forecasts and reads."""
    store_path: Text = ".run/experiments.sqlite3"
    """SQLite file of the A/B store (forecasts awaiting actuals), when store_url is empty."""
    store_url: Annotated[str, AfterValidator(_store_url)] = Field(default="", repr=False)
    """A/B store: empty or sqlite:///<path> (SQLite), or postgresql://user@host/db."""
    store_password_file: str = ""
    """File holding the PostgreSQL password (instead of one in store_url)."""
    store_max_forecasts: Count = 200_000
    """Most forecasts kept awaiting actuals (oldest dropped first)."""
    store_max_age_s: Seconds = 7 * 24 * 3600.0
    """Longest a forecast waits for its actuals."""
    calibration_dir: str = ""
    """Directory of <model>/<version>/calibration.json (training-time scores); empty: none."""
    calibration_window: Annotated[int, Field(ge=10, le=100_000)] = 256
    """Most recent calibration scores kept per model version and horizon step."""
    calibration_refresh_s: Seconds = 1.0
    """How often the calibration pools are re-read from the A/B store (every replica's)."""
    calibration_cache_entries: Annotated[int, Field(ge=16, le=1_000_000)] = 4096
    """Most (model, version, levels, horizon) bound tables kept; the least recently used go."""
    discover_models: bool = True
    """Serve every model in Triton's repository that declares `forecast.contract`."""
    allowed_models: str = ""
    """Comma-separated model names; non-empty: only these are served (listed or discovered)."""
    log_format: Annotated[Literal["auto", "json", "console"], BeforeValidator(_lower)] = "auto"
    """Log lines as json, console, or auto (JSON unless on a terminal)."""
    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = "info"
    """Lowest level logged."""


class _File(BaseModel):
    """A config file: the `[gateway]` table and the `[[models]]` list."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    gateway: _Settings = _Settings()
    models: list[ModelConfig] | None = None


class GatewayConfig(_Settings):
    """Every setting of the gateway. Field names are the TOML keys of [gateway]."""

    model_config = ConfigDict(strict=False)

    models: tuple[ModelConfig, ...] = ()
    """The served models ([[models]] in the file, or FORECAST_MODELS=a,b)."""

    @property
    def allowed(self) -> frozenset[str]:
        """The allow-list as a set (empty: no restriction)."""
        return frozenset(n.strip() for n in self.allowed_models.split(",") if n.strip())

    @property
    def address(self) -> str:
        """The host:port the gRPC server binds."""
        return f"{self.host}:{self.port}"

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        """The checks that involve more than one key."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if self.store_password_file and not store_urls.is_postgres(self.store_url):
            raise ValueError("store_password_file needs a postgresql:// store_url")
        if not self.models and not self.discover_models:
            raise ValueError(
                "no models configured and discover_models is false: list them under "
                f"[[models]] in the config file or in {ENV_PREFIX}MODELS (comma-separated "
                "names), or turn discover_models on"
            )
        if len({m.name for m in self.models}) != len(self.models):
            raise ValueError("models: a model is listed twice")
        return self

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Read FORECAST_CONFIG_FILE (default config/gateway.toml), then apply FORECAST_* env."""
        env = os.environ if env is None else env
        named = env.get(f"{ENV_PREFIX}CONFIG_FILE")
        path = Path(named) if named else DEFAULT_CONFIG_FILE
        if not named and not path.exists():
            return cls.from_mapping({}, env, source=str(path))
        try:
            document = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{ENV_PREFIX}CONFIG_FILE={path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: cannot read the config file: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        return cls.from_mapping(document, env, source=str(path), directory=path.parent)

    @classmethod
    def from_mapping(
        cls,
        document: Mapping[str, Any],
        env: Mapping[str, str],
        source: str = "config",
        directory: Path | None = None,
    ) -> GatewayConfig:
        """Build from a parsed TOML document and environment overrides.

        Relative paths in `document` are resolved against `directory` when given.
        """
        try:
            file = _File.model_validate(document)
        except ValidationError as error:
            raise ConfigError(_describe(error, lambda loc: f"{source}: {_dotted(loc)}")) from None
        values = {key: getattr(file.gateway, key) for key in file.gateway.model_fields_set}
        if directory is not None:
            values = _resolved(values, directory.absolute())
        overrides = {
            key: env[f"{ENV_PREFIX}{key.upper()}"]
            for key in _Settings.model_fields
            if f"{ENV_PREFIX}{key.upper()}" in env
        }
        try:
            parsed = _Settings.model_validate_strings(overrides)
        except ValidationError as error:
            raise ConfigError(_describe(error, _variable)) from None
        values |= {key: getattr(parsed, key) for key in overrides}
        models: Any = file.models or ()
        names = env.get(f"{ENV_PREFIX}MODELS")
        if names is not None:
            models = [{"name": name} for name in names.split(",") if name.strip()]
        try:
            return cls(**values, models=models)
        except ValidationError as error:
            raise ConfigError(_describe(error, _dotted)) from None


def load_or_exit(env: Mapping[str, str] | None = None) -> GatewayConfig:
    """GatewayConfig.load(), or exit 2 with a one-line message naming the key at fault."""
    try:
        return GatewayConfig.load(env)
    except ConfigError as error:
        sys.stderr.write(f"forecast-gateway: invalid configuration: {error}\n")
        raise SystemExit(2) from None


def _resolved(values: Mapping[str, Any], directory: Path) -> dict[str, Any]:
    """`values` with its relative paths made relative to `directory` (absolute)."""
    resolved = dict(values)
    for key in PATH_KEYS:
        if resolved.get(key):
            resolved[key] = os.path.normpath(directory / resolved[key])
    url = resolved.get("store_url", "")
    path = url.removeprefix(store_urls.SQLITE_PREFIX)
    if url.startswith(store_urls.SQLITE_PREFIX) and path and not path.startswith("/"):
        resolved["store_url"] = store_urls.SQLITE_PREFIX + os.path.normpath(directory / path)
    elif url and "://" not in url:
        resolved["store_url"] = os.path.normpath(directory / url)
    return resolved


def _dotted(loc: Loc) -> str:
    return ".".join(str(part) for part in loc)


def _variable(loc: Loc) -> str:
    return f"{ENV_PREFIX}{_dotted(loc).upper()}"


_MESSAGES = {
    "extra_forbidden": "unknown key",
    "unexpected_keyword_argument": "unknown key",
    "model_type": "expected a table",
    "dataclass_type": "expected a table",
    "list_type": "expected a list of tables ([[models]])",
}
_UNIONS = {"workers": f"must be an integer from 1 to {MAX_WORKERS} or 'auto'"}
"""Keys typed as a union: one message instead of one per member (whose name ends the loc)."""


def _describe(error: ValidationError, where: Callable[[Loc], str]) -> str:
    """One line naming each key at fault; values shown only where they hold no secret."""
    parts: list[str] = []
    for item in error.errors(include_url=False):
        loc = item["loc"]
        message = item["msg"].removeprefix("Value error, ")
        if len(loc) >= 2 and loc[-2] in _UNIONS:
            loc, message = loc[:-1], _UNIONS[str(loc[-2])]
            if _showable(loc, item.get("input")):
                message = f"{message}, got {item['input']!r}"
        elif item["type"] in _MESSAGES:
            message = _MESSAGES[item["type"]]
        elif _showable(loc, item.get("input")):
            message = f"{message}, got {item['input']!r}"
        part = f"{where(loc)}: {message}" if loc else message
        if part not in parts:
            parts.append(part)
    return "; ".join(parts)


_SHOWN = (set(GatewayConfig.model_fields) | {"name", "default_version"}) - SECRET_KEYS


def _showable(loc: Loc, value: object) -> bool:
    """Whether a rejected value can appear in a message: a short scalar of a known, public key."""
    return (
        bool(loc)
        and loc[-1] in _SHOWN
        and isinstance(value, str | int | float)
        and len(repr(value)) <= 80
    )
