"""The model contract read from config.pbtxt parameters (core/contract.py)."""

from __future__ import annotations

import pytest

from forecast_gateway.backends.base import Layout
from forecast_gateway.core.contract import (
    ContractError,
    HorizonMode,
    Normalization,
    OutputKind,
    declares_contract,
    read_contract,
    season_length,
)

LEGACY = {"default_horizon": "12", "max_horizon": "64", "v1.sequence_length": "10"}
QUANTILE = {
    "forecast.contract": "1",
    "forecast.normalization": "none",
    "forecast.window": "28",
    "forecast.horizon": "fixed",
    "forecast.max_horizon": "14",
    "forecast.horizon_input": "none",
    "forecast.output_kind": "quantiles",
    "forecast.quantile_levels": "0.1,0.5,0.9",
    "forecast.quantile_output": "Q",
    "forecast.quantile_layout": "level_step",
    "forecast.output": "none",
    "forecast.frequencies": "D,B",
}


def test_the_parameters_written_before_the_contract_are_its_defaults() -> None:
    contract = read_contract(LEGACY, "1")
    assert (contract.min_window, contract.max_window, contract.default_window) == (10, 10, 10)
    assert (contract.default_horizon, contract.max_horizon) == (12, 64)
    assert contract.normalization is Normalization.ZSCORE
    assert contract.output_kind is OutputKind.POINT
    assert contract.horizon_mode is HorizonMode.ANY
    assert contract.frequencies == () and not contract.declared
    signature = contract.signature
    assert (signature.history, signature.horizon, signature.point) == (
        "HISTORY",
        "HORIZON",
        "FORECAST",
    )
    assert signature.steps(5) == 5


def test_a_fixed_horizon_quantile_model_with_its_own_scaling() -> None:
    contract = read_contract(QUANTILE, "1")
    assert contract.declared and contract.normalization is Normalization.NONE
    assert (contract.min_window, contract.max_window, contract.default_window) == (28, 28, 28)
    assert contract.default_horizon == 14  # defaults to max_horizon
    assert contract.quantile_levels == (0.1, 0.5, 0.9)
    signature = contract.signature
    assert signature.horizon is None and signature.point is None
    assert (signature.quantiles, signature.levels, signature.median) == ("Q", 3, 1)
    assert signature.layout is Layout.LEVEL_STEP
    assert signature.steps(3) == 14  # the model always outputs 14 steps; the gateway slices


def test_a_version_prefix_overrides_the_model_wide_key() -> None:
    parameters = {**LEGACY, "forecast.window": "1:100", "v2.forecast.window": "52"}
    one, two = read_contract(parameters, "1"), read_contract(parameters, "2")
    assert (one.min_window, one.max_window, one.default_window) == (1, 100, 10)
    assert (two.min_window, two.max_window, two.default_window) == (52, 52, 52)


@pytest.mark.parametrize(
    ("changes", "key", "says"),
    [
        ({"forecast.contract": "2"}, "forecast.contract", "unsupported"),
        ({"forecast.window": "ten"}, "forecast.window", "N or MIN:MAX"),
        ({"forecast.window": "20:10"}, "forecast.window", "min 20"),
        ({"forecast.max_horizon": "0"}, "forecast.max_horizon", "whole number"),
        ({"forecast.normalization": "minmax"}, "forecast.normalization", "zscore, none"),
        ({"forecast.output_kind": "samples"}, "forecast.output_kind", "point, quantiles"),
        ({"forecast.quantile_levels": "0.9,0.1"}, "forecast.quantile_levels", "increasing"),
        ({"forecast.quantile_levels": "0.1,0.9"}, "forecast.output", "0.5"),
        ({"forecast.quantile_levels": ""}, "forecast.quantile_levels", "required"),
        ({"forecast.horizon": "any"}, "forecast.horizon_input", "fixed"),
        ({"forecast.frequencies": "D,fortnightly"}, "forecast.frequencies", "unknown frequency"),
        ({"forecast.missing_values": "maybe"}, "forecast.missing_values", "reject or accept"),
        ({"forecast.input": "none"}, "forecast.input", "history input"),
        ({"forecast.quantile_layout": "rows"}, "forecast.quantile_layout", "step_level"),
    ],
)
def test_a_wrong_declaration_names_its_key(changes: dict[str, str], key: str, says: str) -> None:
    with pytest.raises(ContractError) as error:
        read_contract({**QUANTILE, **changes}, "1")
    assert error.value.key == key
    assert says in str(error.value)


def test_the_window_is_required_somewhere() -> None:
    with pytest.raises(ContractError, match="sequence_length: required"):
        read_contract({"max_horizon": "5"}, "1")


def test_frequencies_match_as_pandas_names_them_and_w_takes_every_anchor() -> None:
    weekly = read_contract({**LEGACY, "forecast.frequencies": "W"}, "1")
    assert weekly.serves_frequency("W-SAT") and weekly.serves_frequency("W-SUN")
    assert not weekly.serves_frequency("D") and not weekly.serves_frequency("MS")
    assert weekly.serves_frequency("")  # a request without time may use any version
    daily = read_contract({**LEGACY, "forecast.frequencies": "D, h"}, "1")
    assert daily.serves_frequency("1D") and daily.serves_frequency("h")
    assert not daily.serves_frequency("2h")
    assert read_contract(LEGACY, "1").serves_frequency("15min")  # undeclared: any


def test_the_contract_marker_may_be_model_wide_or_per_version() -> None:
    assert declares_contract({"forecast.contract": "1"})
    assert declares_contract({"v3.forecast.contract": "1"})
    assert not declares_contract(LEGACY)


@pytest.mark.parametrize(
    ("frequency", "season"),
    [
        ("D", 7),
        ("B", 5),
        ("h", 24),
        ("2h", 12),
        ("5h", 1),
        ("W-SUN", 52),
        ("MS", 12),
        ("QS", 4),
        ("YE", 1),
        ("15min", 4),
        ("", 1),
    ],
)
def test_a_season_comes_from_the_frequency(frequency: str, season: int) -> None:
    assert season_length(read_contract(LEGACY, "1"), frequency) == season


def test_a_declared_season_wins_over_the_frequency() -> None:
    contract = read_contract({**LEGACY, "forecast.season_length": "364"}, "1")
    assert season_length(contract, "D") == 364
