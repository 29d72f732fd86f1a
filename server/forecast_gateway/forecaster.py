"""The forecasting core: validate, route, normalize, infer, denormalize, record.

Everything between the servicer's proto conversion and the Triton proxy, for
single series, batches and version comparisons. Series that go to the same
version with the same window and horizon are normalized together and sent to
Triton as one tensor (chunked to the model's max_batch_size). The routing
decision is bound to the request's log context, so the interceptor's one line
per request reports it. Shadow forecasts run off the response path.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from forecast_gateway import metrics
from forecast_gateway.ab import (
    DEFAULT_EXPERIMENT,
    ExperimentStore,
    Prediction,
    RecordedForecast,
    Role,
    new_forecast_id,
)
from forecast_gateway.ab.scoring import naive_scales
from forecast_gateway.calibration import Calibration, Uncertainty
from forecast_gateway.catalog import ModelCatalog, ModelSpec, VersionSpec
from forecast_gateway.coalescing import Coalescer
from forecast_gateway.errors import (
    FieldViolation,
    GatewayError,
    Internal,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from forecast_gateway.normalization import FloatArray, denormalize, fit_window, normalize
from forecast_gateway.routing import Decision, NoEligibleVersion, Route, choose_version
from forecast_gateway.routing_config import RoutingTable
from forecast_gateway.triton import TritonProxy
from forecast_gateway.validation import ForecastQuery, Shape, check_query, resolve_shape

log = structlog.get_logger(__name__)

# Shadow forecasts in flight at most; beyond it new shadows are dropped (and
# counted), so a slow shadow version can never pile up work in the gateway.
MAX_SHADOWS_IN_FLIGHT = 256
VERSION_GONE = "VERSION_UNAVAILABLE"
"""The reason of Triton's "this version is not loaded" (see triton.convert_error)."""


@dataclass(frozen=True)
class ForecastResult:
    """A forecast in the units of the history, and how it was produced."""

    forecast_id: str
    model: str
    version: str
    decision: Decision
    values: FloatArray
    horizon: int
    window: int
    latency_ms: float = 0.0
    primary_version: str = ""
    restricted: bool = False
    scale: float = 0.0
    """Naive MAE of the window the model read (`ab.naive_scale`): the unit of its errors."""
    uncertainty: Uncertainty | None = None
    """The requested intervals and quantiles; None when the request asked for none."""


@dataclass(frozen=True)
class VersionOutcome:
    """One version's answer in a comparison: values and latency, or the error."""

    version: str
    window: int
    latency_ms: float
    values: FloatArray | None = None
    error: GatewayError | None = None
    uncertainty: Uncertainty | None = None


@dataclass(frozen=True)
class _Plan:
    """A validated series with the version and shape it will run with."""

    index: int
    query: ForecastQuery
    route: Route
    shape: Shape


class Forecaster:
    """Runs forecast queries against the catalog's models through the proxy."""

    def __init__(
        self,
        catalog: ModelCatalog,
        proxy: TritonProxy,
        routing: RoutingTable,
        store: ExperimentStore | None,
        max_history_length: int,
        shadow_timeout_s: float,
        calibration: Calibration | None = None,
    ) -> None:
        self.catalog = catalog
        self.calibration = calibration
        self.coalescer = Coalescer(proxy)
        self.routing = routing
        self.store = store
        self.max_history_length = max_history_length
        self.shadow_timeout_s = shadow_timeout_s
        self._shadows: set[asyncio.Task[None]] = set()

    async def forecast(self, query: ForecastQuery, deadline: float) -> ForecastResult:
        """Forecast one series; raises a GatewayError subclass on any failure.

        `deadline` is a time.monotonic() value: the caller's deadline.
        """
        check_query(query, self.max_history_length)
        spec = self.catalog.get(query.model)
        plan = self._plan(spec, 0, query)
        try:
            spec, plan, result = await self._run_routed(spec, plan, deadline)
        except GatewayError as error:
            if plan.route.fallback is None or isinstance(error, InvalidArgument):
                raise
            result = await self._fallback(plan, error, deadline)
        self._mirror(spec, [(plan, result)])
        return result

    async def _run_routed(
        self, spec: ModelSpec, plan: _Plan, deadline: float
    ) -> tuple[ModelSpec, _Plan, ForecastResult]:
        """Run one series; if Triton no longer serves the version the router chose, route again.

        Between Triton unloading a version and the next catalog refresh, the
        router may still pick it. `_run_group` takes it out of the catalog on
        Triton's answer; an unpinned call then goes to another ready version
        (once) instead of failing. A pinned call keeps its error.
        """
        _bind_route(spec, plan)
        try:
            return spec, plan, await self._run_one(spec, plan, deadline)
        except Unavailable as error:
            if error.reason != VERSION_GONE or plan.route.decision is Decision.PINNED:
                raise
            spec = self.catalog.get(spec.name)
            try:
                plan = self._plan(spec, plan.index, plan.query)
            except GatewayError:  # e.g. the history is too short for the other version
                raise error from None
            _bind_route(spec, plan)
            return spec, plan, await self._run_one(spec, plan, deadline)

    async def forecast_batch(
        self, model: str, queries: Sequence[ForecastQuery], deadline: float
    ) -> list[ForecastResult | GatewayError]:
        """Forecast many series of one model; each series gets a result or its own error."""
        spec = self.catalog.get(model)
        outcomes: list[ForecastResult | GatewayError | None] = [None] * len(queries)
        plans: list[_Plan] = []
        for index, query in enumerate(queries):
            try:
                check_query(query, self.max_history_length)
                plans.append(self._plan(spec, index, query))
            except GatewayError as error:
                outcomes[index] = error
        groups = _group(plans)
        results = await asyncio.gather(
            *(self._run_group(spec, members, deadline) for members in groups),
            return_exceptions=True,
        )
        served: list[tuple[_Plan, ForecastResult]] = []
        for members, group_result in zip(groups, results, strict=True):
            for plan, outcome in zip(members, _expand(group_result, len(members)), strict=True):
                outcomes[plan.index] = outcome
                if isinstance(outcome, ForecastResult):
                    served.append((plan, outcome))
        self._mirror(spec, served)
        return [o if o is not None else Internal("series was not processed") for o in outcomes]

    async def compare(
        self, query: ForecastQuery, versions: Sequence[str], deadline: float
    ) -> list[VersionOutcome]:
        """Run one series on several versions concurrently (nothing is recorded)."""
        check_query(query, self.max_history_length)
        spec = self.catalog.get(query.model)
        chosen = list(dict.fromkeys(versions)) or spec.ready_versions()
        unknown = [v for v in chosen if v not in spec.versions]
        if unknown:
            raise NotFound(
                f"model {spec.name!r} has no version(s) {', '.join(unknown)}",
                reason="VERSION_NOT_FOUND",
                metadata={"model": spec.name},
            )
        return list(
            await asyncio.gather(*(self._compare_one(spec, query, v, deadline) for v in chosen))
        )

    async def drain_shadows(self) -> None:
        """Wait for shadow forecasts still running (graceful shutdown)."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    def _plan(self, spec: ModelSpec, index: int, query: ForecastQuery) -> _Plan:
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
            raise _smallest_requirement(query, spec, none.candidates) from None
        shape = shapes.get(route.version) or resolve_shape(
            query, spec, spec.versions[route.version]
        )
        if route.restricted:
            metrics.ROUTING_RESTRICTED.labels(spec.name, route.version).inc()
        return _Plan(index, query, route, shape)

    async def _run_one(self, spec: ModelSpec, plan: _Plan, deadline: float) -> ForecastResult:
        """Run one series; raise its error instead of returning it."""
        (result,) = await self._run_group(spec, [plan], deadline)
        if isinstance(result, GatewayError):
            raise result
        return result

    async def _run_group(
        self, spec: ModelSpec, plans: Sequence[_Plan], deadline: float
    ) -> list[ForecastResult | GatewayError]:
        """One Triton pass (chunked) for series sharing version, window and horizon."""
        first = plans[0]
        windows = np.stack([fit_window(p.query.history, first.shape.window) for p in plans])
        started = time.perf_counter()
        try:
            values = await self._infer(
                spec, first.route.version, windows, first.shape.horizon, deadline
            )
        except Unavailable as error:
            if error.reason == VERSION_GONE:  # Triton answered: out of routing until refreshed
                self.catalog.mark_unavailable(spec.name, first.route.version)
            raise
        latency_ms = _ms_since(started)
        scales = naive_scales(windows)
        results: list[ForecastResult | GatewayError] = []
        for plan, row, scale in zip(plans, values, scales, strict=True):
            if not np.isfinite(row).all():
                results.append(
                    Internal(
                        "the model produced a non-finite forecast",
                        reason="MODEL_OUTPUT_INVALID",
                        metadata={"model": spec.name, "version": plan.route.version},
                    )
                )
                continue
            results.append(
                ForecastResult(
                    forecast_id=new_forecast_id(),
                    model=spec.name,
                    version=plan.route.version,
                    decision=plan.route.decision,
                    values=row,
                    horizon=plan.shape.horizon,
                    window=plan.shape.window,
                    latency_ms=latency_ms,
                    restricted=plan.route.restricted,
                    scale=scale,
                    uncertainty=self._uncertainty(spec.name, plan, row, scale),
                )
            )
        return results

    def _uncertainty(
        self, model: str, plan: _Plan, values: FloatArray, scale: float
    ) -> Uncertainty | None:
        """The calibrated intervals and quantiles the query asked for (None: it asked for none)."""
        if not plan.query.levels or self.calibration is None:
            return None
        return self.calibration.uncertainty(
            model, plan.route.version, values, scale, plan.query.levels
        )

    async def _infer(
        self, spec: ModelSpec, version: str, windows: FloatArray, horizon: int, deadline: float
    ) -> FloatArray:
        """Normalize rows, run them on Triton (coalesced, max_batch_size at most), denormalize.

        The coalescer refuses a call whose deadline has already passed.
        """
        z, scaling = normalize(windows)
        size = spec.max_batch_size
        if z.shape[0] <= size:  # one chunk (every unary call): no gather, no extra task
            output = await self.coalescer.forecast(spec.name, version, z, horizon, deadline, size)
            return denormalize(output, scaling)
        outputs = await asyncio.gather(
            *(
                self.coalescer.forecast(
                    spec.name, version, z[start : start + size], horizon, deadline, size
                )
                for start in range(0, z.shape[0], size)
            )
        )
        return denormalize(np.concatenate(outputs), scaling)

    async def _fallback(self, plan: _Plan, error: GatewayError, deadline: float) -> ForecastResult:
        """Answer from the route's fallback model/version after the primary failed."""
        fallback = plan.route.fallback
        assert fallback is not None
        log.warning(
            "fallback", failed_version=plan.route.version, reason=error.reason, to=fallback.model
        )
        metrics.FALLBACKS.labels(plan.query.model, plan.route.version, error.reason).inc()
        spec = self.catalog.get(fallback.model)
        route = choose_version(spec, fallback.version)
        try:
            shape = resolve_shape(plan.query, spec, spec.versions[route.version])
        except InvalidArgument:
            raise error from None
        fallback_plan = _Plan(plan.index, plan.query, route, shape)
        result = await self._run_one(spec, fallback_plan, deadline)
        structlog.contextvars.bind_contextvars(
            routing=Decision.FALLBACK.value, fallback_model=spec.name, version=route.version
        )
        return ForecastResult(
            forecast_id=result.forecast_id,
            model=result.model,
            version=result.version,
            decision=Decision.FALLBACK,
            values=result.values,
            horizon=result.horizon,
            window=result.window,
            latency_ms=result.latency_ms,
            primary_version=plan.route.version,
            scale=result.scale,
            uncertainty=result.uncertainty,
        )

    async def _compare_one(
        self, spec: ModelSpec, query: ForecastQuery, version: str, deadline: float
    ) -> VersionOutcome:
        started = time.perf_counter()
        window = 0
        try:
            shape = resolve_shape(query, spec, spec.versions[version])
            window = shape.window
            rows = fit_window(query.history, shape.window)[np.newaxis, :]
            values = (await self._infer(spec, version, rows, shape.horizon, deadline))[0]
            if not np.isfinite(values).all():
                raise Internal("the model produced a non-finite forecast")
        except GatewayError as error:
            return VersionOutcome(version, window, _ms_since(started), error=error)
        latency_ms = _ms_since(started)
        uncertainty = None
        if query.levels and self.calibration is not None:
            scale = naive_scales(rows)[0]
            uncertainty = self.calibration.uncertainty(
                spec.name, version, values, scale, query.levels
            )
        return VersionOutcome(version, window, latency_ms, values=values, uncertainty=uncertainty)

    def _mirror(self, spec: ModelSpec, served: Sequence[tuple[_Plan, ForecastResult]]) -> None:
        """Record served forecasts for A/B scoring and start their shadow forecasts."""
        if not served:
            return
        now = time.time()
        experiment = DEFAULT_EXPERIMENT
        if self.store is not None:
            experiment = self.routing.experiment(spec.name)
            for _, result in served:
                self.store.record(
                    RecordedForecast(
                        forecast_id=result.forecast_id,
                        model=result.model,
                        horizon=result.horizon,
                        naive_scale=result.scale,
                        created_at=now,
                        served=Prediction(
                            result.version,
                            Role.SERVED,
                            tuple(result.values),
                            result.latency_ms,
                            self._tracked(result),
                        ),
                        # A fallback's forecast belongs to its own model's experiment.
                        experiment=self.routing.experiment(result.model),
                        comparable=_drawn_by_the_split(result),
                    )
                )
        by_version: dict[str, list[tuple[_Plan, ForecastResult]]] = {}
        for plan, result in served:
            if result.decision is Decision.FALLBACK:
                continue
            for version in plan.route.shadows:
                by_version.setdefault(version, []).append((plan, result))
        for version, pairs in by_version.items():
            if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
                metrics.SHADOWS.labels(spec.name, version, "dropped").inc(len(pairs))
                continue
            task = asyncio.create_task(self._shadow(spec, version, pairs, experiment))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def _shadow(
        self,
        spec: ModelSpec,
        version: str,
        pairs: Sequence[tuple[_Plan, ForecastResult]],
        experiment: str,
    ) -> None:
        """Forecast the same series with a shadow version; record, never return, never raise."""
        version_spec = spec.versions.get(version)
        if version_spec is None or not version_spec.ready:
            metrics.SHADOWS.labels(spec.name, version, "skipped").inc(len(pairs))
            return
        plans: list[tuple[_Plan, ForecastResult]] = []
        for plan, result in pairs:
            try:
                shape = resolve_shape(plan.query, spec, version_spec)
            except InvalidArgument:
                metrics.SHADOWS.labels(spec.name, version, "skipped").inc()
                continue
            shadow_plan = _Plan(plan.index, plan.query, Route(version, Decision.PINNED), shape)
            plans.append((shadow_plan, result))
        served = {p.index: r for p, r in plans}
        for members in _group([p for p, _ in plans]):
            try:
                outcomes = await self._run_group(
                    spec, members, time.monotonic() + self.shadow_timeout_s
                )
            except Exception as error:  # a failing shadow never fails anything else
                reason = error.reason if isinstance(error, GatewayError) else type(error).__name__
                log.warning("shadow_failed", model=spec.name, version=version, reason=reason)
                metrics.SHADOWS.labels(spec.name, version, "failed").inc(len(members))
                continue
            for plan, outcome in zip(members, outcomes, strict=True):
                if not isinstance(outcome, ForecastResult):
                    metrics.SHADOWS.labels(spec.name, version, "failed").inc()
                    continue
                metrics.SHADOWS.labels(spec.name, version, "ok").inc()
                if self.store is not None:
                    self.store.record_shadow(
                        served[plan.index].forecast_id,
                        spec.name,
                        Prediction(
                            version,
                            Role.SHADOW,
                            tuple(outcome.values),
                            outcome.latency_ms,
                            self._tracked(outcome),
                            outcome.scale,
                        ),
                        experiment,
                    )

    def _tracked(self, result: ForecastResult) -> FloatArray | None:
        """The bounds at the tracked levels to record with a forecast, for GetExperiment."""
        if self.calibration is None:
            return None
        return self.calibration.tracked(result.model, result.version, result.horizon)


def _group(plans: Sequence[_Plan]) -> list[list[_Plan]]:
    """Series that can share one Triton tensor: same version, window and horizon."""

    def key(plan: _Plan) -> tuple[str, int, int]:
        return plan.route.version, plan.shape.window, plan.shape.horizon

    return [list(members) for _, members in itertools.groupby(sorted(plans, key=key), key=key)]


def _expand(
    group_result: list[ForecastResult | GatewayError] | BaseException, size: int
) -> list[ForecastResult | GatewayError]:
    """A group's per-series outcomes; a failed group gives every member the same error."""
    if isinstance(group_result, GatewayError):
        return [group_result] * size
    if isinstance(group_result, BaseException):
        log.error("batch_group_failed", error=repr(group_result))
        return [Internal("the forecast failed")] * size
    return group_result


def _drawn_by_the_split(result: ForecastResult) -> bool:
    """Whether the split drew the version at random among all its versions (see ab.aggregates)."""
    return result.decision in (Decision.WEIGHTED, Decision.STICKY) and not result.restricted


def _bind_route(spec: ModelSpec, plan: _Plan) -> None:
    """Put the chosen model, version and routing decision on the request's log line."""
    structlog.contextvars.bind_contextvars(
        model=spec.name,
        version=plan.route.version,
        routing=plan.route.decision.value,
        routing_restricted=plan.route.restricted,
    )


def _smallest_requirement(
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


def _ms_since(started: float) -> float:
    return (time.perf_counter() - started) * 1000.0


def batch_violations(ids: Sequence[str], max_series: int) -> list[FieldViolation]:
    """Checks on a batch as a whole: size and unique, non-empty ids."""
    violations: list[FieldViolation] = []
    if not ids:
        violations.append(FieldViolation("series", "series is empty; send at least one series"))
    elif len(ids) > max_series:
        violations.append(
            FieldViolation("series", f"{len(ids)} series, the maximum is {max_series} per call")
        )
    missing = [i for i, series_id in enumerate(ids) if not series_id]
    if missing:
        violations.append(FieldViolation(f"series[{missing[0]}].id", "every series needs an id"))
    duplicates = sorted(i for i, count in collections.Counter(ids).items() if i and count > 1)
    if duplicates:
        violations.append(
            FieldViolation("series", f"series ids must be unique; repeated: {duplicates[:5]}")
        )
    return violations
