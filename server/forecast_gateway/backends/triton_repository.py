"""What Triton's model repository reports, read into the gateway's terms.

The repository index of each replica merged into one state per version, and
the parts of a model's config.pbtxt the catalog uses (its string
`parameters` and `max_batch_size`). Plain JSON in, plain data out: no grpc.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from forecast_gateway.backends.base import BackendModelConfig

_STATE_RANK = {"READY": 2, "LOADING": 1}
"""Which replica's state wins when they differ."""


@dataclass(frozen=True)
class Index:
    """The merged repository indexes of every replica that answered."""

    states: dict[str, dict[str, str]]
    """model -> version -> state."""
    ready: dict[tuple[str, str], int]
    """(model, version) -> how many replicas have it READY."""
    reasons: dict[tuple[str, str], str]
    """(model, version) -> Triton's reason for a version not ready (version "": the model's)."""


def merge_states(indexes: list[dict[str, Any]]) -> Index:
    """Merge repository indexes of several replicas.

    A version is READY if any replica has it READY, else LOADING if any is
    loading, else the first state reported. Triton's `reason` (its load
    error for a model that failed) is kept for versions not ready.
    """
    states: dict[str, dict[str, str]] = {}
    ready: dict[tuple[str, str], int] = {}
    reasons: dict[tuple[str, str], str] = {}
    for index in indexes:
        for entry in index.get("models", []):
            name, version = entry.get("name", ""), entry.get("version", "")
            state = entry.get("state", "")
            reason = str(entry.get("reason", "") or "")
            if reason and state != "READY":
                reasons.setdefault((name, version), reason)
            if not version:
                continue
            known = states.setdefault(name, {})
            if version not in known or _STATE_RANK.get(state, 0) > _STATE_RANK.get(
                known[version], 0
            ):
                known[version] = state
            if state == "READY":
                ready[(name, version)] = ready.get((name, version), 0) + 1
    for name, version in list(reasons):
        if states.get(name, {}).get(version) == "READY":
            del reasons[(name, version)]
    return Index(states, ready, reasons)


def model_config_from(answer: Mapping[str, Any]) -> BackendModelConfig:
    """The parameters and batch size in Triton's JSON answer to get_model_config."""
    body: Mapping[str, Any] = answer.get("config", {})
    raw: Mapping[str, Any] = body.get("parameters", {})
    return BackendModelConfig(
        parameters={key: str(value.get("string_value", "")) for key, value in raw.items()},
        max_batch_size=int(body.get("max_batch_size", 0)),
    )
