"""The forecasting core's facade: forecast, forecast_batch, compare -> plan, execute, record.

Everything between the servicer's proto conversion and the inference
backend, for single series, batches and version comparisons. One path
serves them all: a single forecast is a batch of one. Each request goes
through the stages in order, handing on plain data (`results`):

- `plan`: validate each series, pick its version, fix its window and horizon;
- `execute`: group, normalize, infer, re-route, fall back;
- `record`: A/B recording and shadows, after the response (the next loop turn).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from forecast_gateway.ab import ExperimentStore
from forecast_gateway.backends.base import InferenceBackend
from forecast_gateway.backends.coalescing import Coalescer
from forecast_gateway.core.calibration import Calibration
from forecast_gateway.core.catalog import ModelCatalog
from forecast_gateway.core.execute import Executor
from forecast_gateway.core.plan import Planner, Policies
from forecast_gateway.core.record import Recorder
from forecast_gateway.core.results import (
    CallNotes,
    ForecastResult,
    Outcome,
    Plan,
    VersionOutcome,
)
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.errors import GatewayError, Internal, NotFound

__all__ = ["CallNotes", "ForecastResult", "Forecaster", "VersionOutcome"]


class Forecaster:
    """Runs forecast queries against the catalog's models through the backend."""

    def __init__(
        self,
        catalog: ModelCatalog,
        backend: InferenceBackend,
        routing: Policies,
        store: ExperimentStore | None,
        max_history_length: int,
        shadow_timeout_s: float,
        calibration: Calibration | None = None,
    ) -> None:
        self.catalog = catalog
        self.routing = routing
        self.calibration = calibration
        self.coalescer = Coalescer(backend)
        self.planner = Planner(catalog, routing, max_history_length)
        self.executor = Executor(catalog, self.planner, self.coalescer, calibration)
        self.recorder = Recorder(store, routing, calibration, self.executor, shadow_timeout_s)

    async def forecast(
        self, query: ForecastQuery, deadline: float, notes: CallNotes | None = None
    ) -> ForecastResult:
        """Forecast one series; raises a GatewayError subclass on any failure.

        `deadline` is a time.monotonic() value: the caller's deadline.
        `notes`, when given, learns the model, version and routing decision.
        """
        spec, plan = self.planner.plan_query(0, query)
        if notes is not None:
            route = plan.route
            notes.route(spec.name, route.label, route.decision, route.restricted)
        (outcome,) = await self.executor.run(spec, [plan], deadline, notes)
        if isinstance(outcome, GatewayError):
            raise outcome
        if notes is not None:
            notes.fields["filled_points"] = outcome.filled
        self.recorder.record_later(spec, [(plan, outcome)])
        return outcome

    async def forecast_batch(
        self, model: str, queries: Sequence[ForecastQuery | GatewayError], deadline: float
    ) -> list[Outcome]:
        """Forecast many series of one model; each series gets a result or its own error.

        A series the edge could not even convert comes as its error, answered as it is.
        """
        spec = self.catalog.get(model)
        outcomes: list[Outcome] = [_UNPROCESSED] * len(queries)
        plans: list[Plan] = []
        for index, query in enumerate(queries):
            if isinstance(query, GatewayError):
                outcomes[index] = query
                continue
            try:
                plans.append(self.planner.plan_query(index, query)[1])
            except GatewayError as error:
                outcomes[index] = error
        served: list[tuple[Plan, ForecastResult]] = []
        for plan, outcome in zip(
            plans, await self.executor.run(spec, plans, deadline), strict=True
        ):
            outcomes[plan.index] = outcome
            if isinstance(outcome, ForecastResult):
                served.append((plan, outcome))
        self.recorder.record_later(spec, served)
        return outcomes

    async def compare(
        self, query: ForecastQuery, versions: Sequence[str], deadline: float
    ) -> list[VersionOutcome]:
        """Run one series on several versions concurrently (nothing is recorded)."""
        query = self.planner.check(query)
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
            await asyncio.gather(
                *(self.executor.compare_one(spec, query, v, deadline) for v in chosen)
            )
        )

    async def drain_shadows(self) -> None:
        """Wait for the records of the last responses and the shadows still running."""
        await self.recorder.drain()


_UNPROCESSED = Internal("series was not processed")
