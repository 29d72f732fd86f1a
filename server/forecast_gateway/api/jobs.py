"""The jobs long-running operations run: a backtest and a bulk forecast, bytes in and out.

Each job gets its request's bytes as StartX stored them and returns the
bytes of the response the synchronous RPC would return; a job that raises
ends its operation with the error's google.rpc.Status (details included).
"""

from __future__ import annotations

import time

from forecast.v1 import forecast_service_pb2
from forecast_gateway.api.batch import batch_queries_from, batch_response_from
from forecast_gateway.api.convert_backtest import backtest_from, backtest_query_from
from forecast_gateway.api.status import status_message
from forecast_gateway.backtest.runner import Backtester
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.core.results import Outcome
from forecast_gateway.errors import DeadlineExceeded, GatewayError, Internal
from forecast_gateway.operations import Job, Progress

BACKTEST = "backtest"
FORECAST_BATCH = "forecast_batch"


def backtest_job(backtester: Backtester, timeout_s: float) -> Job:
    """The job of a StartBacktest operation: the same backtest, its response's bytes."""

    async def run(request: bytes, progress: Progress) -> bytes:
        message = forecast_service_pb2.BacktestRequest.FromString(request)
        report = await backtester.run(
            backtest_query_from(message), time.monotonic() + timeout_s, progress
        )
        return backtest_from(report, message.per_window).SerializeToString()

    return run


def forecast_batch_job(forecaster: Forecaster, chunk: int, timeout_s: float) -> Job:
    """The job of a StartForecastBatch operation: the batch in chunks, progress after each.

    Every series is routed, forecast and recorded as by ForecastBatch. A run
    resumed after its replica died forecasts every series again: the first
    run's recorded forecasts stay in the store (their ids were never returned).
    """

    async def run(request: bytes, progress: Progress) -> bytes:
        message = forecast_service_pb2.ForecastBatchRequest.FromString(request)
        deadline = time.monotonic() + timeout_s
        queries = batch_queries_from(message)
        outcomes: list[Outcome] = []
        for first in range(0, len(queries), chunk):
            part = queries[first : first + chunk]
            outcomes += await forecaster.forecast_batch(message.model, part, deadline)
            progress(len(part))
        response, _ = batch_response_from(
            [s.id for s in message.series], outcomes, "StartForecastBatch"
        )
        return response.SerializeToString()

    return run


def error_of(error: BaseException) -> tuple[int, str, bytes | None]:
    """How a failed job ends its operation: its code, message and full google.rpc.Status."""
    if isinstance(error, TimeoutError):
        error = DeadlineExceeded(
            "the operation ran past operation_timeout_s", reason="OPERATION_TIMEOUT"
        )
    if not isinstance(error, GatewayError):
        error = Internal("the operation failed; see the gateway's log")
    return int(error.code), error.message, status_message(error).SerializeToString()
