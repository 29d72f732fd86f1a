"""Routing policies per model, from a TOML file reloaded without a restart.

`parse_policies` turns the document into `Policy` values (structure and
value checks), `check_against_catalog` checks them against what the gateway
serves and Triton has, and `RoutingTable` holds the current policies:
loaded at start-up (an invalid file stops the gateway), reloaded later on
demand (an invalid file is logged and the previous policies stay).

    [models.lstm_timeseries]
    split = { "1" = 10, "2" = 90 }          # weights, sum 100
    shadow = { version = "1", percent = 100 }
    fallback = { model = "moving_average", version = "1" }
    experiment = "lstm-v2-rollout"        # A/B results are kept per experiment name

A split or shadow entry, and a fallback, may name a version of another
served model as "<model>:<version>" ("seasonal_naive:1"): checked like the
model's own (the model served, the version one Triton has).
"""

from __future__ import annotations

import hashlib
import math
import tomllib
import types
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

import structlog

from forecast_gateway.ab import ARM_SEPARATOR, DEFAULT_EXPERIMENT, arm_parts
from forecast_gateway.core.catalog import ModelSpec
from forecast_gateway.core.routing import Fallback, Policy, Shadow
from forecast_gateway.names import (
    EXPERIMENT_NAME_RULE,
    VERSION_RULE,
    is_experiment_name,
    is_version,
)

log = structlog.get_logger(__name__)

_MODEL_KEYS = frozenset({"split", "shadow", "fallback", "experiment"})
_SHADOW_KEYS = frozenset({"version", "percent"})
_FALLBACK_KEYS = frozenset({"model", "version"})
_WEIGHT_TOTAL = 100.0
_WEIGHT_TOLERANCE = 1e-6


class RoutingConfigError(ValueError):
    """The routing file is invalid; the message names the model and key at fault."""


def parse_policies(document: Mapping[str, Any], source: str) -> dict[str, Policy]:
    """The policy of each model in a parsed routing document (`[models.<name>]` tables).

    Raises RoutingConfigError naming `source`, the model and the key at fault.
    """
    unknown = set(document) - {"models"}
    if unknown:
        raise RoutingConfigError(f"{source}: unknown top-level key(s): {sorted(unknown)}")
    models = document.get("models", {})
    if not isinstance(models, Mapping):
        raise RoutingConfigError(f"{source}: models: expected a table of [models.<name>]")
    policies: dict[str, Policy] = {}
    for model, table in models.items():
        where = f"{source}: models.{model}"
        if not isinstance(table, Mapping):
            raise RoutingConfigError(f"{where}: expected a table")
        _reject_unknown(table, _MODEL_KEYS, where)
        policies[model] = Policy(
            split=_split(table["split"], f"{where}.split", model) if "split" in table else (),
            shadow=(
                _shadow(table["shadow"], f"{where}.shadow", model) if "shadow" in table else None
            ),
            fallback=(
                _fallback(table["fallback"], f"{where}.fallback") if "fallback" in table else None
            ),
            experiment=_experiment(table.get("experiment", ""), f"{where}.experiment"),
        )
    return policies


Served = Callable[[str], bool]
"""Whether the gateway may serve a model name (listed, or discovery admits it)."""


def check_against_catalog(
    policies: Mapping[str, Policy], specs: Mapping[str, ModelSpec], served: Collection[str] | Served
) -> None:
    """Raise RoutingConfigError if a policy names what the gateway cannot route to.

    Every model (and fallback model, and model of an arm "<model>:<version>")
    must be served by the gateway; every split, shadow and fallback version
    must be one Triton has for its model.
    Versions of a model Triton has not reported yet (no spec) cannot be
    checked here; routing skips versions a model lacks.
    """
    admits = served if callable(served) else frozenset(served).__contains__
    known = sorted(specs) if callable(served) else sorted(served)
    for model, policy in policies.items():
        where = f"models.{model}"
        if not admits(model):
            raise RoutingConfigError(
                f"{where}: model {model!r} is not served by the gateway; "
                f"served models: {_listing(known)}"
            )
        arms = [(label, f"{where}.split.{label}") for label, _ in policy.split]
        if policy.shadow is not None:
            arms.append((policy.shadow.version, f"{where}.shadow.version"))
        for label, at in arms:
            other, version = arm_parts(label)
            if other and not admits(other):
                raise RoutingConfigError(
                    f"{at}: model {other!r} is not served by the gateway; "
                    f"served models: {_listing(known)}"
                )
            _check_version(specs.get(other or model), version, at)
        fallback = policy.fallback
        if fallback is not None:
            if not admits(fallback.model):
                raise RoutingConfigError(
                    f"{where}.fallback.model: model {fallback.model!r} is not served by the "
                    f"gateway; served models: {_listing(known)}"
                )
            if fallback.version:
                _check_version(
                    specs.get(fallback.model), fallback.version, f"{where}.fallback.version"
                )


def describe(policy: Policy) -> str:
    """A one-line summary of a policy, for logs: "split 1=10 2=90; shadow 1@100%; ..."."""
    parts = []
    if policy.split:
        parts.append("split " + " ".join(f"{v}={w:g}" for v, w in policy.split))
    if policy.shadow is not None:
        parts.append(f"shadow {policy.shadow.version}@{policy.shadow.percent:g}%")
    if policy.fallback is not None:
        target = policy.fallback.model
        parts.append(f"fallback {target}/{policy.fallback.version or 'default'}")
    if policy.experiment:
        parts.append(f"experiment {policy.experiment}")
    return "; ".join(parts) or "default"


class RoutingTable:
    """The current routing policies, swapped whole on a successful reload.

    Built without I/O; `load()` reads the file at start-up (after the first
    catalog refresh, so versions can be checked) and raises
    RoutingConfigError if it is invalid: the gateway refuses to start.
    `reload()` and `reload_if_changed()` never raise: an invalid file is
    logged ("routing_reload_rejected") and the previous policies stay.
    `path` None or "" means no routing file: no policies.
    """

    def __init__(
        self,
        path: Path | str | None,
        specs_provider: Callable[[], Mapping[str, ModelSpec]],
        served: Collection[str] | Served,
    ) -> None:
        # Path("") is Path("."): treat it, like "", as "no routing file".
        self._path = Path(path) if path not in (None, "") and Path(path) != Path() else None
        self._specs_provider = specs_provider
        self._served: Collection[str] | Served = served if callable(served) else frozenset(served)
        self._policies: dict[str, Policy] = {}
        self._version = 0
        self._digest: str | None = None
        self._unchecked: frozenset[str] = frozenset()

    def load(self) -> None:
        """Load the file at start-up; raise RoutingConfigError naming the key at fault."""
        policies: dict[str, Policy] = {}
        if self._path is not None:
            data = _read(self._path)
            policies, self._unchecked = self._build(data)
            self._digest = _digest(data)
        self._policies = policies
        self._version += 1
        log.info(
            "routing_loaded",
            path=str(self._path or ""),
            version=self._version,
            policies=self.summary(),
            unchecked=sorted(self._unchecked),
        )

    @property
    def policies(self) -> Mapping[str, Policy]:
        """The current policy of each model that has one (read-only)."""
        return types.MappingProxyType(self._policies)

    @property
    def version(self) -> int:
        """0 before `load()`, 1 after it, +1 for each reload that changed the policies."""
        return self._version

    @property
    def path(self) -> Path | None:
        """The routing file, or None when there is none."""
        return self._path

    def policy(self, model: str) -> Policy | None:
        """The model's policy, or None (default routing)."""
        return self._policies.get(model)

    def experiment(self, model: str) -> str:
        """The experiment the model's forecasts are recorded under now."""
        policy = self._policies.get(model)
        return policy.experiment if policy and policy.experiment else DEFAULT_EXPERIMENT

    def summary(self) -> dict[str, str]:
        """Each model's policy in one line, for logs."""
        return {model: describe(policy) for model, policy in sorted(self._policies.items())}

    def reload(self) -> bool:
        """Re-read the file and install it if valid; return whether the policies changed.

        Never raises: any error is logged once as "routing_reload_rejected"
        and the previous policies stay in force.
        """
        if self._path is None:
            return False
        try:
            data = _read(self._path)
        except RoutingConfigError as error:
            self._digest = None
            return self._reject(error)
        return self._install(data)

    def reload_if_changed(self) -> bool:
        """Reload if the file's content changed (or models not checked yet are now known).

        Cheap enough to call every few seconds: it reads the (small) file and
        compares a hash of its content with the last one seen, valid or not,
        so a rejected file is logged once, not on every call.
        """
        if self._path is None:
            return False
        try:
            data = _read(self._path)
        except RoutingConfigError as error:
            if self._digest is None:
                return False
            self._digest = None
            return self._reject(error)
        if _digest(data) == self._digest and not self._checkable():
            return False
        return self._install(data)

    def _install(self, data: bytes) -> bool:
        self._digest = _digest(data)
        try:
            policies, unchecked = self._build(data)
        except Exception as error:  # any error: keep serving with the previous policies
            self._unchecked = frozenset()
            return self._reject(error)
        self._unchecked = unchecked
        changed = policies != self._policies
        if changed:
            self._policies = policies
            self._version += 1
        log.info(
            "routing_reloaded",
            path=str(self._path),
            changed=changed,
            version=self._version,
            policies=self.summary(),
            unchecked=sorted(unchecked),
        )
        return changed

    def _reject(self, error: Exception) -> bool:
        log.error(
            "routing_reload_rejected",
            path=str(self._path),
            error=str(error),
            kept_version=self._version,
        )
        return False

    def _build(self, data: bytes) -> tuple[dict[str, Policy], frozenset[str]]:
        """Parse and check `data`; also return the models whose versions could not be checked."""
        source = str(self._path)
        try:
            document = tomllib.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise RoutingConfigError(f"{source}: not valid TOML: {error}") from error
        policies = parse_policies(document, source)
        specs = self._specs_provider()
        try:
            check_against_catalog(policies, specs, self._served)
        except RoutingConfigError as error:
            raise RoutingConfigError(f"{source}: {error}") from error
        return policies, frozenset(_models_named(policies) - set(specs))

    def _checkable(self) -> bool:
        """Whether a model whose versions were not checked has since been reported."""
        return bool(self._unchecked) and not self._unchecked.isdisjoint(self._specs_provider())


def _models_named(policies: Mapping[str, Policy]) -> set[str]:
    """Models whose versions a policy names (the model itself, arms, a versioned fallback)."""
    named = set(policies)
    named |= {p.fallback.model for p in policies.values() if p.fallback and p.fallback.version}
    for policy in policies.values():
        labels = [label for label, _ in policy.split]
        labels += [policy.shadow.version] if policy.shadow else []
        named |= {model for model, _ in map(arm_parts, labels) if model}
    return named


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise RoutingConfigError(
            f"{path}: cannot read the routing file: {error.strerror or error}"
        ) from error


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _reject_unknown(table: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    unknown = set(table) - known
    if unknown:
        raise RoutingConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(known)}"
        )


def _number(raw: object, where: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise RoutingConfigError(f"{where}: expected a number, got {raw!r}")
    value = float(raw)
    if not math.isfinite(value):
        raise RoutingConfigError(f"{where}: expected a finite number, got {raw!r}")
    return value


def _version(raw: object, where: str) -> str:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not is_version(raw):
        raise RoutingConfigError(f"{where}: expected {VERSION_RULE}, got {raw!r}")
    return raw


def _arm(raw: object, where: str, own: str) -> str:
    """A version of the model ("2") or the arm label of another model's ("seasonal_naive:1")."""
    if not isinstance(raw, str) or ARM_SEPARATOR not in raw:
        return _version(raw, where)
    model, version = arm_parts(raw)
    if not model.strip() or model != model.strip():
        raise RoutingConfigError(
            f'{where}: expected "<model>:<version>" (e.g. "seasonal_naive:1"), got {raw!r}'
        )
    if model == own:
        raise RoutingConfigError(
            f"{where}: {raw!r} is a version of {own} itself; write it as {version!r}"
        )
    return f"{model}{ARM_SEPARATOR}{_version(version, where)}"


def _arm_order(label: str) -> tuple[int, int, str]:
    """The model's own versions in numeric order, then other models' arms by label."""
    model, version = arm_parts(label)
    return (1, 0, label) if model else (0, int(version), "")


def _split(raw: object, where: str, own: str) -> tuple[tuple[str, float], ...]:
    if not isinstance(raw, Mapping):
        raise RoutingConfigError(f'{where}: expected a table of weights, e.g. {{ "1" = 100 }}')
    weights: list[tuple[str, float]] = []
    for key, value in raw.items():
        version = _arm(key, f"{where}: version key", own)
        weight = _number(value, f"{where}.{key}")
        if weight < 0:
            raise RoutingConfigError(f"{where}.{key}: weight must be >= 0, got {value!r}")
        weights.append((version, weight))
    total = sum(w for _, w in weights)
    if abs(total - _WEIGHT_TOTAL) > _WEIGHT_TOLERANCE:
        raise RoutingConfigError(f"{where}: weights must sum to 100, they sum to {total:g}")
    return tuple(sorted(weights, key=lambda item: _arm_order(item[0])))


def _shadow(raw: object, where: str, own: str) -> Shadow:
    if not isinstance(raw, Mapping):
        raise RoutingConfigError(
            f'{where}: expected a table, e.g. {{ version = "1", percent = 10 }}'
        )
    _reject_unknown(raw, _SHADOW_KEYS, where)
    if "version" not in raw:
        raise RoutingConfigError(f"{where}.version: missing")
    percent = _number(raw.get("percent", 100), f"{where}.percent")
    if not 0 < percent <= 100:
        raise RoutingConfigError(f"{where}.percent: must be in (0, 100], got {percent:g}")
    return Shadow(version=_arm(raw["version"], f"{where}.version", own), percent=percent)


def _fallback(raw: object, where: str) -> Fallback:
    if isinstance(raw, str):  # "moving_average:1", or "moving_average" (its default version)
        model, version = arm_parts(raw) if ARM_SEPARATOR in raw else (raw, "")
        if not model.strip() or model != model.strip():
            raise RoutingConfigError(
                f'{where}: expected "<model>:<version>" or "<model>", got {raw!r}'
            )
        return Fallback(model, _version(version, where) if ARM_SEPARATOR in raw else "")
    if not isinstance(raw, Mapping):
        raise RoutingConfigError(f'{where}: expected a table, e.g. {{ model = "moving_average" }}')
    _reject_unknown(raw, _FALLBACK_KEYS, where)
    name = raw.get("model")
    if not isinstance(name, str) or not name.strip():
        raise RoutingConfigError(f"{where}.model: expected a model name, got {name!r}")
    version = _version(raw["version"], f"{where}.version") if "version" in raw else ""
    return Fallback(model=name.strip(), version=version)


def _experiment(raw: object, where: str) -> str:
    if raw == "":
        return ""
    if not isinstance(raw, str) or not is_experiment_name(raw):
        raise RoutingConfigError(
            f'{where}: expected {EXPERIMENT_NAME_RULE} (e.g. "lstm-v2-rollout"), got {raw!r}'
        )
    return raw


def _check_version(spec: ModelSpec | None, version: str, where: str) -> None:
    if spec is not None and version not in spec.versions:
        raise RoutingConfigError(
            f"{where}: model {spec.name!r} has no version {version!r} in Triton; "
            f"versions: {_listing(spec.versions)}"
        )


def _listing(names: Collection[str]) -> str:
    return ", ".join(sorted(names)) or "none"
