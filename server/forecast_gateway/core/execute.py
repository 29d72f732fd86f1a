"""The execute stage: group plans, normalize, infer, re-route, fall back.

Series that go to the same version with the same window and horizon are
normalized together and sent to the backend as one tensor (chunked to the
model's max_batch_size, coalesced with concurrent calls). A group whose
version the backend no longer serves is routed again (once, unpinned series
only), and a series that still failed goes to its route's fallback. Every
series ends with its own outcome: a result or its own error; a group that
fails unexpectedly gives each of its series INTERNAL, and no other group
is touched.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import structlog

from forecast_gateway import metrics
from forecast_gateway.ab import TRACKED, new_forecast_id
from forecast_gateway.backends.base import DEFAULT_SIGNATURE, VERSION_GONE
from forecast_gateway.backends.coalescing import Coalescer
from forecast_gateway.core.calibration import Calibration, Uncertainty
from forecast_gateway.core.catalog import ModelCatalog, ModelSpec
from forecast_gateway.core.contract import Contract, Normalization, season_length
from forecast_gateway.core.native import native_uncertainty, tracked_table
from forecast_gateway.core.normalization import denormalize, normalize
from forecast_gateway.core.plan import Planner
from forecast_gateway.core.results import CallNotes, ForecastResult, Outcome, Plan, VersionOutcome
from forecast_gateway.core.routing import Decision
from forecast_gateway.core.validation import ForecastQuery, resolve_shape
from forecast_gateway.core.windows import forecast_times, split_output, window_values
from forecast_gateway.errors import GatewayError, Internal, InvalidArgument, Unavailable
from forecast_gateway.numerics import FloatArray, Levels, naive_scales

log = structlog.get_logger(__name__)

FALLBACK_RESERVE = 0.25
"""Share of the time left that a group whose routes have a fallback keeps for it: the
chosen version gets the first 75%, so a version that misses that deadline can still
be answered by the fallback within the caller's."""


class Executor:
    """Runs plans on the backend through the coalescer."""

    def __init__(
        self,
        catalog: ModelCatalog,
        planner: Planner,
        coalescer: Coalescer,
        calibration: Calibration | None,
    ) -> None:
        self.catalog = catalog
        self.planner = planner
        self.coalescer = coalescer
        self.calibration = calibration

    async def run(
        self,
        spec: ModelSpec,
        plans: Sequence[Plan],
        deadline: float,
        notes: CallNotes | None = None,
    ) -> list[Outcome]:
        """The outcome of every plan, in `plans` order.

        `notes` (one caller's forecast) learns of a re-route or a fallback.
        """
        if not plans:
            return []
        groups = [list(plans)] if len(plans) == 1 else group(plans)
        outcomes: dict[int, Outcome] = {}
        if len(groups) == 1:  # every unary call: no gather, no extra task
            try:
                outcomes.update(await self._resilient(spec, groups[0], deadline, notes))
            except Exception as error:
                outcomes.update(failed(groups[0], error))
        else:
            finished = await asyncio.gather(
                *(self._resilient(spec, members, deadline, notes) for members in groups),
                return_exceptions=True,
            )
            for members, group_outcome in zip(groups, finished, strict=True):
                if isinstance(group_outcome, BaseException):
                    outcomes.update(failed(members, group_outcome))
                else:
                    outcomes.update(group_outcome)
        return [outcomes[p.index] for p in plans]

    async def _resilient(
        self, spec: ModelSpec, plans: list[Plan], deadline: float, notes: CallNotes | None
    ) -> dict[int, Outcome]:
        """One group's outcomes by series index, routed again or answered by the fallback.

        Between the backend unloading a version and the next catalog refresh,
        the router may still pick it; `run_group` takes it out of the catalog
        on the backend's answer, and unpinned series go to another ready
        version (once) instead of failing. Pinned series keep their error.
        """
        has_fallback = any(p.route.fallback is not None for p in plans)
        outcomes = await self._attempt(
            spec, plans, primary_deadline(deadline) if has_fallback else deadline
        )
        if not any(isinstance(o, GatewayError) for o in outcomes.values()):
            return outcomes
        gone = [
            p
            for p in plans
            if version_gone(outcomes[p.index]) and p.route.decision is not Decision.PINNED
        ]
        if gone:
            outcomes.update(await self._reroute(spec.name, gone, deadline, notes))
        failing = [
            p
            for p in plans
            if isinstance(outcomes[p.index], GatewayError)
            and not isinstance(outcomes[p.index], InvalidArgument)
            and p.route.fallback is not None
        ]
        if failing and time.monotonic() < deadline:  # a fallback with no time left never runs
            outcomes.update(await self._fallback(failing, outcomes, deadline, notes))
        return outcomes

    async def _attempt(
        self, spec: ModelSpec, plans: Sequence[Plan], deadline: float
    ) -> dict[int, Outcome]:
        """`run_group` on the serving model (`spec`, or a split arm's), errors given to each."""
        model = plans[0].route.model
        try:
            serving = spec if not model or model == spec.name else self.catalog.get(model)
            results = await self.run_group(serving, plans, deadline)
        except GatewayError as error:
            return {p.index: error for p in plans}
        return {p.index: r for p, r in zip(plans, results, strict=True)}

    async def _reroute(
        self, model: str, plans: Sequence[Plan], deadline: float, notes: CallNotes | None
    ) -> dict[int, Outcome]:
        """Route series again among the versions still ready; keep the error of any that can't."""
        spec = self.catalog.get(model)
        outcomes: dict[int, Outcome] = {}
        replanned: list[Plan] = []
        for plan in plans:
            try:
                replanned.append(self.planner.plan(spec, plan.index, plan.query))
            except GatewayError:  # e.g. the history is too short for the other versions
                continue
        if notes is not None and replanned:
            route = replanned[0].route
            notes.route(spec.name, route.label, route.decision, route.restricted)
        for members in group(replanned):
            outcomes.update(await self._attempt(spec, members, deadline))
        return outcomes

    async def _fallback(
        self,
        plans: Sequence[Plan],
        errors: dict[int, Outcome],
        deadline: float,
        notes: CallNotes | None,
    ) -> dict[int, Outcome]:
        """Answer failed series from their route's fallback model/version."""
        outcomes: dict[int, Outcome] = {}
        by_model: dict[str, list[tuple[Plan, Plan]]] = {}
        for plan in plans:
            error = errors[plan.index]
            assert plan.route.fallback is not None and isinstance(error, GatewayError)
            log.warning(
                "fallback",
                failed_version=plan.route.label,
                reason=error.reason,
                to=plan.route.fallback.model,
            )
            metrics.FALLBACKS.labels(plan.query.model, plan.route.label, error.reason).inc()
            fallback = self.planner.fallback(plan)
            if fallback is not None:  # else the series keeps its error
                by_model.setdefault(plan.route.fallback.model, []).append((plan, fallback))
        for model, pairs in by_model.items():
            primaries = {f.index: p for p, f in pairs}
            spec = self.catalog.get(model)
            for members in group([f for _, f in pairs]):
                attempt = await self._attempt(spec, members, deadline)
                for index, outcome in attempt.items():
                    if isinstance(outcome, ForecastResult):
                        outcome = replace(
                            outcome,
                            decision=Decision.FALLBACK,
                            primary_version=primaries[index].route.label,
                        )
                    outcomes[index] = outcome
                if notes is not None:
                    notes.fallback(spec.name, members[0].route.version)
        return outcomes

    async def run_group(
        self, spec: ModelSpec, plans: Sequence[Plan], deadline: float
    ) -> list[Outcome]:
        """One backend pass (chunked) for series sharing version, window and horizon."""
        first = plans[0]
        contract = spec.versions[first.route.version].contract
        cut = [window_values(p.query, first.shape.window, contract) for p in plans]
        # One row (every unary call) as a view: np.stack's Python costs ~1.5 us.
        windows = cut[0][0][np.newaxis, :] if len(cut) == 1 else np.stack([v for v, _ in cut])
        started = time.perf_counter()
        try:
            values = await self.infer(
                spec,
                first.route.version,
                windows,
                first.shape.horizon,
                deadline,
                season_length(contract, first.query.frequency),
            )
        except Unavailable as error:
            if error.reason == VERSION_GONE:  # the backend answered: out of routing until refreshed
                self.catalog.mark_unavailable(spec.name, first.route.version)
            raise
        latency_ms = ms_since(started)
        scales = naive_scales(windows)
        results: list[Outcome] = []
        for plan, output, scale, (_, filled) in zip(plans, values, scales, cut, strict=True):
            if not np.isfinite(output).all():
                results.append(
                    Internal(
                        "the model produced a non-finite forecast",
                        reason="MODEL_OUTPUT_INVALID",
                        metadata={"model": spec.name, "version": plan.route.version},
                    )
                )
                continue
            row, native = split_output(output)
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
                    uncertainty=self.uncertainty(
                        spec.name,
                        plan.route.version,
                        plan.query.levels,
                        row,
                        scale,
                        first.shape.window,
                        contract,
                        native,
                        plan.query.frequency,
                    ),
                    timestamps=forecast_times(plan.query, plan.shape.horizon),
                    frequency=plan.query.frequency,
                    filled=filled,
                    tracked=None
                    if native is None or contract is None
                    else tracked_table(contract.quantile_levels, native, row, scale, TRACKED),
                )
            )
        return results

    def uncertainty(
        self,
        model: str,
        version: str,
        levels: Levels,
        values: FloatArray,
        scale: float,
        window: int,
        contract: Contract | None = None,
        native: FloatArray | None = None,
        frequency: str = "",
    ) -> Uncertainty | None:
        """The intervals and quantiles asked for (None: none were).

        A quantile model's come from its own outputs, CQR at the tracked
        coverages once its pools allow (`core.native`); a point model's from
        its calibration pool (split conformal).
        """
        if not levels:
            return None
        if native is not None and contract is not None:
            offsets = (
                None
                if self.calibration is None
                else self.calibration.cqr(model, version, values.shape[0])
            )
            return native_uncertainty(contract.quantile_levels, native, levels, scale, offsets)
        if self.calibration is None:
            return None
        return self.calibration.uncertainty(
            model, version, values, scale, levels, window, frequency
        )

    async def infer(
        self,
        spec: ModelSpec,
        version: str,
        windows: FloatArray,
        horizon: int,
        deadline: float,
        season: int = 1,
    ) -> FloatArray:
        """Scale rows as the version declares, run them (coalesced, chunked), scale back.

        Answers [rows, horizon], or [rows, horizon, 1 + levels] for a
        quantile model (`Signature`'s layout). The coalescer refuses a call
        whose deadline has already passed.
        """
        contract = spec.versions[version].contract
        signature = DEFAULT_SIGNATURE if contract is None else contract.signature
        steps = signature.steps(horizon)
        scaling = None
        if contract is None or contract.normalization is Normalization.ZSCORE:
            rows, scaling = normalize(windows)
        else:
            rows = windows.astype(np.float32)
        size = spec.max_batch_size
        if rows.shape[0] <= size:  # one chunk (every unary call): no gather, no extra task
            output = await self.coalescer.forecast(
                spec.name, version, rows, steps, deadline, size, signature, season
            )
        else:
            output = np.concatenate(
                await asyncio.gather(
                    *(
                        self.coalescer.forecast(
                            spec.name,
                            version,
                            rows[start : start + size],
                            steps,
                            deadline,
                            size,
                            signature,
                            season,
                        )
                        for start in range(0, rows.shape[0], size)
                    )
                )
            )
        if steps != horizon:
            output = output[:, :horizon]
        if scaling is None:
            return output.astype(np.float64)
        return denormalize(output, scaling)

    async def compare_one(
        self, spec: ModelSpec, query: ForecastQuery, version: str, deadline: float
    ) -> VersionOutcome:
        """One version's forecast of `query` in a comparison (its error kept, never raised)."""
        started = time.perf_counter()
        window = 0
        try:
            shape = resolve_shape(query, spec, spec.versions[version])
            window = shape.window
            contract = spec.versions[version].contract
            cut, filled = window_values(query, shape.window, contract)
            rows = cut[np.newaxis, :]
            season = season_length(contract, query.frequency)
            output = (await self.infer(spec, version, rows, shape.horizon, deadline, season))[0]
            if not np.isfinite(output).all():
                raise Internal("the model produced a non-finite forecast")
        except GatewayError as error:
            return VersionOutcome(version, window, ms_since(started), error=error)
        latency_ms = ms_since(started)
        values, native = split_output(output)
        uncertainty = self.uncertainty(
            spec.name,
            version,
            query.levels,
            values,
            naive_scales(rows)[0],
            window,
            contract,
            native,
            query.frequency,
        )
        return VersionOutcome(
            version,
            window,
            latency_ms,
            values=values,
            uncertainty=uncertainty,
            timestamps=forecast_times(query, shape.horizon),
            frequency=query.frequency,
            filled=filled,
        )


def group(plans: Sequence[Plan]) -> list[list[Plan]]:
    """Series that can share one tensor: same model, version, window, horizon and frequency.

    The frequency sets a seasonal model's season input; the model is a split
    arm's of another model ("" = the request's).
    """

    def key(plan: Plan) -> tuple[str, str, int, int, str]:
        route, shape = plan.route, plan.shape
        return route.model, route.version, shape.window, shape.horizon, plan.query.frequency

    return [list(members) for _, members in itertools.groupby(sorted(plans, key=key), key=key)]


def failed(plans: Sequence[Plan], error: BaseException) -> dict[int, Outcome]:
    """Every series of a group that failed unexpectedly gets the same INTERNAL error."""
    log.error("batch_group_failed", error=repr(error), exc_info=error)
    return {p.index: Internal("the forecast failed") for p in plans}


def version_gone(outcome: Outcome) -> bool:
    """The backend answered that the version is not loaded (see triton.convert_error)."""
    return isinstance(outcome, Unavailable) and outcome.reason == VERSION_GONE


def primary_deadline(deadline: float) -> float:
    """The deadline of a chosen version whose route has a fallback (see FALLBACK_RESERVE)."""
    now = time.monotonic()
    return now + max(0.0, deadline - now) * (1.0 - FALLBACK_RESERVE)


def ms_since(started: float) -> float:
    """Milliseconds since the perf_counter() value `started`."""
    return (time.perf_counter() - started) * 1000.0
