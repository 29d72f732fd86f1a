"""What a version's declared contract refuses of a request: its frequency, levels, horizon.

The rules that routing applies to pick among versions (an unpinned request
only goes to a version that passes them) and that a pinned request gets as
INVALID_ARGUMENT: a version is never handed a series it was not declared
for (a weekly-co2 LSTM does not forecast daily sales).
"""

from __future__ import annotations

from forecast_gateway.core.catalog import ModelSpec, VersionSpec
from forecast_gateway.core.contract import Contract, OutputKind
from forecast_gateway.errors import FieldViolation
from forecast_gateway.numerics import Levels, interval_levels, within

FREQUENCY_NOT_SUPPORTED = "FREQUENCY_NOT_SUPPORTED"
"""FieldViolation.reason: the version was not declared for the request's frequency."""


def contract_violations(
    model: ModelSpec, version: VersionSpec, frequency: str, horizon: int, levels: Levels
) -> list[FieldViolation]:
    """What `version`'s contract cannot take of a request (empty: nothing)."""
    contract = version.contract
    if contract is None:
        return []
    violations: list[FieldViolation] = []
    if not contract.serves_frequency(frequency):
        violations.append(
            FieldViolation(
                "frequency",
                f"{model.name} version {version.version} is declared for frequencies "
                f"{', '.join(contract.frequencies)}, not {frequency!r}; pick a model or "
                "version declared for it (ListModels lists each version's frequencies)",
                reason=FREQUENCY_NOT_SUPPORTED,
            )
        )
    if contract.max_horizon < horizon <= model.max_horizon:  # over the model's: said once
        violations.append(
            FieldViolation(
                "horizon",
                f"horizon {horizon} is over {model.name} version {version.version}'s "
                f"maximum of {contract.max_horizon}",
            )
        )
    if contract.output_kind is OutputKind.QUANTILES and levels:
        violations += _level_violations(model.name, version.version, contract, levels)
    return violations


def _level_violations(
    model: str, version: str, contract: Contract, levels: Levels
) -> list[FieldViolation]:
    """Native quantiles interpolate between declared levels, never beyond them."""
    levels_declared = contract.quantile_levels
    declared = ", ".join(f"{q:g}" for q in levels_declared)
    violations = []
    for index, coverage in enumerate(levels.coverages):
        lower, upper = interval_levels(coverage)
        if not (within(levels_declared, lower) and within(levels_declared, upper)):
            violations.append(
                FieldViolation(
                    f"interval_coverages[{index}]",
                    f"{model} version {version} outputs quantiles {declared}; a {coverage:g} "
                    f"interval needs levels {lower:g} and {upper:g}",
                )
            )
    for index, level in enumerate(levels.quantiles):
        if not within(levels_declared, level):
            violations.append(
                FieldViolation(
                    f"quantile_levels[{index}]",
                    f"{model} version {version} outputs quantiles {declared}; "
                    f"{level:g} is outside them",
                )
            )
    return violations
