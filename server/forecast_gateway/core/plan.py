"""The plan stage: validate a series, pick the version it runs on, fix its window and horizon.

Pure decisions over the catalog snapshot and the routing policies; nothing
here talks to a backend. A series that no ready version can serve gets the
error of the version that asks least of it.

An arm of another model ("seasonal_naive:1" in lstm_timeseries's split or
shadow) is checked on that model's spec, with the request model's horizon
when the request leaves it at 0, so every arm forecasts the same steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Protocol

import structlog

from forecast_gateway import metrics
from forecast_gateway.ab import arm_parts
from forecast_gateway.core.catalog import ModelCatalog, ModelSpec, VersionSpec
from forecast_gateway.core.results import Plan
from forecast_gateway.core.routing import NoEligibleVersion, Policy, choose_version
from forecast_gateway.core.validation import (
    ForecastQuery,
    Shape,
    check_query,
    prepare_query,
    resolve_shape,
    shape_violations,
)
from forecast_gateway.errors import MISSING_VALUES, GatewayError, InvalidArgument

log = structlog.get_logger(__name__)


class Policies(Protocol):
    """What the stages read of the routing table (`routing_config.RoutingTable`)."""

    def policy(self, name: str) -> Policy | None:
        """The model's routing policy (None: default routing)."""
        ...

    def experiment(self, name: str) -> str:
        """The model's current experiment name."""
        ...


class Planner:
    """Turns queries into plans against the catalog's current snapshot."""

    def __init__(self, catalog: ModelCatalog, routing: Policies, max_history_length: int) -> None:
        self.catalog = catalog
        self.routing = routing
        self.max_history_length = max_history_length

    def check(self, query: ForecastQuery) -> ForecastQuery:
        """The query on its time grid, after the checks that need no model."""
        return check_query(query, self.max_history_length)

    def plan_query(self, index: int, query: ForecastQuery) -> tuple[ModelSpec, Plan]:
        """Check, look the model up, route and fix the shape.

        A malformed query gets one INVALID_ARGUMENT listing every violation
        known before inference (AIP-193): the model-free checks and, for a
        served model, what its limits (and a pinned version's window) reject
        of the fields that are not already at fault.
        """
        try:
            return self._plan_query(index, query)
        except InvalidArgument as error:
            if any(v.reason == MISSING_VALUES for v in error.violations):
                metrics.MISSING_VALUES_REJECTED.labels(query.model).inc()
            raise

    def _plan_query(self, index: int, query: ForecastQuery) -> tuple[ModelSpec, Plan]:
        query, violations = prepare_query(query, self.max_history_length)
        spec = self.catalog.specs.get(query.model) if violations else self.catalog.get(query.model)
        if not violations:
            assert spec is not None
            return spec, self.plan(spec, index, query)
        if spec is not None:
            pinned = spec.versions.get(query.version) if query.version else None
            faulty = {v.field for v in violations}
            violations += [
                v
                for v in shape_violations(query, spec, pinned)
                if v.field not in faulty and not (v.field == "history" and pinned is None)
            ]
        raise InvalidArgument.of(violations)

    def plan(self, spec: ModelSpec, index: int, query: ForecastQuery) -> Plan:
        """Route among the versions that can serve the query, and fix its shape."""
        shapes: dict[str, Shape] = {}
        specs = self.catalog.specs

        def eligible(label: str) -> bool:
            arm = arm_version(spec, label, specs)
            if arm is None:
                return False
            try:
                shapes[label] = resolve_shape(arm_query(query, spec, arm[0]), *arm)
            except InvalidArgument:
                return False
            return True

        try:
            route = choose_version(
                spec,
                query.version,
                query.routing_key,
                self.routing.policy(spec.name),
                None,
                eligible,
                specs,
            )
        except NoEligibleVersion as none:
            raise smallest_requirement(query, spec, none.candidates, specs) from None
        shape = shapes.get(route.label) or resolve_shape(query, spec, spec.versions[route.version])
        if route.restricted:
            metrics.ROUTING_RESTRICTED.labels(spec.name, route.label).inc()
        return Plan(index, query, route, shape)

    def fallback(self, primary: Plan) -> Plan | None:
        """The plan of `primary`'s series on its route's fallback; None if it cannot serve it.

        The fallback model may be unknown, loading or unable to take the
        series: then the series keeps its own error, and nothing else fails.
        """
        fallback = primary.route.fallback
        assert fallback is not None
        try:
            spec = self.catalog.get(fallback.model)
            route = choose_version(spec, fallback.version)
            shape = resolve_shape(primary.query, spec, spec.versions[route.version])
        except GatewayError as error:
            log.warning(
                "fallback_unavailable", to=fallback.model, reason=error.reason, error=error.message
            )
            return None
        return Plan(primary.index, primary.query, route, shape)


def arm_version(
    spec: ModelSpec, label: str, specs: Mapping[str, ModelSpec]
) -> tuple[ModelSpec, VersionSpec] | None:
    """The spec and version an arm label names: `spec`'s own, or another model's in `specs`."""
    model, version = arm_parts(label)
    owner = spec if not model or model == spec.name else specs.get(model)
    found = owner.versions.get(version) if owner is not None else None
    return None if owner is None or found is None else (owner, found)


def arm_query(query: ForecastQuery, spec: ModelSpec, owner: ModelSpec) -> ForecastQuery:
    """The query as an arm of `owner` runs it: the request model's horizon when left at 0."""
    if owner.name == spec.name or query.horizon:
        return query
    return replace(query, horizon=spec.default_horizon)


def smallest_requirement(
    query: ForecastQuery,
    spec: ModelSpec,
    candidates: Sequence[str],
    specs: Mapping[str, ModelSpec] | None = None,
) -> InvalidArgument:
    """The error of the ready version (or arm) asking least of the request (the shortest window)."""

    def demand(arm: tuple[ModelSpec, VersionSpec]) -> tuple[bool, int, int]:
        """Versions that take the requested window first, then the shortest window."""
        version = arm[1]
        window = query.sequence_length or version.sequence_length
        takes = version.min_sequence_length <= window <= version.max_sequence_length
        return (not takes, window, int(version.version))

    arms = [arm_version(spec, label, specs or {}) for label in candidates]
    found = [arm for arm in arms if arm is not None]
    if found:
        owner, easiest = min(found, key=demand)
        try:
            resolve_shape(arm_query(query, spec, owner), owner, easiest)
        except InvalidArgument as error:
            return error
    return InvalidArgument(f"no version of {spec.name!r} can serve this request")
