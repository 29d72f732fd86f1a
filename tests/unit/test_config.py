import os
import subprocess
import sys
from pathlib import Path

import pytest

from forecast_gateway.api.ports import connection_options
from forecast_gateway.config import GatewayConfig, ModelConfig
from forecast_gateway.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = {"gateway": {"port": 6000}, "models": [{"name": "a", "default_version": "2"}]}
SECRET = "hunter2-s3cret"


def config_of(gateway: dict[str, object]) -> GatewayConfig:
    return GatewayConfig.from_mapping({"gateway": gateway, "models": [{"name": "a"}]}, {})


def test_shipped_config_file_loads_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    config = GatewayConfig.load({"FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml")})
    assert [m.name for m in config.models] == ["lstm_timeseries", "moving_average"]
    assert config.port == 50051
    # make run (from the repository root) keeps its files where they always were.
    assert config.routing_file == str(ROOT / "config" / "routing.toml")
    assert config.store_path == str(ROOT / ".run" / "experiments.sqlite3")


def test_env_overrides_file() -> None:
    config = GatewayConfig.from_mapping(
        DOCUMENT,
        {
            "FORECAST_PORT": "7000",
            "FORECAST_DEFAULT_TIMEOUT_S": "2.5",
            "FORECAST_AUTH_REQUIRED_FOR_READS": "true",
            "FORECAST_LOG_LEVEL": "DEBUG",
        },
    )
    assert config.port == 7000
    assert config.default_timeout_s == 2.5
    assert config.auth_required_for_reads is True
    assert config.log_level == "debug"
    assert config.models == (ModelConfig("a", "2"),)


def test_file_values_keep_their_types() -> None:
    config = config_of({"default_timeout_s": 3, "max_in_flight": 8, "log_format": "json"})
    assert (config.default_timeout_s, config.max_in_flight, config.log_format) == (3.0, 8, "json")


def test_forecast_models_env_replaces_the_list() -> None:
    config = GatewayConfig.from_mapping(DOCUMENT, {"FORECAST_MODELS": "x, y,"})
    assert [m.name for m in config.models] == ["x", "y"]


def test_a_numeric_default_version_is_a_version_name() -> None:
    config = GatewayConfig.from_mapping({"models": [{"name": " a ", "default_version": 2}]}, {})
    assert config.models == (ModelConfig("a", "2"),)


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "gateway.toml").write_text(
        "[gateway]\n"
        'routing_file = "routing.toml"\n'
        'store_url = "sqlite:///../data/store.sqlite3"\n'
        'tls_cert_file = "/abs/cert.pem"\n'
        'tls_key_file = "tls/key.pem"\n'
        'auth_token_file = ""\n'
        '[[models]]\nname = "a"\n'
    )
    env = {
        "FORECAST_CONFIG_FILE": str(tmp_path / "conf" / "gateway.toml"),
        "FORECAST_STORE_PATH": "relative/store.sqlite3",
    }
    config = GatewayConfig.load(env)
    assert config.routing_file == str(tmp_path / "conf" / "routing.toml")
    assert config.store_url == f"sqlite:///{tmp_path / 'data' / 'store.sqlite3'}"
    assert config.tls_cert_file == "/abs/cert.pem"
    assert config.tls_key_file == str(tmp_path / "conf" / "tls" / "key.pem")
    assert config.auth_token_file == ""  # empty: not set, not "the directory"
    assert config.store_path == "relative/store.sqlite3"  # from the environment: the cwd's


@pytest.mark.parametrize(
    "url",
    [
        "",
        "sqlite:///",
        "sqlite:////var/lib/x.sqlite3",
        "x.sqlite3",
        "postgresql://u@h/db",
        "postgres://h/db",
        "PostgreSQL://u@h/db",
    ],
)
def test_store_urls_accepted(url: str) -> None:
    assert config_of({"store_url": url}).store_url == url
    document = {"gateway": {"store_url": url}, "models": [{"name": "a"}]}
    resolved = GatewayConfig.from_mapping(document, {}, directory=Path("/etc/g")).store_url
    assert resolved == ("/etc/g/x.sqlite3" if url == "x.sqlite3" else url)


# Every bad value: (key, value from the environment). Each must be rejected
# with a message naming FORECAST_<KEY>.
BAD_ENV = [
    ("port", "abc"),
    ("port", "70000"),
    ("port", "-1"),
    ("port", "1.5"),
    ("host", ""),
    ("triton_url", ""),
    ("triton_url", "triton-a:8001,triton-b:8001"),  # names in a list: use dns:///
    ("triton_url", "127.0.0.1:8001,127.0.0.1:8001"),
    ("metrics_port", "-2"),
    ("max_history_length", "0"),
    ("max_message_bytes", "4294967296"),
    ("default_timeout_s", "nan"),
    ("default_timeout_s", "inf"),
    ("default_timeout_s", "0"),
    ("catalog_refresh_s", "nan"),
    ("catalog_refresh_s", "-1"),
    ("shutdown_grace_s", "-1"),
    ("shutdown_grace_s", "nan"),
    ("shutdown_drain_s", "-0.5"),
    ("max_batch_series", "0"),
    ("stream_max_pending", "many"),
    ("routing_poll_s", "0"),
    ("shadow_timeout_s", "-inf"),
    ("max_in_flight", "0"),
    ("max_in_flight", "1.9"),
    ("idle_timeout_s", "-1"),
    ("idle_timeout_s", "1e7"),
    ("max_connection_age_s", "-1"),
    ("triton_retries", "-1"),
    ("triton_retries", "100"),
    ("retry_budget_ratio", "2"),
    ("retry_budget_ratio", "nan"),
    ("auth_required_for_reads", "maybe"),
    ("store_path", ""),
    ("store_url", "mysql://u@h/db"),
    ("store_max_forecasts", "-5"),
    ("store_max_age_s", "1e300"),
    ("log_format", "xml"),
    ("log_level", "loud"),
]


@pytest.mark.parametrize(("key", "value"), BAD_ENV, ids=lambda v: str(v))
def test_every_bad_env_value_names_the_variable(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"^FORECAST_{key.upper()}: ") as caught:
        GatewayConfig.from_mapping(DOCUMENT, {f"FORECAST_{key.upper()}": value})
    assert "\n" not in str(caught.value)


# The same in the file, where TOML types count: no bool for a number, no
# fraction for an int, no text for a number.
BAD_FILE: list[tuple[str, object]] = [
    ("port", True),
    ("port", "50051"),
    ("port", 70000),
    ("max_in_flight", 1.9),
    ("max_in_flight", 2.0),
    ("max_history_length", False),
    ("default_timeout_s", float("nan")),
    ("default_timeout_s", "10"),
    ("catalog_refresh_s", float("inf")),
    ("shutdown_grace_s", -1),
    ("auth_required_for_reads", 1),
    ("auth_required_for_reads", "true"),
    ("host", 5),
    ("routing_file", ["a"]),
    ("log_level", 10),
    ("prot", 1),
]


@pytest.mark.parametrize(("key", "value"), BAD_FILE, ids=lambda v: str(v))
def test_every_bad_file_value_names_the_key(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"^gateway.toml: gateway.{key}: ") as caught:
        GatewayConfig.from_mapping(
            {"gateway": {key: value}, "models": [{"name": "a"}]}, {}, source="gateway.toml"
        )
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("document", "env", "message"),
    [
        ({"gateway": {"prot": 1}, "models": [{"name": "a"}]}, {}, "gateway.prot: unknown key"),
        ({"gatway": {}, "models": [{"name": "a"}]}, {}, "gatway: unknown key"),
        ({"gateway": 3, "models": [{"name": "a"}]}, {}, "gateway: expected a table"),
        ({"models": {"name": "a"}}, {}, "models: expected a list of tables"),
        ({"models": [{"name": "a", "x": 1}]}, {}, r"models.0.x: unknown key"),
        ({"models": [{"name": ""}]}, {}, r"models.0.name"),
        ({"models": [{"name": 3}]}, {}, r"models.0.name"),
        ({"models": [{"name": "a", "default_version": "v2"}]}, {}, "default_version"),
        ({"models": []}, {"FORECAST_DISCOVER_MODELS": "false"}, "no models configured"),
        ({"models": [{"name": "a"}, {"name": "a"}]}, {}, "listed twice"),
        (
            DOCUMENT,
            {"FORECAST_MODELS": " , ", "FORECAST_DISCOVER_MODELS": "false"},
            "no models configured",
        ),
        (DOCUMENT, {"FORECAST_TLS_CERT_FILE": "c.pem"}, "set together"),
        (DOCUMENT, {"FORECAST_TLS_CLIENT_CA_FILE": "ca.pem"}, "tls_client_ca_file"),
        (DOCUMENT, {"FORECAST_STORE_PASSWORD_FILE": "pw"}, "store_password_file needs"),
    ],
)
def test_invalid_configuration_names_the_key(
    document: dict[str, object], env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.from_mapping(document, env)


@pytest.mark.parametrize(
    ("document", "env"),
    [
        (DOCUMENT, {"FORECAST_STORE_URL": f"mysql://user:{SECRET}@host/db"}),
        (DOCUMENT, {"FORECAST_STORE_URL": f"https://user:{SECRET}@host/db"}),
        ({"gateway": {"store_url": f"redis://:{SECRET}@h"}, "models": [{"name": "a"}]}, {}),
        (
            {"gateway": {"store_ulr": f"postgresql://u:{SECRET}@h/db"}, "models": [{"name": "a"}]},
            {},
        ),
    ],
)
def test_a_rejected_store_url_is_never_shown(
    document: dict[str, object], env: dict[str, str]
) -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig.from_mapping(document, env)
    assert "store_u" in str(caught.value).lower()
    assert SECRET not in str(caught.value)


def test_a_store_url_password_is_not_in_the_repr() -> None:
    config = GatewayConfig.from_mapping(
        DOCUMENT, {"FORECAST_STORE_URL": f"postgresql://u:{SECRET}@h/db"}
    )
    assert config.store_url.endswith("@h/db")
    assert SECRET not in repr(config) and SECRET not in str(config)


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        GatewayConfig.load({"FORECAST_CONFIG_FILE": str(tmp_path / "missing.toml")})


@pytest.mark.parametrize(("text", "message"), [("[gateway\n", "not valid TOML"), (b"\xff", "read")])
def test_unreadable_config_file_is_an_error(
    tmp_path: Path, text: str | bytes, message: str
) -> None:
    path = tmp_path / "gateway.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=message):
        GatewayConfig.load({"FORECAST_CONFIG_FILE": str(path)})
    with pytest.raises(ConfigError, match="cannot read"):
        GatewayConfig.load({"FORECAST_CONFIG_FILE": str(tmp_path)})


@pytest.mark.parametrize(
    ("variable", "value"),
    [("FORECAST_CATALOG_REFRESH_S", "nan"), ("FORECAST_LOG_LEVEL", "loud")],
)
def test_the_gateway_exits_2_with_one_line_naming_the_key(
    tmp_path: Path, variable: str, value: str
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "FORECAST_CONFIG_FILE": str(ROOT / "config" / "gateway.toml"),
        variable: value,
    }
    result = subprocess.run(
        [sys.executable, "-m", "forecast_gateway"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr.startswith("forecast-gateway: invalid configuration: ")
    assert f"{variable}: " in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1


def readme_configuration_rows() -> dict[str, list[str]]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Configuration") : text.index("## The models")]
    cells = [[c.strip().strip("`") for c in line.split("|")[1:-1]] for line in section.splitlines()]
    return {row[0]: row[1:] for row in cells if row and row[0] not in {"key", "---"}}


def shown(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) or "(empty)"


def test_every_key_is_described_in_the_code_and_the_readme() -> None:
    rows = readme_configuration_rows()
    fields = {k: v for k, v in GatewayConfig.model_fields.items() if k != "models"}
    assert set(rows) == set(fields)
    for key, field in fields.items():
        assert field.description, f"{key}: no description in config.py"
        environment, default, meaning = rows[key]
        assert environment == f"FORECAST_{key.upper()}"
        assert default == shown(field.default), key
        assert meaning


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
