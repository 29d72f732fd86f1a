"""The record stage: A/B recording and shadow forecasts, after the response.

Served forecasts are handed to the A/B store (write-behind) with the bounds
at the tracked levels, and the route's shadow versions forecast the same
series in tasks of their own. `Recorder.record` runs on the next loop turn
after the caller's response is handed to gRPC, so its cost is off the
response path; a shadow never fails, delays or changes a served forecast.

An arm of another model (a split or shadow "seasonal_naive:1" of
lstm_timeseries) is recorded in the request model's experiment under its
label; its bounds are those of its own (model, version), and the store
keeps its calibration pools there (`ab.arm_of`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import replace

import structlog

from forecast_gateway import metrics
from forecast_gateway.ab import (
    DEFAULT_EXPERIMENT,
    ExperimentStore,
    Prediction,
    RecordedForecast,
    Role,
    arm_label,
)
from forecast_gateway.core.calibration import Calibration
from forecast_gateway.core.catalog import ModelSpec
from forecast_gateway.core.execute import Executor, group
from forecast_gateway.core.plan import Policies, arm_query, arm_version
from forecast_gateway.core.results import ForecastResult, Plan
from forecast_gateway.core.routing import Decision, Route
from forecast_gateway.core.validation import resolve_shape
from forecast_gateway.errors import GatewayError, InvalidArgument
from forecast_gateway.numerics import NO_LEVELS, FloatArray

log = structlog.get_logger(__name__)

MAX_SHADOWS_IN_FLIGHT = 256
"""Shadow forecasts in flight at most; beyond it new shadows are dropped (and counted),
so a slow shadow version can never pile up work in the gateway."""

Served = Sequence[tuple[Plan, ForecastResult]]
"""Served forecasts with the plans they were served for."""


class Recorder:
    """Records served forecasts and runs their shadows."""

    def __init__(
        self,
        store: ExperimentStore | None,
        routing: Policies,
        calibration: Calibration | None,
        executor: Executor,
        shadow_timeout_s: float,
    ) -> None:
        self.store = store
        self.routing = routing
        self.calibration = calibration
        self.executor = executor
        self.shadow_timeout_s = shadow_timeout_s
        self._shadows: set[asyncio.Task[None]] = set()

    def record_later(self, spec: ModelSpec, served: Served) -> None:
        """`record` on the next loop turn: after the response has been handed to gRPC."""
        if served:
            asyncio.get_running_loop().call_soon(self.record, spec, served)

    def record(self, spec: ModelSpec, served: Served) -> None:
        """Record served forecasts for A/B scoring and start their shadow forecasts."""
        now = time.time()
        experiment = DEFAULT_EXPERIMENT
        if self.store is not None:
            experiment = self.routing.experiment(spec.name)
            for plan, result in served:
                # A fallback's forecast belongs to its own model's experiment; a split
                # arm of another model to the request model's, under its label.
                fallback = result.decision is Decision.FALLBACK
                model = result.model if fallback else spec.name
                self.store.record(
                    RecordedForecast(
                        forecast_id=result.forecast_id,
                        model=model,
                        horizon=result.horizon,
                        naive_scale=result.scale,
                        created_at=now,
                        served=Prediction(
                            arm_label(result.model, result.version, model),
                            Role.SERVED,
                            tuple(result.values),
                            result.latency_ms,
                            self._tracked(result),
                            native=result.tracked is not None,
                        ),
                        experiment=self.routing.experiment(model),
                        comparable=drawn_by_the_split(result),
                        unit=randomised_unit(plan, result),
                        first_step_ns=first_step(result),
                        frequency=result.frequency if first_step(result) is not None else "",
                    )
                )
        by_version: dict[str, list[tuple[Plan, ForecastResult]]] = {}
        for plan, result in served:
            if result.decision is Decision.FALLBACK:
                continue
            served_label = arm_label(result.model, result.version, spec.name)
            for version in plan.route.shadows:
                if version != served_label:  # re-routed to its shadow: not shadowed by itself
                    by_version.setdefault(version, []).append((plan, result))
        for version, pairs in by_version.items():
            if len(self._shadows) >= MAX_SHADOWS_IN_FLIGHT:
                metrics.SHADOWS.labels(spec.name, version, "dropped").inc(len(pairs))
                continue
            task = asyncio.create_task(self._shadow(spec, version, pairs, experiment))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

    async def drain(self) -> None:
        """Wait for shadow forecasts still running (graceful shutdown)."""
        await asyncio.sleep(0)  # records scheduled by the last responses
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

    async def _shadow(self, spec: ModelSpec, version: str, pairs: Served, experiment: str) -> None:
        """Forecast the same series with a shadow arm; record, never return, never raise.

        `version`: an arm label, of `spec`'s model or of another model (run on
        that model's spec and contract, at the served forecast's horizon).
        """
        arm = arm_version(spec, version, self.executor.catalog.specs)
        if arm is None or not arm[1].ready:
            metrics.SHADOWS.labels(spec.name, version, "skipped").inc(len(pairs))
            return
        owner, version_spec = arm
        plans: list[tuple[Plan, ForecastResult]] = []
        for plan, result in pairs:
            query = plan.query
            if owner.name != spec.name:
                query = replace(arm_query(query, spec, owner), horizon=result.horizon)
            try:
                shape = resolve_shape(query, owner, version_spec)
            except InvalidArgument:
                metrics.SHADOWS.labels(spec.name, version, "skipped").inc()
                continue
            # A shadow's forecast is never returned: no intervals to compute for it.
            query = replace(query, levels=NO_LEVELS) if query.levels else query
            route = Route(version_spec.version, Decision.PINNED)
            plans.append((Plan(plan.index, query, route, shape), result))
        served = {p.index: r for p, r in plans}
        for members in group([p for p, _ in plans]):
            try:
                outcomes = await self.executor.run_group(
                    owner, members, time.monotonic() + self.shadow_timeout_s
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
                            native=outcome.tracked is not None,
                        ),
                        experiment,
                    )

    def _tracked(self, result: ForecastResult) -> FloatArray | None:
        """The bounds at the tracked levels to record with a forecast, for GetExperiment."""
        if result.tracked is not None:
            return result.tracked
        if self.calibration is None:
            return None
        return self.calibration.tracked(result.model, result.version, result.horizon)


def first_step(result: ForecastResult) -> int | None:
    """The time of a forecast's first step (ns since the epoch, UTC); None without time."""
    times = result.timestamps
    return int(times[0]) if times is not None and len(times) and result.frequency else None


def randomised_unit(plan: Plan, result: ForecastResult) -> str:
    """The routing key of a sticky draw: the unit its split randomised; "" for any other."""
    sticky = result.decision is Decision.STICKY and drawn_by_the_split(result)
    return plan.query.routing_key if sticky else ""


def drawn_by_the_split(result: ForecastResult) -> bool:
    """Whether the split drew the version at random among all its versions (see ab.aggregates)."""
    return result.decision in (Decision.WEIGHTED, Decision.STICKY) and not result.restricted
