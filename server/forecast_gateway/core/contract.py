"""The model contract: what a version's config.pbtxt parameters declare (docs/model-contract.md).

Read once per catalog refresh from Triton's config, never on the request
path. A wrong declaration is a `ContractError` naming the key, which the
catalog turns into an UNAVAILABLE version with that reason: a model's
mistake costs that model only.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, Layout, Signature
from forecast_gateway.timegrid import TimeError, parse_frequency

PREFIX = "forecast."
MARKER = "forecast.contract"
"""The key whose presence makes a model discoverable."""
SUPPORTED = ("1",)
ANY = "any"
NONE = "none"
MAX_WINDOW = 1_000_000
MAX_HORIZON = 100_000

_E = TypeVar("_E", bound=enum.Enum)
FAMILIES = ("W", "QS", "QE", "YS", "YE")
"""Aliases that, declared bare, accept every anchor of their family (W-SAT, QS-OCT...)."""


class ContractError(ValueError):
    """A declaration the gateway cannot serve: the key at fault and why."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key


class Normalization(enum.Enum):
    """Who scales the series: the gateway (z-score per window) or the model itself."""

    ZSCORE = "zscore"
    NONE = "none"


class HorizonMode(enum.Enum):
    """ANY: the model forecasts the horizon it is sent; FIXED: always max_horizon, sliced."""

    ANY = "any"
    FIXED = "fixed"


class OutputKind(enum.Enum):
    """POINT: one value per step; QUANTILES: declared quantile levels per step."""

    POINT = "point"
    QUANTILES = "quantiles"


@dataclass(frozen=True)
class Contract:
    """One version's declared contract (the defaults are the pre-contract models')."""

    min_window: int
    max_window: int
    default_window: int
    default_horizon: int
    max_horizon: int
    horizon_mode: HorizonMode = HorizonMode.ANY
    normalization: Normalization = Normalization.ZSCORE
    output_kind: OutputKind = OutputKind.POINT
    quantile_levels: tuple[float, ...] = ()
    accepts_missing: bool = False
    frequencies: tuple[str, ...] = ()
    """Declared pandas aliases; empty: any frequency."""
    season_length: int = 0
    """0: from the request's frequency."""
    signature: Signature = DEFAULT_SIGNATURE
    declared: bool = False
    """Whether the model carries `forecast.contract` (discovered without gateway config)."""

    def serves_frequency(self, frequency: str) -> bool:
        """Whether the version was declared for `frequency` (a request without one: always)."""
        if not frequency or not self.frequencies:
            return True
        return any(frequencies_match(declared, frequency) for declared in self.frequencies)


def frequencies_match(declared: str, frequency: str) -> bool:
    """`W` accepts every weekly anchor; otherwise aliases compare as pandas names them."""
    if declared == frequency:
        return True
    base = frequency.split("-", 1)[0]
    if declared == base and base in FAMILIES:
        return True
    try:
        return bool(parse_frequency(declared).offset == parse_frequency(frequency).offset)
    except TimeError:
        return False


def declares_contract(parameters: Mapping[str, str]) -> bool:
    """Whether a model's parameters carry the contract marker (for any version)."""
    return MARKER in parameters or any(k.endswith("." + MARKER) for k in parameters)


def read_contract(parameters: Mapping[str, str], version: str) -> Contract:
    """The contract of `version` (`v<N>.` keys first); ContractError naming a bad key."""
    reader = _Reader(parameters, version)
    marker = reader.get(MARKER)
    if marker is not None and marker not in SUPPORTED:
        raise ContractError(MARKER, f"unsupported contract {marker!r}; supported: 1")
    low, high, default_window = _window(reader)
    max_horizon = reader.integer("forecast.max_horizon", "max_horizon", high=MAX_HORIZON)
    default_horizon = reader.integer(
        "forecast.default_horizon", "default_horizon", fallback=max_horizon, high=max_horizon
    )
    kind = reader.choice("forecast.output_kind", OutputKind, OutputKind.POINT)
    levels = _levels(reader) if kind is OutputKind.QUANTILES else ()
    signature = _signature(reader, kind, levels)
    horizon_mode = reader.choice("forecast.horizon", HorizonMode, HorizonMode.ANY)
    if horizon_mode is HorizonMode.ANY and signature.horizon is None:
        raise ContractError(
            "forecast.horizon_input",
            "a model without a horizon input must declare forecast.horizon: fixed",
        )
    missing = reader.get("forecast.missing_values") or "reject"
    if missing not in ("reject", "accept"):
        raise ContractError(
            "forecast.missing_values", f"expected reject or accept, got {missing!r}"
        )
    return Contract(
        min_window=low,
        max_window=high,
        default_window=default_window,
        default_horizon=default_horizon,
        max_horizon=max_horizon,
        horizon_mode=horizon_mode,
        normalization=reader.choice("forecast.normalization", Normalization, Normalization.ZSCORE),
        output_kind=kind,
        quantile_levels=levels,
        accepts_missing=missing == "accept",
        frequencies=_frequencies(reader),
        season_length=reader.integer("forecast.season_length", fallback=0, low=0),
        signature=signature
        if horizon_mode is HorizonMode.ANY
        else replace(signature, fixed_steps=max_horizon),
        declared=marker is not None,
    )


class _Reader:
    """Parameters of one version: `v<N>.<key>` overrides `<key>`."""

    def __init__(self, parameters: Mapping[str, str], version: str) -> None:
        self.parameters = parameters
        self.version = version

    def get(self, key: str) -> str | None:
        value = self.parameters.get(f"v{self.version}.{key}", self.parameters.get(key))
        return None if value is None else value.strip()

    def integer(
        self,
        key: str,
        legacy: str = "",
        *,
        fallback: int | None = None,
        low: int = 1,
        high: int = MAX_WINDOW,
    ) -> int:
        raw = self.get(key)
        if raw is None and legacy:
            raw, key = self.get(legacy), legacy
        if raw is None:
            if fallback is None:
                raise ContractError(key, "required (a whole number)")
            return fallback
        if not raw.isdigit() or not low <= int(raw) <= high:
            raise ContractError(key, f"expected a whole number in [{low}, {high}], got {raw!r}")
        return int(raw)

    def choice(self, key: str, kind: type[_E], default: _E) -> _E:
        raw = self.get(key)
        if raw is None:
            return default
        try:
            return kind(raw)
        except ValueError:
            accepted = ", ".join(str(member.value) for member in kind)
            raise ContractError(key, f"expected one of {accepted}, got {raw!r}") from None

    def tensor(self, key: str, default: str | None) -> str | None:
        raw = self.get(key)
        if raw is None:
            return default
        if raw == NONE:
            return None
        if not raw or any(c.isspace() for c in raw):
            raise ContractError(key, f"expected a tensor name or 'none', got {raw!r}")
        return raw


def _window(reader: _Reader) -> tuple[int, int, int]:
    """(min, max, default) window: `forecast.window` N or MIN:MAX, else the legacy keys."""
    raw = reader.get("forecast.window")
    if raw is None:
        default = reader.integer("forecast.default_window", "sequence_length")
        low = reader.integer("min_sequence_length", fallback=default)
        high = reader.integer("max_sequence_length", fallback=default)
    else:
        low_text, _, high_text = raw.partition(":")
        high_text = high_text or low_text
        if not (low_text.isdigit() and high_text.isdigit()):
            raise ContractError("forecast.window", f"expected N or MIN:MAX, got {raw!r}")
        low, high = int(low_text), int(high_text)
        legacy = "sequence_length" if reader.get("forecast.default_window") is None else ""
        default = reader.integer("forecast.default_window", legacy, fallback=high)
    if not 1 <= low <= default <= high <= MAX_WINDOW:
        raise ContractError(
            "forecast.window",
            f"need 1 <= min {low} <= default {default} <= max {high} <= {MAX_WINDOW}",
        )
    return low, high, default


def _levels(reader: _Reader) -> tuple[float, ...]:
    raw = reader.get("forecast.quantile_levels")
    if not raw:
        raise ContractError("forecast.quantile_levels", "required for output_kind quantiles")
    try:
        levels = tuple(float(part) for part in raw.split(","))
    except ValueError:
        raise ContractError(
            "forecast.quantile_levels", f"expected numbers like 0.1,0.5,0.9, got {raw!r}"
        ) from None
    if not all(math.isfinite(q) and 0 < q < 1 for q in levels) or list(levels) != sorted(
        set(levels)
    ):
        raise ContractError(
            "forecast.quantile_levels", f"levels must be increasing, in (0, 1), got {raw!r}"
        )
    return levels


def _signature(reader: _Reader, kind: OutputKind, levels: tuple[float, ...]) -> Signature:
    history = reader.tensor("forecast.input", DEFAULT_SIGNATURE.history)
    if history is None:
        raise ContractError("forecast.input", "a model needs a history input")
    point = reader.tensor("forecast.output", DEFAULT_SIGNATURE.point)
    quantiles = None
    layout = Layout.STEP_LEVEL
    if kind is OutputKind.QUANTILES:
        quantiles = reader.tensor("forecast.quantile_output", "QUANTILES")
        if quantiles is None:
            raise ContractError("forecast.quantile_output", "a quantile model needs this output")
        try:
            layout = Layout(reader.get("forecast.quantile_layout") or Layout.STEP_LEVEL.value)
        except ValueError:
            raise ContractError(
                "forecast.quantile_layout", "expected step_level or level_step"
            ) from None
        if point is None and 0.5 not in levels:
            raise ContractError(
                "forecast.output", "without a point output the levels must include 0.5"
            )
    elif point is None:
        raise ContractError("forecast.output", "a point model needs a point output")
    return Signature(
        history=history,
        horizon=reader.tensor("forecast.horizon_input", DEFAULT_SIGNATURE.horizon),
        season=reader.tensor("forecast.season_input", None),
        point=point,
        quantiles=quantiles,
        levels=len(levels),
        median=levels.index(0.5) if point is None else -1,
        layout=layout,
    )


def _frequencies(reader: _Reader) -> tuple[str, ...]:
    raw = reader.get("forecast.frequencies")
    if raw is None or raw == ANY:
        return ()
    aliases = tuple(part.strip() for part in raw.split(",") if part.strip())
    for alias in aliases:
        if alias in FAMILIES:
            continue
        try:
            parse_frequency(alias)
        except TimeError as error:
            raise ContractError("forecast.frequencies", error.message) from None
    return aliases


NATURAL_SEASONS = {
    "s": 60,
    "min": 60,
    "h": 24,
    "D": 7,
    "B": 5,
    "W": 52,
    "MS": 12,
    "ME": 12,
    "QS": 4,
    "QE": 4,
    "YS": 1,
    "YE": 1,
}
"""Points per natural cycle of each base frequency (docs/model-contract.md)."""


def season_length(contract: Contract | None, frequency: str) -> int:
    """The version's declared season, else the frequency's natural one, else 1."""
    if contract is not None and contract.season_length:
        return contract.season_length
    if not frequency:
        return 1
    try:
        offset = parse_frequency(frequency).offset
    except TimeError:
        return 1
    natural = NATURAL_SEASONS.get(str(offset.name).split("-", 1)[0], 1)
    return natural // offset.n if natural % offset.n == 0 else 1
