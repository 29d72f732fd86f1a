"""Routing: which version of a model serves a request, and why.

The one place where that decision is made. Pure functions of the request
and the catalog's spec, so they are unit-tested without I/O.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from forecast_gateway.catalog import ModelSpec
from forecast_gateway.errors import NotFound, Unavailable


class Decision(enum.Enum):
    """How the version was chosen (mirrors forecast.v1.RoutingDecision)."""

    PINNED = "pinned"
    DEFAULT = "default"


@dataclass(frozen=True)
class Route:
    """The version that will serve a request and the reason it was chosen."""

    version: str
    decision: Decision


def choose_version(spec: ModelSpec, requested: str) -> Route:
    """Pick the version for a request that names `requested` ("" = let the gateway choose).

    A pinned version must be one the model has (else NOT_FOUND) and be ready
    (else UNAVAILABLE: it may come back). An unpinned request gets the
    model's default version.
    """
    if requested:
        version = spec.versions.get(requested)
        if version is None:
            known = ", ".join(sorted(spec.versions, key=int)) or "none"
            raise NotFound(
                f"model {spec.name!r} has no version {requested!r}; versions: {known}",
                reason="VERSION_NOT_FOUND",
                metadata={"model": spec.name, "version": requested},
            )
        if not version.ready:
            raise Unavailable(
                f"version {requested!r} of model {spec.name!r} is {version.state.value}",
                reason="VERSION_UNAVAILABLE",
                metadata={"model": spec.name, "version": requested},
            )
        return Route(version=requested, decision=Decision.PINNED)
    default = spec.default_version()
    if default is None:
        raise Unavailable(
            f"model {spec.name!r} has no ready version",
            reason="MODEL_UNAVAILABLE",
            metadata={"model": spec.name},
        )
    return Route(version=default, decision=Decision.DEFAULT)
