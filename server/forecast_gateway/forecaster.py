"""The forecasting core: validate, route, normalize, infer, denormalize, record.

Everything between the servicer's proto conversion and the Triton proxy, for
single series, batches and version comparisons. One execution path serves
them all: a single forecast is a batch of one. Series that go to the same
version with the same window and horizon are normalized together and sent to
Triton as one tensor (chunked to the model's max_batch_size); a group whose
version Triton no longer serves is routed again, and a group that fails goes
to the model's fallback, as a single forecast would. The routing decision of
a single forecast is bound to the request's log context, so the
interceptor's one line per request reports it. Shadow forecasts run off the
response path.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

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
from forecast_gateway.conformal import Levels
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
from forecast_gateway.validation import (
    NO_LEVELS,
    ForecastQuery,
    Shape,
    check_query,
    resolve_shape,
)

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
        _bind_route(spec, plan)
        (outcome,) = await self._serve(spec, [plan], deadline, single=True)
        if isinstance(outcome, GatewayError):
            raise outcome
        return outcome

    async def forecast_batch(
        self, model: str, queries: Sequence[ForecastQuery], deadline: float
    ) -> list[ForecastResult | GatewayError]:
        """Forecast many series of one model; each series gets a result or its own error."""
        spec = self.catalog.get(model)
        outcomes: list[ForecastResult | GatewayError] = [_UNPROCESSED] * len(queries)
        plans: list[_Plan] = []
        for index, query in enumerate(queries):
            try:
                check_query(query, self.max_history_length)
                plans.append(self._plan(spec, index, query))
            except GatewayError as error:
                outcomes[index] = error
        for plan, outcome in zip(plans, await self._serve(spec, plans, deadline), strict=True):
            outcomes[plan.index] = outcome
        return outcomes

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

    async def _serve(
        self, spec: ModelSpec, plans: Sequence[_Plan], deadline: float, *, single: bool = False
    ) -> list[ForecastResult | GatewayError]:
        """Run planned series in groups, record the served ones; outcomes in `plans` order.

        `single`: one caller's forecast, whose route (and any re-route or
        fallback) goes on the request's log line, and whose unexpected
        failure fails the call. A batch gives each series of a failed
        group that error instead.
        """
        if not plans:
            return []
        groups = [list(plans)] if len(plans) == 1 else _group(plans)
        outcomes: dict[int, ForecastResult | GatewayError] = {}
        if len(groups) == 1 and single:
            outcomes.update(await self._run_resilient(spec, groups[0], deadline, single))
        else:
            finished = await asyncio.gather(
                *(self._run_resilient(spec, members, deadline, single) for members in groups),
                return_exceptions=True,
            )
            for members, group_outcome in zip(groups, finished, strict=True):
                if isinstance(group_outcome, BaseException):
                    outcomes.update(_failed(members, group_outcome))
                else:
                    outcomes.update(group_outcome)
        self._mirror(
            spec,
            [(p, r) for p in plans if isinstance(r := outcomes[p.index], ForecastResult)],
        )
        return [outcomes[p.index] for p in plans]

    async def _run_resilient(
        self, spec: ModelSpec, plans: list[_Plan], deadline: float, single: bool
    ) -> dict[int, ForecastResult | GatewayError]:
        """One group's outcomes by series index, routed again or answered by the fallback.

        Series whose version Triton dropped are routed again, then every
        series whose forecast failed and whose route has a fallback gets it.
        Between Triton unloading a version and the next catalog refresh, the
        router may still pick it; `_run_group` takes it out of the catalog on
        Triton's answer, and unpinned series go to another ready version
        (once) instead of failing. Pinned series keep their error.
        """
        outcomes = await self._attempt(spec, plans, deadline)
        if not any(isinstance(o, GatewayError) for o in outcomes.values()):
            return outcomes
        gone = [
            p
            for p in plans
            if _version_gone(outcomes[p.index]) and p.route.decision is not Decision.PINNED
        ]
        if gone:
            outcomes.update(await self._reroute(spec.name, gone, deadline, single))
        failed = [
            p
            for p in plans
            if isinstance(outcomes[p.index], GatewayError)
            and not isinstance(outcomes[p.index], InvalidArgument)
            and p.route.fallback is not None
        ]
        if failed:
            outcomes.update(await self._fallback(failed, outcomes, deadline, single))
        return outcomes

    async def _attempt(
        self, spec: ModelSpec, plans: Sequence[_Plan], deadline: float
    ) -> dict[int, ForecastResult | GatewayError]:
        """`_run_group`, with a GatewayError of the whole group given to each series."""
        try:
            results = await self._run_group(spec, plans, deadline)
        except GatewayError as error:
            return {p.index: error for p in plans}
        return {p.index: r for p, r in zip(plans, results, strict=True)}

    async def _reroute(
        self, model: str, plans: Sequence[_Plan], deadline: float, single: bool
    ) -> dict[int, ForecastResult | GatewayError]:
        """Route series again among the versions still ready; keep the error of any that can't."""
        spec = self.catalog.get(model)
        outcomes: dict[int, ForecastResult | GatewayError] = {}
        replanned: list[_Plan] = []
        for plan in plans:
            try:
                replanned.append(self._plan(spec, plan.index, plan.query))
            except GatewayError:  # e.g. the history is too short for the other versions
                continue
        if single and replanned:
            _bind_route(spec, replanned[0])
        for members in _group(replanned):
            outcomes.update(await self._attempt(spec, members, deadline))
        return outcomes

    async def _fallback(
        self,
        plans: Sequence[_Plan],
        errors: dict[int, ForecastResult | GatewayError],
        deadline: float,
        single: bool,
    ) -> dict[int, ForecastResult | GatewayError]:
        """Answer failed series from their route's fallback model/version."""
        outcomes: dict[int, ForecastResult | GatewayError] = {}
        fallback_plans: list[tuple[_Plan, _Plan]] = []
        for plan in plans:
            error = errors[plan.index]
            fallback = plan.route.fallback
            assert fallback is not None and isinstance(error, GatewayError)
            log.warning(
                "fallback",
                failed_version=plan.route.version,
                reason=error.reason,
                to=fallback.model,
            )
            metrics.FALLBACKS.labels(plan.query.model, plan.route.version, error.reason).inc()
            spec = self.catalog.get(fallback.model)
            route = choose_version(spec, fallback.version)
            try:
                shape = resolve_shape(plan.query, spec, spec.versions[route.version])
            except InvalidArgument:
                continue  # the fallback cannot serve it either: the series keeps its error
            fallback_plans.append((plan, _Plan(plan.index, plan.query, route, shape)))
        primaries = {f.index: p for p, f in fallback_plans}
        by_model: dict[str, list[_Plan]] = {}
        for primary, plan in fallback_plans:
            assert primary.route.fallback is not None
            by_model.setdefault(primary.route.fallback.model, []).append(plan)
        for model, members in (
            (model, members) for model, group in by_model.items() for members in _group(group)
        ):
            spec = self.catalog.get(model)
            attempt = await self._attempt(spec, members, deadline)
            for index, outcome in attempt.items():
                if isinstance(outcome, ForecastResult):
                    outcome = replace(
                        outcome,
                        decision=Decision.FALLBACK,
                        primary_version=primaries[index].route.version,
                    )
                outcomes[index] = outcome
            if single:
                structlog.contextvars.bind_contextvars(
                    routing=Decision.FALLBACK.value,
                    fallback_model=spec.name,
                    version=members[0].route.version,
                )
        return outcomes

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
                    uncertainty=self._uncertainty(
                        spec.name, plan.route.version, plan.query.levels, row, scale
                    ),
                )
            )
        return results

    def _uncertainty(
        self, model: str, version: str, levels: Levels, values: FloatArray, scale: float
    ) -> Uncertainty | None:
        """The calibrated intervals and quantiles asked for (None: none were)."""
        if not levels or self.calibration is None:
            return None
        return self.calibration.uncertainty(model, version, values, scale, levels)

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
        uncertainty = self._uncertainty(
            spec.name, version, query.levels, values, naive_scales(rows)[0]
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
            # A shadow's forecast is never returned: no intervals to compute for it.
            query = replace(plan.query, levels=NO_LEVELS) if plan.query.levels else plan.query
            shadow_plan = _Plan(plan.index, query, Route(version, Decision.PINNED), shape)
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


def _failed(
    plans: Sequence[_Plan], error: BaseException
) -> dict[int, ForecastResult | GatewayError]:
    """Every series of a batch group that failed unexpectedly gets the same INTERNAL error."""
    log.error("batch_group_failed", error=repr(error))
    return {p.index: Internal("the forecast failed") for p in plans}


def _version_gone(outcome: ForecastResult | GatewayError) -> bool:
    """Triton answered that the version is not loaded (see triton.convert_error)."""
    return isinstance(outcome, Unavailable) and outcome.reason == VERSION_GONE


_UNPROCESSED = Internal("series was not processed")


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
