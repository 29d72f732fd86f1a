import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from forecast_gateway.core.catalog import ModelSpec, VersionSpec, VersionState
from forecast_gateway.core.routing import Decision, Fallback, Policy, Shadow, choose_version
from forecast_gateway.core.routing_config import (
    RoutingConfigError,
    RoutingTable,
    check_against_catalog,
    parse_policies,
)

ROOT = Path(__file__).resolve().parents[2]
SERVED = ("lstm_timeseries", "moving_average")


def spec(name: str, versions: tuple[str, ...] = ("1", "2"), default: str = "2") -> ModelSpec:
    states = {v: VersionSpec(v, VersionState.READY, 10, 10, 10) for v in versions}
    return ModelSpec(name, "", 12, 64, states, configured_default=default)


SPECS: dict[str, ModelSpec] = {
    "lstm_timeseries": spec("lstm_timeseries"),
    "moving_average": spec("moving_average", default="1"),
}

VALID = """
[models.lstm_timeseries]
split = { "1" = 10, "2" = 90 }
shadow = { version = "1", percent = 100 }
fallback = { model = "moving_average", version = "1" }
"""


def parse(text: str) -> dict[str, Policy]:
    return parse_policies(tomllib.loads(text), "routing.toml")


def table(path: Path | str | None, specs: Mapping[str, ModelSpec] = SPECS) -> RoutingTable:
    routing = RoutingTable(path, lambda: specs, SERVED)
    routing.load()
    return routing


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- parsing -------------------------------------------------------------------------------------


def test_a_full_policy_parses() -> None:
    assert parse(VALID) == {
        "lstm_timeseries": Policy(
            split=(("1", 10.0), ("2", 90.0)),
            shadow=Shadow("1", 100.0),
            fallback=Fallback("moving_average", "1"),
        )
    }


def test_split_is_ordered_by_version_and_optional_parts_default() -> None:
    policies = parse(
        '[models.m]\nsplit = { "10" = 40, "2" = 60.0 }\nshadow = { version = 3 }\n'
        'fallback = { model = "ma" }\n'
    )
    assert policies["m"] == Policy(
        split=(("2", 60.0), ("10", 40.0)), shadow=Shadow("3", 100.0), fallback=Fallback("ma")
    )


def test_a_named_experiment_is_the_models_current_one(tmp_path: Path) -> None:
    path = tmp_path / "routing.toml"
    path.write_text('[models.lstm_timeseries]\nexperiment = "v2-rollout.2026-11"\n')
    table = RoutingTable(path, lambda: SPECS, SERVED)
    table.load()
    assert table.experiment("lstm_timeseries") == "v2-rollout.2026-11"
    assert table.experiment("moving_average") == "default"  # no policy: the default one


def test_an_empty_document_has_no_policies() -> None:
    assert parse("") == {}


def test_the_shipped_routing_file_is_valid_for_the_shipped_models() -> None:
    path = ROOT / "config" / "routing.toml"
    policies = parse_policies(tomllib.loads(path.read_text()), str(path))
    check_against_catalog(policies, SPECS, SERVED)
    gateway = tomllib.loads((ROOT / "config" / "gateway.toml").read_text())
    assert (ROOT / "config" / gateway["gateway"]["routing_file"]) == path  # relative to its file
    assert set(policies) <= {m["name"] for m in gateway["models"]}
    assert "moving_average" not in policies


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('[models.m]\nsplit = { "1" = 90 }', ["models.m.split", "sum to 90"]),
        ('[models.m]\nsplit = { "1" = 60, "2" = 60 }', ["models.m.split", "sum to 120"]),
        ('[models.m]\nsplit = { "1" = 0, "2" = 0 }', ["models.m.split", "sum to 0"]),
        ("[models.m]\nsplit = {}", ["models.m.split", "sum to 0"]),
        ('[models.m]\nsplit = { "1" = 110, "2" = -10 }', ["models.m.split.2", ">= 0"]),
        ('[models.m]\nsplit = { "1" = "100" }', ["models.m.split.1", "number"]),
        ('[models.m]\nsplit = { "1" = true }', ["models.m.split.1", "number"]),
        ('[models.m]\nsplit = { "1" = nan }', ["models.m.split.1", "finite"]),
        ('[models.m]\nsplit = { "v1" = 100 }', ["models.m.split", "'v1'"]),
        ('[models.m]\nsplit = { "01" = 100 }', ["models.m.split", "'01'"]),
        ("[models.m]\nsplit = 100", ["models.m.split", "table of weights"]),
        ('[models.m]\nsplits = { "1" = 100 }', ["models.m", "'splits'"]),
        ("[models.m]\nshadow = { percent = 10 }", ["models.m.shadow.version", "missing"]),
        ('[models.m]\nshadow = { version = "1", percent = 0 }', ["models.m.shadow.percent"]),
        ('[models.m]\nshadow = { version = "1", percent = 150 }', ["models.m.shadow.percent"]),
        ('[models.m]\nshadow = { version = "1", pct = 5 }', ["models.m.shadow", "'pct'"]),
        ('[models.m]\nshadow = { version = "one" }', ["models.m.shadow.version", "'one'"]),
        ('[models.m]\nshadow = "1"', ["models.m.shadow", "expected a table"]),
        ('[models.m]\nfallback = { version = "1" }', ["models.m.fallback.model"]),
        ('[models.m]\nfallback = { model = "" }', ["models.m.fallback.model"]),
        ('[models.m]\nfallback = { model = "a", when = "x" }', ["models.m.fallback", "'when'"]),
        ('[models.m]\nfallback = { model = "a", version = "x" }', ["models.m.fallback.version"]),
        ("[models]\nm = 3", ["models.m", "expected a table"]),
        ('[[models]]\nname = "m"', ["models", "[models.<name>]"]),
        ("[routing]\nx = 1", ["top-level", "'routing'"]),
        ('[models.m]\nexperiment = "has space"', ["models.m.experiment", "'has space'"]),
        ("[models.m]\nexperiment = 3", ["models.m.experiment", "3"]),
        (f'[models.m]\nexperiment = "{"x" * 65}"', ["models.m.experiment", "1-64"]),
    ],
)
def test_every_invalid_value_names_its_key(text: str, names: list[str]) -> None:
    with pytest.raises(RoutingConfigError) as error:
        parse(text)
    message = str(error.value)
    assert message.startswith("routing.toml: ")
    for name in names:
        assert name in message


# --- checks against the catalog -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "names"),
    [
        (Policy(split=(("1", 50.0), ("3", 50.0))), ["models.lstm_timeseries.split.3", "'3'"]),
        (Policy(shadow=Shadow("4", 10.0)), ["models.lstm_timeseries.shadow.version", "'4'"]),
        (Policy(fallback=Fallback("prophet")), ["fallback.model", "'prophet'", "served"]),
        (
            Policy(fallback=Fallback("moving_average", "9")),
            ["models.lstm_timeseries.fallback.version", "'moving_average'", "'9'"],
        ),
    ],
)
def test_catalog_errors_name_the_model_and_key(policy: Policy, names: list[str]) -> None:
    with pytest.raises(RoutingConfigError) as error:
        check_against_catalog({"lstm_timeseries": policy}, SPECS, SERVED)
    for name in names:
        assert name in str(error.value)


def test_a_model_the_gateway_does_not_serve_is_rejected() -> None:
    with pytest.raises(RoutingConfigError, match=r"models\.prophet: model 'prophet' is not served"):
        check_against_catalog({"prophet": Policy()}, SPECS, SERVED)


def test_versions_of_a_model_triton_has_not_reported_are_not_checked_yet() -> None:
    policy = Policy(split=(("7", 100.0),), fallback=Fallback("moving_average", "9"))
    check_against_catalog({"lstm_timeseries": policy}, {}, SERVED)


# --- the table: start-up and reloads --------------------------------------------------------------


@pytest.mark.parametrize("path", [None, ""])
def test_no_routing_file_means_no_policies(path: str | None) -> None:
    routing = table(path)
    assert (dict(routing.policies), routing.policy("lstm_timeseries")) == ({}, None)
    assert (routing.reload(), routing.reload_if_changed()) == (False, False)


def test_the_table_is_built_without_io_and_loaded_at_start_up(tmp_path: Path) -> None:
    routing = RoutingTable(tmp_path / "routing.toml", lambda: SPECS, SERVED)
    assert (dict(routing.policies), routing.version) == ({}, 0)
    write(tmp_path / "routing.toml", VALID)
    routing.load()
    assert routing.policies == parse(VALID)
    assert routing.version == 1
    with pytest.raises(TypeError):
        routing.policies["x"] = Policy()  # type: ignore[index]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[models.lstm_timeseries\n", "not valid TOML"),
        ('[models.lstm_timeseries]\nsplit = { "1" = 50 }', r"models\.lstm_timeseries\.split"),
        ('[models.lstm_timeseries]\nsplit = { "3" = 100 }', r"models\.lstm_timeseries\.split\.3"),
    ],
)
def test_an_invalid_file_at_start_up_raises(tmp_path: Path, text: str, match: str) -> None:
    path = write(tmp_path / "routing.toml", text)
    with pytest.raises(RoutingConfigError, match=match) as error:
        table(path)
    assert str(path) in str(error.value)


def test_a_missing_file_at_start_up_raises(tmp_path: Path) -> None:
    with pytest.raises(RoutingConfigError, match="cannot read"):
        table(tmp_path / "absent.toml")


def test_reload_keeps_the_previous_table_on_an_invalid_file(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    routing = table(path)
    write(path, VALID.replace('"2" = 90', '"2" = 80'))
    with capture_logs() as logs:
        assert routing.reload() is False
    assert routing.policies == parse(VALID)
    assert routing.version == 1
    [line] = logs
    assert line["event"] == "routing_reload_rejected"
    assert line["log_level"] == "error"
    assert "models.lstm_timeseries.split" in line["error"]
    assert "sum to 90" in line["error"]


@pytest.mark.parametrize("breakage", ["[models", "missing", '[models.prophet]\nsplit={"1"=100}'])
def test_reload_survives_any_broken_file(tmp_path: Path, breakage: str) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    routing = table(path)
    if breakage == "missing":
        path.unlink()
    else:
        write(path, breakage)
    with capture_logs() as logs:
        assert routing.reload() is False
    assert [line["event"] for line in logs] == ["routing_reload_rejected"]
    assert routing.policy("lstm_timeseries") == parse(VALID)["lstm_timeseries"]


def test_reload_installs_a_valid_file_and_counts_versions(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    routing = table(path)
    changed = VALID.replace('"1" = 10, "2" = 90', '"1" = 20, "2" = 80')
    write(path, changed)
    with capture_logs() as logs:
        assert routing.reload() is True
    assert routing.policy("lstm_timeseries") == parse(changed)["lstm_timeseries"]
    assert routing.version == 2
    [line] = logs
    assert line["event"] == "routing_reloaded"
    assert line["changed"] is True
    assert line["policies"] == {
        "lstm_timeseries": "split 1=20 2=80; shadow 1@100%; fallback moving_average/1"
    }
    assert routing.reload() is False  # same content: not a new table
    assert routing.version == 2


def test_reload_if_changed_reloads_only_on_new_content(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    routing = table(path)
    with capture_logs() as logs:
        assert routing.reload_if_changed() is False
        os.utime(path, ns=(1, 1))  # touched, same content
        assert routing.reload_if_changed() is False
    assert logs == []

    write(path, "# no policies any more\n")
    assert routing.reload_if_changed() is True
    assert (dict(routing.policies), routing.version) == ({}, 2)
    assert routing.reload_if_changed() is False


def test_reload_if_changed_logs_a_rejected_file_once(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    routing = table(path)
    with capture_logs() as logs:
        write(path, VALID.replace("percent = 100", "percent = 0"))
        assert routing.reload_if_changed() is False
        assert routing.reload_if_changed() is False
        path.unlink()
        assert routing.reload_if_changed() is False
        assert routing.reload_if_changed() is False
    assert [line["event"] for line in logs] == ["routing_reload_rejected"] * 2
    assert "models.lstm_timeseries.shadow.percent" in logs[0]["error"]
    assert routing.policies == parse(VALID)

    write(path, VALID)  # restored: same policies as in force, so no change
    assert routing.reload_if_changed() is False
    assert routing.version == 1


def test_versions_are_checked_once_triton_reports_the_model(tmp_path: Path) -> None:
    specs: dict[str, ModelSpec] = {}
    path = write(tmp_path / "routing.toml", VALID.replace('"2" = 90', '"3" = 90'))
    routing = table(path, specs)  # Triton not reported yet: versions unchecked
    assert routing.policy("lstm_timeseries") is not None
    assert routing.reload_if_changed() is False
    specs.update(SPECS)
    with capture_logs() as logs:
        assert routing.reload_if_changed() is False
        assert routing.reload_if_changed() is False
    [line] = logs
    assert line["event"] == "routing_reload_rejected"
    assert "models.lstm_timeseries.split.3" in line["error"]
    # routing skips the version Triton lacks
    route = choose_version(SPECS["lstm_timeseries"], "", "k", routing.policy("lstm_timeseries"))
    assert (route.version, route.decision) == ("1", Decision.STICKY)


def test_sticky_keys_agree_across_fresh_tables(tmp_path: Path) -> None:
    path = write(tmp_path / "routing.toml", VALID)
    model = SPECS["lstm_timeseries"]
    keys = [f"store-{i}" for i in range(2_000)]
    routes: list[list[str]] = []
    for _ in range(2):
        policy = table(path).policy("lstm_timeseries")
        routes.append([choose_version(model, "", key, policy).version for key in keys])
    assert routes[0] == routes[1]
    assert 0.07 < routes[0].count("1") / len(keys) < 0.13
