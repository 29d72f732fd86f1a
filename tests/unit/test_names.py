"""One rule per name: a version or an experiment name accepted in one place is accepted in all."""

from __future__ import annotations

import numpy as np
import pytest

from forecast_gateway.ab.records import check_experiment
from forecast_gateway.config import GatewayConfig
from forecast_gateway.core.routing_config import RoutingConfigError, parse_policies
from forecast_gateway.core.validation import ForecastQuery, query_violations
from forecast_gateway.errors import ConfigError
from forecast_gateway.names import is_experiment_name, is_version

VERSIONS = [
    "1",
    "2",
    "10",
    "9" * 19,
    "0",
    "01",
    "-1",
    "abc",
    "\u0662",
    "\u00b2",
    "2 ",
    "1e3",
    "9" * 20,
]
NAMES = [
    "default",
    "lstm-v2-rollout",
    "a.b_c",
    "x" * 64,
    "x" * 65,
    "-x",
    "",
    "a b",
    "\u00e9t\u00e9",
]


@pytest.mark.parametrize("version", VERSIONS)
def test_request_config_and_routing_file_agree_on_versions(version: str) -> None:
    query = ForecastQuery("m", version, "", np.arange(10.0), 0, 0)
    in_request = not any(v.field == "version" for v in query_violations(query))
    try:
        GatewayConfig.from_mapping({"models": [{"name": "m", "default_version": version}]}, {})
        in_config = True
    except ConfigError:
        in_config = False
    try:
        parse_policies({"models": {"m": {"split": {version: 100}}}}, "routing.toml")
        in_routing = True
    except RoutingConfigError:
        in_routing = False
    assert in_request == in_routing == is_version(version)
    assert in_config == is_version(version.strip())  # the config file strips its values


@pytest.mark.parametrize("name", NAMES)
def test_the_store_and_the_rule_agree_on_experiment_names(name: str) -> None:
    try:
        check_experiment(name)
        stored = True
    except ValueError:
        stored = False
    assert stored == is_experiment_name(name)
