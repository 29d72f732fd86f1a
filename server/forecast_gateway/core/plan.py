"""The plan stage: validate a series, pick the version it runs on, fix its window and horizon.

Pure decisions over the catalog snapshot and the routing policies; nothing
here talks to a backend. A series that no ready version can serve gets the
error of the version that asks least of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import structlog

from forecast_gateway import metrics
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

        def eligible(version: str) -> bool:
            try:
                shapes[version] = resolve_shape(query, spec, spec.versions[version])
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
            )
        except NoEligibleVersion as none:
            raise smallest_requirement(query, spec, none.candidates) from None
        shape = shapes.get(route.version) or resolve_shape(
            query, spec, spec.versions[route.version]
        )
        if route.restricted:
            metrics.ROUTING_RESTRICTED.labels(spec.name, route.version).inc()
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


def smallest_requirement(
    query: ForecastQuery, spec: ModelSpec, candidates: Sequence[str]
) -> InvalidArgument:
    """The error of the ready version asking least of the request (the shortest window)."""

    def demand(version: VersionSpec) -> tuple[bool, int, int]:
        """Versions that take the requested window first, then the shortest window."""
        window = query.sequence_length or version.sequence_length
        takes = version.min_sequence_length <= window <= version.max_sequence_length
        return (not takes, window, int(version.version))

    easiest = min((spec.versions[v] for v in candidates), key=demand)
    try:
        resolve_shape(query, spec, easiest)
    except InvalidArgument as error:
        return error
    return InvalidArgument(f"no version of {spec.name!r} can serve this request")
