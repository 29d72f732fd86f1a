"""The model catalog: what the gateway serves, as Triton last reported it.

Model shape facts (window, horizon limits) come from each model's
`config.pbtxt` parameters, so the model repository is the single source of
truth; readiness per version comes from Triton's repository index. The
catalog is refreshed in the background and read without I/O on the request
path. Only models listed in the gateway config are ever exposed.
"""

from __future__ import annotations

import dataclasses
import enum
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import structlog

from forecast_gateway.backends.base import InferenceBackend
from forecast_gateway.config import ModelConfig
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


def _int_parameter(parameters: Mapping[str, str], key: str, version: str = "") -> int:
    raw = version_parameter(parameters, key, version)
    if raw is None or not raw.strip().isdigit():
        raise ValueError(f"parameter {key!r} missing or not a whole number: {raw!r}")
    return int(raw)


def build_spec(
    model: ModelConfig,
    parameters: Mapping[str, str],
    states: Mapping[str, str],
    max_batch_size: int = 1,
) -> ModelSpec:
    """Combine a model's config parameters and Triton's per-version states into a spec.

    Raises ValueError when the model's config lacks a required parameter.
    """
    versions = {}
    for version, state in states.items():
        window = _int_parameter(parameters, "sequence_length", version)
        versions[version] = VersionSpec(
            version=version,
            state=VersionState.from_triton(state),
            sequence_length=window,
            min_sequence_length=int(
                version_parameter(parameters, "min_sequence_length", version) or window
            ),
            max_sequence_length=int(
                version_parameter(parameters, "max_sequence_length", version) or window
            ),
            description=version_parameter(parameters, "description", version) or "",
        )
    return ModelSpec(
        name=model.name,
        description=parameters.get("description", ""),
        default_horizon=_int_parameter(parameters, "default_horizon"),
        max_horizon=_int_parameter(parameters, "max_horizon"),
        versions=versions,
        configured_default=model.default_version,
        max_batch_size=max(1, max_batch_size),
    )


@dataclass
class ModelCatalog:
    """The latest known spec of every served model; swapped whole on refresh."""

    models: tuple[ModelConfig, ...]
    specs: dict[str, ModelSpec] = field(default_factory=dict)
    triton_up: bool = False
    _marks: dict[tuple[str, str], float] = field(default_factory=dict)
    """(model, version) -> when Triton said it was gone (time.monotonic())."""

    def get(self, name: str) -> ModelSpec:
        """The spec of a served model; NOT_FOUND for a name not in the gateway config."""
        spec = self.specs.get(name)
        if spec is None:
            if any(m.name == name for m in self.models):
                raise Unavailable(
                    f"model {name!r} is configured but Triton has not reported it yet",
                    reason="MODEL_UNAVAILABLE",
                    metadata={"model": name},
                )
            served = ", ".join(sorted(m.name for m in self.models))
            raise NotFound(
                f"model {name!r} is not served; served models: {served}",
                reason="MODEL_NOT_FOUND",
                metadata={"model": name},
            )
        return spec

    def all_ready(self) -> bool:
        """Triton is up and every served model has at least one ready version."""
        return self.triton_up and all(
            name in self.specs and self.specs[name].ready_versions()
            for name in (m.name for m in self.models)
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
            states = await backend.version_states()
            specs: dict[str, ModelSpec] = {}
            for model in self.models:
                if model.name not in states:
                    log.warning("model_not_in_triton", model=model.name)
                    continue
                config = await backend.model_config(model.name)
                try:
                    specs[model.name] = _with_replicas(
                        build_spec(
                            model, config.parameters, states[model.name], config.max_batch_size
                        ),
                        backend.replicas_ready,
                    )
                except ValueError as error:
                    log.error("model_config_invalid", model=model.name, error=str(error))
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
