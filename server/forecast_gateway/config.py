"""Gateway configuration: a TOML file plus FORECAST_* environment overrides.

Built once at start-up by `GatewayConfig.load()` and validated there, so a bad
value stops the gateway with a message naming the key instead of failing on
the first request.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_PREFIX = "FORECAST_"
MAX_CONNECTION_SECONDS = (2**31 - 1) / 1000
"""Longest idle timeout or connection age gRPC accepts (int32 milliseconds, ~24.8 days)."""
DEFAULT_CONFIG_FILE = Path("config/gateway.toml")


class ConfigError(ValueError):
    """The configuration is invalid; the message names the key at fault."""


@dataclass(frozen=True)
class ModelConfig:
    """A model the gateway serves (the allow-list of Triton models callers may reach)."""

    name: str
    default_version: str = ""


@dataclass(frozen=True)
class GatewayConfig:
    """Every setting of the gateway. Field names are the TOML keys of [gateway]."""

    host: str = "0.0.0.0"
    port: int = 50051
    triton_url: str = "127.0.0.1:8001"
    metrics_port: int = 9100
    max_history_length: int = 10_000
    max_message_bytes: int = 1024 * 1024
    default_timeout_s: float = 10.0
    catalog_refresh_s: float = 1.0
    shutdown_grace_s: float = 10.0
    shutdown_drain_s: float = 0.0
    max_batch_series: int = 4096
    stream_max_pending: int = 64
    routing_file: str = "config/routing.toml"
    routing_poll_s: float = 2.0
    shadow_timeout_s: float = 10.0
    max_in_flight: int = 1024
    idle_timeout_s: float = 300.0
    max_connection_age_s: float = 0.0
    triton_retries: int = 2
    retry_budget_ratio: float = 0.1
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    auth_token_file: str = ""
    auth_required_for_reads: bool = False
    store_path: str = ".run/experiments.sqlite3"
    store_url: str = ""
    store_password_file: str = ""
    store_max_forecasts: int = 200_000
    store_max_age_s: float = 7 * 24 * 3600.0
    log_format: str = "auto"
    log_level: str = "info"
    models: tuple[ModelConfig, ...] = field(default_factory=tuple)

    @property
    def address(self) -> str:
        """The host:port the gRPC server binds."""
        return f"{self.host}:{self.port}"

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Read FORECAST_CONFIG_FILE (default config/gateway.toml), then apply FORECAST_* env."""
        env = os.environ if env is None else env
        path = Path(env.get(f"{ENV_PREFIX}CONFIG_FILE", str(DEFAULT_CONFIG_FILE)))
        document: dict[str, Any] = {}
        if path.exists():
            try:
                document = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as error:
                raise ConfigError(f"{path}: not valid TOML: {error}") from error
        elif f"{ENV_PREFIX}CONFIG_FILE" in env:
            raise ConfigError(f"{ENV_PREFIX}CONFIG_FILE={path}: no such file")
        return cls.from_mapping(document, env, source=str(path))

    @classmethod
    def from_mapping(
        cls, document: Mapping[str, Any], env: Mapping[str, str], source: str = "config"
    ) -> GatewayConfig:
        """Build from a parsed TOML document and environment overrides."""
        settings = dict(document.get("gateway", {}))
        known = {f.name for f in dataclasses.fields(cls)} - {"models"}
        unknown = set(settings) - known
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) in [gateway]: {sorted(unknown)}")
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            if spec.name == "models":
                continue
            env_value = env.get(f"{ENV_PREFIX}{spec.name.upper()}")
            raw = env_value if env_value is not None else settings.get(spec.name)
            if raw is not None:
                values[spec.name] = _coerce(spec.name, raw, spec.type)
        values["models"] = _models(document.get("models", []), env, source)
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Raise ConfigError for values that cannot work."""
        positive = {
            "max_history_length": self.max_history_length,
            "max_message_bytes": self.max_message_bytes,
            "default_timeout_s": self.default_timeout_s,
            "catalog_refresh_s": self.catalog_refresh_s,
            "max_batch_series": self.max_batch_series,
            "stream_max_pending": self.stream_max_pending,
            "routing_poll_s": self.routing_poll_s,
            "shadow_timeout_s": self.shadow_timeout_s,
            "max_in_flight": self.max_in_flight,
            "store_max_forecasts": self.store_max_forecasts,
            "store_max_age_s": self.store_max_age_s,
        }
        for key, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{key} must be > 0, got {value}")
        non_negative = {
            "idle_timeout_s": self.idle_timeout_s,  # 0: off
            "max_connection_age_s": self.max_connection_age_s,  # 0: off
            "triton_retries": self.triton_retries,
            "shutdown_grace_s": self.shutdown_grace_s,
            "shutdown_drain_s": self.shutdown_drain_s,
        }
        for key, value in non_negative.items():
            if value < 0:
                raise ConfigError(f"{key} must be >= 0, got {value}")
        for key in ("idle_timeout_s", "max_connection_age_s"):  # gRPC takes int32 milliseconds
            if non_negative[key] > MAX_CONNECTION_SECONDS:
                raise ConfigError(
                    f"{key} must be at most {MAX_CONNECTION_SECONDS:.0f} s (0: off), "
                    f"got {non_negative[key]}"
                )
        if not 0 <= self.retry_budget_ratio <= 1:
            raise ConfigError(
                f"retry_budget_ratio must be within 0-1, got {self.retry_budget_ratio}"
            )
        self._validate_settings()

    def _validate_settings(self) -> None:
        """The checks of validate() that are not plain number bounds."""
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ConfigError("tls_client_ca_file (mTLS) needs tls_cert_file and tls_key_file")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if not -1 <= self.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be -1 (off) or 0-65535, got {self.metrics_port}")
        if self.log_format not in {"auto", "json", "console"}:
            raise ConfigError(f"log_format must be auto, json or console, got {self.log_format!r}")
        if not self.models:
            raise ConfigError(
                "no models configured: list them under [[models]] in the config file "
                f"or in {ENV_PREFIX}MODELS (comma-separated names)"
            )


def load_or_exit(env: Mapping[str, str] | None = None) -> GatewayConfig:
    """GatewayConfig.load(), or exit 2 with a one-line message naming the key at fault."""
    try:
        return GatewayConfig.load(env)
    except ConfigError as error:
        sys.stderr.write(f"forecast-gateway: invalid configuration: {error}\n")
        raise SystemExit(2) from error


def _coerce(key: str, raw: object, kind: object) -> object:
    """Convert a TOML or env value to the field's type, naming the key on failure."""
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in {"true", "1", "yes", "on"}:
            return True
        if text in {"false", "0", "no", "off", ""}:
            return False
        raise ConfigError(f"{key}: expected true or false, got {raw!r}")
    converters: dict[object, type] = {"int": int, "float": float, "str": str}
    convert = converters.get(kind, str)
    try:
        return convert(raw)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{key}: expected {kind}, got {raw!r}") from error


def _models(
    entries: list[Mapping[str, Any]], env: Mapping[str, str], source: str
) -> tuple[ModelConfig, ...]:
    """The served models: FORECAST_MODELS (names) replaces the file's [[models]] list."""
    names = env.get(f"{ENV_PREFIX}MODELS")
    if names is not None:
        entries = [{"name": n.strip()} for n in names.split(",") if n.strip()]
    models: list[ModelConfig] = []
    for entry in entries:
        name = str(entry.get("name", "")).strip()
        if not name:
            raise ConfigError(f"{source}: a [[models]] entry has no name")
        version = str(entry.get("default_version", "")).strip()
        if version and not version.isdigit():
            raise ConfigError(f"{source}: model {name}: default_version must be a number")
        models.append(ModelConfig(name=name, default_version=version))
    if len({m.name for m in models}) != len(models):
        raise ConfigError(f"{source}: a model is listed twice")
    return tuple(models)
