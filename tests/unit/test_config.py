from pathlib import Path

import pytest

from forecast_gateway.config import ConfigError, GatewayConfig, ModelConfig
from forecast_gateway.server import connection_options

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = {"gateway": {"port": 6000}, "models": [{"name": "a", "default_version": "2"}]}


def test_shipped_config_file_loads() -> None:
    config = GatewayConfig.load({"FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml")})
    assert [m.name for m in config.models] == ["lstm_timeseries", "moving_average"]
    assert config.port == 50051


def test_env_overrides_file() -> None:
    config = GatewayConfig.from_mapping(
        DOCUMENT, {"FORECAST_PORT": "7000", "FORECAST_DEFAULT_TIMEOUT_S": "2.5"}
    )
    assert config.port == 7000
    assert config.default_timeout_s == 2.5
    assert config.models == (ModelConfig("a", "2"),)


def test_forecast_models_env_replaces_the_list() -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_MODELS": "x, y"})
    assert [m.name for m in config.models] == ["x", "y"]


@pytest.mark.parametrize(
    ("document", "env", "message"),
    [
        ({"gateway": {"prot": 1}, "models": [{"name": "a"}]}, {}, "unknown key"),
        (DOCUMENT, {"FORECAST_PORT": "abc"}, "port: expected int"),
        (DOCUMENT, {"FORECAST_PORT": "70000"}, "port must be"),
        (DOCUMENT, {"FORECAST_MAX_HISTORY_LENGTH": "0"}, "max_history_length must be > 0"),
        (DOCUMENT, {"FORECAST_LOG_FORMAT": "xml"}, "log_format"),
        (DOCUMENT, {"FORECAST_IDLE_TIMEOUT_S": "-1"}, "idle_timeout_s must be >= 0"),
        (DOCUMENT, {"FORECAST_IDLE_TIMEOUT_S": "1e7"}, "idle_timeout_s must be at most"),
        (DOCUMENT, {"FORECAST_MAX_CONNECTION_AGE_S": "-1"}, "max_connection_age_s must be >= 0"),
        (DOCUMENT, {"FORECAST_TRITON_RETRIES": "-1"}, "triton_retries must be >= 0"),
        (DOCUMENT, {"FORECAST_RETRY_BUDGET_RATIO": "2"}, "retry_budget_ratio must be within"),
        ({"models": []}, {}, "no models configured"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, {}, "listed twice"),
        (
            {"models": [{"name": "a", "default_version": "v2"}]},
            {},
            "default_version must be a number",
        ),
    ],
)
def test_invalid_configuration_names_the_key(
    document: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_mapping(document, env)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        GatewayConfig.load({"FORECAST_CONFIG_FILE": str(tmp_path / "missing.toml")})


def test_connection_options_follow_the_config() -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_IDLE_TIMEOUT_S": "2.5"})
    options = dict(connection_options(config))
    assert options["grpc.max_connection_idle_ms"] == 2500
    assert "grpc.max_connection_age_ms" not in options  # 0: off
    aged = GatewayConfig.from_mapping(
        DOCUMENT, {"FORECAST_MAX_CONNECTION_AGE_S": "60", "FORECAST_SHUTDOWN_GRACE_S": "5"}
    )
    options = dict(connection_options(aged))
    assert options["grpc.max_connection_age_ms"] == 60_000
    assert options["grpc.max_connection_age_grace_ms"] == 2**31 - 1  # streams run to their end
    off = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_IDLE_TIMEOUT_S": "0"})
    assert "grpc.max_connection_idle_ms" not in dict(connection_options(off))
