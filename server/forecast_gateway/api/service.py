"""The ForecastService servicer: proto in, core call, proto out. No logic of its own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from google.longrunning import operations_pb2

from forecast.v1 import forecast_service_pb2, forecast_service_pb2_grpc
from forecast_gateway import metrics
from forecast_gateway.ab import ExperimentInfo, ExperimentStore, interval_flags
from forecast_gateway.api import calls
from forecast_gateway.api.batch import (
    batch_queries_from,
    batch_response_from,
    check_batch,
    count_series,
)
from forecast_gateway.api.convert import (
    actuals_from,
    actuals_start,
    compare_query_from,
    comparison_from,
    error_from,
    experiment_from,
    experiments_from,
    model_to_proto,
    query_from,
    response_from,
)
from forecast_gateway.api.convert_backtest import backtest_from, backtest_query_from
from forecast_gateway.api.jobs import BACKTEST, FORECAST_BATCH
from forecast_gateway.api.operations import OperationsServicer, operation_message
from forecast_gateway.backtest.runner import Backtester
from forecast_gateway.core.catalog import ModelCatalog
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.errors import (
    FieldViolation,
    GatewayError,
    InvalidArgument,
    NotFound,
    Unavailable,
    shown,
)
from forecast_gateway.names import EXPERIMENT_NAME_RULE, is_experiment_name

if TYPE_CHECKING:  # grpc's classes are generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]

log = structlog.get_logger(__name__)


class ForecastServicer(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Implements forecast.v1.ForecastService on top of the Forecaster core."""

    def __init__(
        self,
        forecaster: Forecaster,
        catalog: ModelCatalog,
        store: ExperimentStore,
        default_timeout_s: float,
        max_batch_series: int,
        max_operation_series: int,
        stream_max_pending: int,
        backtester: Backtester,
        backtest_timeout_s: float,
        operations: OperationsServicer | None = None,
    ) -> None:
        self.forecaster = forecaster
        self.backtester = backtester
        self.backtest_timeout_s = backtest_timeout_s
        self.operations = operations
        self.catalog = catalog
        self.store = store
        self.default_timeout_s = default_timeout_s
        self.max_batch_series = max_batch_series
        self.max_operation_series = max_operation_series
        self.stream_max_pending = stream_max_pending

    async def Forecast(
        self, request: forecast_service_pb2.ForecastRequest, context: Context
    ) -> forecast_service_pb2.ForecastResponse:
        """Forecast one series."""
        result = await self.forecaster.forecast(
            query_from(request), self._deadline(context), calls.current()
        )
        return response_from(result)

    async def ForecastBatch(
        self, request: forecast_service_pb2.ForecastBatchRequest, context: Context
    ) -> forecast_service_pb2.ForecastBatchResponse:
        """Forecast many series; per-series results and errors."""
        check_batch(request, self.max_batch_series)
        notes = calls.current()
        notes.fields["series"] = len(request.series)
        self.catalog.get(request.model)  # NOT_FOUND first: only served names become metric labels
        notes.model = request.model
        outcomes = await self.forecaster.forecast_batch(
            request.model, batch_queries_from(request), self._deadline(context)
        )
        response, filled = batch_response_from(
            [s.id for s in request.series], outcomes, "ForecastBatch"
        )
        notes.fields["filled_points"] = filled
        return response

    async def StreamForecast(
        self,
        request_iterator: AsyncIterator[forecast_service_pb2.StreamForecastRequest],
        context: Context,
    ) -> AsyncIterator[forecast_service_pb2.StreamForecastResponse]:
        """Answer each streamed request as soon as it is done, with bounded buffering.

        A slot is taken before a request is read and freed once its answer has
        been handed to gRPC (which applies HTTP/2 flow control): at most
        `stream_max_pending` requests are in flight or waiting to be written.
        """
        slots = asyncio.Semaphore(self.stream_max_pending)
        answers: asyncio.Queue[forecast_service_pb2.StreamForecastResponse | None] = asyncio.Queue()
        in_flight: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()

        async def answer(request_id: str, request: forecast_service_pb2.ForecastRequest) -> None:
            try:
                result = await self.forecaster.forecast(
                    query_from(request), self._deadline(context)
                )
                count_series("StreamForecast", result)
                await answers.put(
                    forecast_service_pb2.StreamForecastResponse(
                        request_id=request_id, forecast=response_from(result)
                    )
                )
            except GatewayError as error:
                await answers.put(
                    forecast_service_pb2.StreamForecastResponse(
                        request_id=request_id, error=error_from(error)
                    )
                )

        async def read() -> None:
            iterator = aiter(request_iterator)
            try:
                while True:
                    await slots.acquire()  # no slot, no read: the caller's sends back up
                    item = await anext(iterator, None)
                    if item is None:
                        slots.release()
                        break
                    if not item.request_id or item.request_id in in_flight:
                        problem = "is empty" if not item.request_id else "repeats one in flight"
                        raise InvalidArgument.of(
                            [
                                FieldViolation(
                                    "request_id", f"request_id {problem}: {item.request_id!r}"
                                )
                            ]
                        )
                    in_flight.add(item.request_id)
                    task = asyncio.create_task(answer(item.request_id, item.request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*tasks)
            finally:
                await answers.put(None)

        reader = asyncio.create_task(read())
        try:
            while (response := await answers.get()) is not None:
                yield response
                in_flight.discard(response.request_id)
                slots.release()
            await reader  # re-raises a protocol error (e.g. duplicate id) to end the stream
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, GatewayError):
                await reader

    async def CompareVersions(
        self, request: forecast_service_pb2.CompareVersionsRequest, context: Context
    ) -> forecast_service_pb2.CompareVersionsResponse:
        """Run one request on several versions and compare their forecasts."""
        query = compare_query_from(request)
        outcomes = await self.forecaster.compare(
            query, list(request.versions), self._deadline(context)
        )
        return comparison_from(request.model, outcomes)

    async def ReportActuals(
        self, request: forecast_service_pb2.ReportActualsRequest, context: Context
    ) -> forecast_service_pb2.ReportActualsResponse:
        """Score an earlier forecast against observed values."""
        report = await self.store.report_actuals(
            request.forecast_id, list(request.actuals), request.offset, actuals_start(request)
        )
        calls.current().model = report.model
        metrics.ACTUALS.labels(report.model).inc()
        for score in report.scores:
            if math.isfinite(score.mase):
                metrics.FORECAST_ERROR.labels(
                    report.model, score.version, score.role.value
                ).observe(score.mase)
        return actuals_from(report)

    async def GetExperiment(
        self, request: forecast_service_pb2.GetExperimentRequest, context: Context
    ) -> forecast_service_pb2.GetExperimentResponse:
        """One experiment's per-version traffic, accuracy, latency, tests and verdict."""
        if not request.model:
            raise InvalidArgument.of([FieldViolation("model", "model is required")])
        self.catalog.get(request.model)
        current = self.forecaster.routing.experiment(request.model)
        name = request.experiment or current
        notes = calls.current()
        notes.model = request.model
        notes.fields["experiment"] = name
        if name != current:
            await self._check_experiment(request.model, name)
        report = await self.store.experiment(request.model, name)
        if name == current:  # the gauge describes the current experiment
            metrics.observe_intervals(request.model, name, interval_flags(report))
        return experiment_from(report)

    async def ListExperiments(
        self, request: forecast_service_pb2.ListExperimentsRequest, context: Context
    ) -> forecast_service_pb2.ListExperimentsResponse:
        """The experiments of a model (or of every served model), newest first."""
        if request.model:
            self.catalog.get(request.model)
        models = [request.model] if request.model else self.catalog.served()
        current = {model: self.forecaster.routing.experiment(model) for model in models}
        infos = [i for i in await self.store.experiments(request.model) if i.model in current]
        listed = {(i.model, i.experiment) for i in infos}
        waiting = [  # a current experiment before its first forecast
            ExperimentInfo(model, name, None, 0)
            for model, name in current.items()
            if (model, name) not in listed
        ]
        ordered = sorted(waiting + infos, key=lambda i: i.model)  # stable: newest first within
        return experiments_from(ordered, current)

    async def _check_experiment(self, model: str, name: str) -> None:
        """INVALID_ARGUMENT for a malformed name, NOT_FOUND for one the store does not hold."""
        if not is_experiment_name(name):
            raise InvalidArgument.of([FieldViolation("experiment", EXPERIMENT_NAME_RULE)])
        if all(i.experiment != name for i in await self.store.experiments(model)):
            raise NotFound(
                f"model {model!r} has no experiment {shown(name)}; ListExperiments lists them",
                reason="EXPERIMENT_NOT_FOUND",
                metadata={"model": model, "experiment": name},
            )

    async def ListModels(
        self, request: forecast_service_pb2.ListModelsRequest, context: Context
    ) -> forecast_service_pb2.ListModelsResponse:
        """List the served models Triton has reported."""
        specs = [self.catalog.specs[m] for m in self.catalog.served() if m in self.catalog.specs]
        return forecast_service_pb2.ListModelsResponse(
            models=[model_to_proto(s) for s in sorted(specs, key=lambda s: s.name)]
        )

    async def GetModel(
        self, request: forecast_service_pb2.GetModelRequest, context: Context
    ) -> forecast_service_pb2.GetModelResponse:
        """Describe one served model."""
        if not request.name:
            raise InvalidArgument.of([FieldViolation("name", "name is required (see ListModels)")])
        return forecast_service_pb2.GetModelResponse(
            model=model_to_proto(self.catalog.get(request.name))
        )

    async def Backtest(
        self, request: forecast_service_pb2.BacktestRequest, context: Context
    ) -> forecast_service_pb2.BacktestResponse:
        """Score versions on rolling-origin windows of the caller's history; nothing recorded."""
        notes = calls.current()
        notes.fields["series"] = len(request.series)
        notes.fields["windows"] = len(request.series) * max(0, request.n_windows)
        if request.model:
            self.catalog.get(request.model)  # NOT_FOUND first: only served names become labels
            notes.model = request.model
        query = backtest_query_from(request)
        remaining = context.time_remaining()
        timeout = (
            self.backtest_timeout_s
            if remaining is None
            else min(float(remaining), self.backtest_timeout_s)
        )
        report = await self.backtester.run(query, time.monotonic() + timeout)
        notes.fields["targets"] = len(report.results)
        return backtest_from(report, request.per_window)

    async def StartBacktest(
        self, request: forecast_service_pb2.BacktestRequest, context: Context
    ) -> operations_pb2.Operation:
        """The same backtest as a long-running operation, returned at once (checked first)."""
        operations = self._operations()
        notes = calls.current()
        notes.fields["series"] = len(request.series)
        if request.model:
            self.catalog.get(request.model)
            notes.model = request.model
        units = self.backtester.check(backtest_query_from(request))
        operation = await operations.start(BACKTEST, request.SerializeToString(), units, context)
        notes.fields["operation"] = operation.name
        return operation_message(operation)

    async def StartForecastBatch(
        self, request: forecast_service_pb2.ForecastBatchRequest, context: Context
    ) -> operations_pb2.Operation:
        """The same batch as a long-running operation, returned at once (checked first)."""
        operations = self._operations()
        check_batch(request, self.max_operation_series)
        notes = calls.current()
        notes.fields["series"] = len(request.series)
        self.catalog.get(request.model)
        notes.model = request.model
        operation = await operations.start(
            FORECAST_BATCH, request.SerializeToString(), len(request.series), context
        )
        notes.fields["operation"] = operation.name
        return operation_message(operation)

    def _operations(self) -> OperationsServicer:
        if self.operations is None:
            raise Unavailable("long-running operations are not served here", reason="NO_OPERATIONS")
        return self.operations

    def _deadline(self, context: Context) -> float:
        """time.monotonic() deadline: the caller's, capped by the default timeout."""
        remaining = context.time_remaining()
        timeout = (
            self.default_timeout_s
            if remaining is None
            else min(float(remaining), self.default_timeout_s)
        )
        return time.monotonic() + timeout
