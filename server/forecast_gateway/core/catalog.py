"""The model catalog: what the gateway serves, as Triton last reported it.

How the gateway talks to each version (window, horizon, tensors, output
kind, frequencies) is its contract, declared in the model's `config.pbtxt`
parameters (`core/contract.py`), so the model repository is the single
source of truth; readiness per version, and Triton's reason for a version
that is not ready, come from Triton's repository index. The catalog is
refreshed in the background and read without I/O on the request path.
Served: the models listed in the gateway config, and (with discovery on)
every model in Triton's repository that declares `forecast.contract`; a
non-empty allow-list restricts both.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from forecast_gateway.backends.base import BackendModelConfig, InferenceBackend
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.contract import Contract, ContractError, declares_contract, read_contract
from forecast_gateway.errors import GatewayError, NotFound, Unavailable

log = structlog.get_logger(__name__)


class VersionState(enum.Enum):
    """Readiness of a version, as Triton reports it."""

    READY = "READY"
    LOADING = "LOADING"
    UNAVAILABLE = "UNAVAILABLE"

    @classmethod
    def from_triton(cls, state: str) -> VersionState:
        """Map Triton's repository-index state string."""
        return {"READY": cls.READY, "LOADING": cls.LOADING}.get(state, cls.UNAVAILABLE)


@dataclass(frozen=True)
class VersionSpec:
    """One model version: its readiness and the windows it accepts."""

    version: str
    state: VersionState
    sequence_length: int
    min_sequence_length: int
    max_sequence_length: int
    description: str = ""
    replicas_ready: int = 0
    """How many Triton replicas reported it READY at the last refresh."""
    contract: Contract | None = None
    """What the version declares (None: a bad declaration; it is then UNAVAILABLE)."""
    unavailable_reason: str = ""
    """Why it is not ready: Triton's load error, or what is wrong with its contract."""

    @property
    def ready(self) -> bool:
        """Whether Triton serves this version now."""
        return self.state is VersionState.READY


@dataclass(frozen=True)
class ModelSpec:
    """A served model: horizon limits and its versions (keyed by version string)."""

    name: str
    description: str
    default_horizon: int
    max_horizon: int
    versions: Mapping[str, VersionSpec]
    configured_default: str = ""
    max_batch_size: int = 1

    def ready_versions(self) -> list[str]:
        """Ready versions, lowest first."""
        return sorted((v for v, s in self.versions.items() if s.ready), key=int)

    def default_version(self) -> str | None:
        """The configured default if ready, else the highest ready version, else None."""
        ready = self.ready_versions()
        if self.configured_default in ready:
            return self.configured_default
        return ready[-1] if ready else None


def version_parameter(parameters: Mapping[str, str], key: str, version: str) -> str | None:
    """A config.pbtxt parameter for one version: `v<N>.<key>` first, then `<key>`."""
    return parameters.get(f"v{version}.{key}", parameters.get(key))


def build_spec(
    model: ModelConfig,
    parameters: Mapping[str, str],
    states: Mapping[str, str],
    max_batch_size: int = 1,
    reasons: Mapping[tuple[str, str], str] | None = None,
) -> ModelSpec:
    """Combine a model's declared contract and Triton's per-version states into a spec.

    A version whose contract is wrong is UNAVAILABLE with the reason (the
    others still serve); so is every version of a model without batching.
    """
    reasons = reasons or {}
    versions = {}
    for version, state in states.items():
        versions[version] = _version_spec(
            model.name, parameters, version, state, max_batch_size, reasons
        )
    contracts = [v.contract for v in versions.values() if v.contract is not None]
    try:
        default_horizon = read_contract(parameters, "").default_horizon
    except ContractError:
        default_horizon = max((c.default_horizon for c in contracts), default=1)
    return ModelSpec(
        name=model.name,
        description=parameters.get("description", ""),
        default_horizon=default_horizon,
        max_horizon=max((c.max_horizon for c in contracts), default=default_horizon),
        versions=versions,
        configured_default=model.default_version,
        max_batch_size=max(1, max_batch_size),
    )


def _version_spec(
    model: str,
    parameters: Mapping[str, str],
    version: str,
    state: str,
    max_batch_size: int,
    reasons: Mapping[tuple[str, str], str],
) -> VersionSpec:
    description = version_parameter(parameters, "description", version) or ""
    reason = reasons.get((model, version)) or reasons.get((model, ""), "")
    try:
        contract = read_contract(parameters, version)
        if max_batch_size < 1:
            raise ContractError(
                "max_batch_size",
                "must be at least 1: the gateway sends [rows, window] batches",
            )
    except ContractError as error:
        if state == "READY" or not reason:  # else Triton's own load error says more
            log.error("model_contract_invalid", model=model, version=version, error=str(error))
            reason = f"config.pbtxt: {error}"
        return VersionSpec(
            version, VersionState.UNAVAILABLE, 0, 0, 0, description, unavailable_reason=reason
        )
    return VersionSpec(
        version=version,
        state=VersionState.from_triton(state),
        sequence_length=contract.default_window,
        min_sequence_length=contract.min_window,
        max_sequence_length=contract.max_window,
        description=description,
        contract=contract,
        unavailable_reason="" if state == "READY" else reason,
    )


@dataclass
class ModelCatalog:
    """The latest known spec of every served model; swapped whole on refresh."""

    models: tuple[ModelConfig, ...]
    """The models the gateway config lists (served even without a contract marker)."""
    discover: bool = False
    """Also serve every model in Triton's repository that declares `forecast.contract`."""
    allowed: frozenset[str] = frozenset()
    """Non-empty: only these models are served, listed or discovered."""
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    triton_up: bool = False
    _marks: dict[tuple[str, str], float] = field(default_factory=dict)
    """(model, version) -> when Triton said it was gone (time.monotonic())."""

    def listed(self) -> dict[str, ModelConfig]:
        """The models the gateway config lists that the allow-list admits, by name."""
        return {m.name: m for m in self.models if self.admits(m.name)}

    def served(self) -> list[str]:
        """The models served now: the listed ones and those discovered at the last refresh."""
        return sorted(self.listed().keys() | self.specs.keys())

    def routable(self, name: str) -> bool:
        """Whether a routing policy may name `name`: served now, or not known yet.

        Before Triton has reported (it is down), a discovered model cannot be
        told from a typo: the policy's check waits until it has.
        """
        return self.admits(name) and (name in self.served() or not self.triton_up)

    def admits(self, name: str) -> bool:
        """Whether the allow-list lets `name` be served."""
        return not self.allowed or name in self.allowed

    def get(self, name: str) -> ModelSpec:
        """The spec of a served model; NOT_FOUND for a name the gateway does not serve."""
        spec = self.specs.get(name)
        if spec is None:
            if name in self.listed():
                raise Unavailable(
                    f"model {name!r} is configured but Triton has not reported it yet",
                    reason="MODEL_UNAVAILABLE",
                    metadata={"model": name},
                )
            served = ", ".join(self.served()) or "none yet"
            raise NotFound(
                f"model {name!r} is not served; served models: {served} (ListModels)",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name},
            )
        return spec

    def all_ready(self) -> bool:
        """Triton is up, some model serves, and no listed model is still on its way.

        A listed model is on its way until Triton reports it with a ready
        version, or with every version failed (UNAVAILABLE with Triton's
        reason). A model that fails to load costs only itself: the gateway
        keeps serving the others (its health stays SERVING) and ListModels
        says why.
        """
        if not self.triton_up or not any(s.ready_versions() for s in self.specs.values()):
            return False
        return not any(self._on_its_way(name) for name in self.listed())

    def _on_its_way(self, name: str) -> bool:
        spec = self.specs.get(name)
        if spec is None:
            return True
        if spec.ready_versions():
            return False
        return not spec.versions or any(
            v.state is VersionState.LOADING or not v.unavailable_reason
            for v in spec.versions.values()
        )

    def replace(self, specs: dict[str, ModelSpec], triton_up: bool) -> None:
        """Install a new snapshot (one assignment each: readers never see half of one)."""
        self.specs = specs
        self.triton_up = triton_up

    def mark_unavailable(self, model: str, version: str) -> None:
        """Take a version out of routing until the next refresh: Triton said it is not loaded.

        A refresh that began before the mark read Triton before the version
        went, so it keeps the mark; the next one re-reads Triton's view, and
        a version wrongly marked comes back within `catalog_refresh_s`.
        """
        self._marks[(model, version)] = time.monotonic()
        spec = self.specs.get(model)
        if spec is not None and spec.versions.get(version, _NONE).ready:
            self.specs = {**self.specs, model: _without(spec, version)}
            log.warning("version_unavailable_at_triton", model=model, version=version)

    async def refresh(self, backend: InferenceBackend) -> None:
        """Re-read versions and parameters of the served models from the backend (Triton).

        If Triton is unreachable every version is marked UNAVAILABLE (so
        health turns NOT_SERVING) but the last known shapes are kept.
        """
        started = time.monotonic()
        try:
            specs = await self._read_all(backend)
        except GatewayError as error:
            if self.triton_up:
                log.warning("triton_unreachable", error=error.message)
            self.replace(
                {name: _unavailable(spec) for name, spec in self.specs.items()}, triton_up=False
            )
            return
        if not self.triton_up:
            log.info("triton_reachable", models=sorted(specs))
        for (name, version), marked_at in list(self._marks.items()):
            if marked_at < started:
                del self._marks[(name, version)]  # this refresh read Triton after it
            elif name in specs and specs[name].versions.get(version, _NONE).ready:
                specs[name] = _without(specs[name], version)
        self.replace(specs, triton_up=True)

    async def _read_all(self, backend: InferenceBackend) -> dict[str, ModelSpec]:
        """The spec of every model served now (listed, or discovered in Triton's repository)."""
        states = await backend.version_states()
        reasons = backend.version_reasons
        specs: dict[str, ModelSpec] = {}
        listed = self.listed()
        for name in sorted(set(listed) | (set(states) if self.discover else set())):
            if name not in states:
                log.warning("model_not_in_triton", model=name)
            elif self.admits(name):
                spec = await self._read(backend, listed.get(name), name, states[name], reasons)
                if spec is not None:
                    specs[name] = spec
        return specs

    async def _read(
        self,
        backend: InferenceBackend,
        listed: ModelConfig | None,
        name: str,
        states: Mapping[str, str],
        reasons: Mapping[tuple[str, str], str],
    ) -> ModelSpec | None:
        """A model's spec; None for an unlisted model that does not declare the contract.

        A model Triton failed to load has no config to read: it is listed
        with its versions UNAVAILABLE and Triton's reason.
        """
        failed = _reasons_of(name, reasons) and all(
            state not in ("READY", "LOADING") for state in states.values()
        )
        if failed:  # Triton has no config of a model it could not load: its reason says why
            config = BackendModelConfig({}, 1)
        else:
            config = await backend.model_config(name)
            if listed is None and not declares_contract(config.parameters):
                return None  # not a forecasting model (or not declared as one)
        spec = build_spec(
            listed or ModelConfig(name=name),
            config.parameters,
            states,
            config.max_batch_size,
            reasons,
        )
        return _with_replicas(spec, backend.replicas_ready)


def _reasons_of(model: str, reasons: Mapping[tuple[str, str], str]) -> bool:
    return any(name == model for name, _ in reasons)


_NONE = VersionSpec("", VersionState.UNAVAILABLE, 0, 0, 0)
"""Stands in for a version the spec does not have (never ready)."""


def _without(spec: ModelSpec, version: str) -> ModelSpec:
    """`spec` with `version` UNAVAILABLE (a new snapshot; readers may hold the old one)."""
    state = dataclasses.replace(spec.versions[version], state=VersionState.UNAVAILABLE)
    return dataclasses.replace(spec, versions={**spec.versions, version: state})


def _unavailable(spec: ModelSpec) -> ModelSpec:
    versions = {
        v: dataclasses.replace(s, state=VersionState.UNAVAILABLE, replicas_ready=0)
        for v, s in spec.versions.items()
    }
    return dataclasses.replace(spec, versions=versions)


def _with_replicas(spec: ModelSpec, ready: Mapping[tuple[str, str], int]) -> ModelSpec:
    """`spec` with each version's count of replicas that reported it READY."""
    versions = {
        v: dataclasses.replace(s, replicas_ready=ready.get((spec.name, v), 0))
        for v, s in spec.versions.items()
    }
    return dataclasses.replace(spec, versions=versions)
