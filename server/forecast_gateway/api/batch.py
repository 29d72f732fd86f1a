"""ForecastBatch in both its forms, one call and an operation: checks, queries, response.

A series whose own fields cannot even be converted (an unknown FillMethod
number) gets its error in its result like any other invalid series; it does
not fail the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from forecast.v1 import forecast_service_pb2
from forecast_gateway import metrics
from forecast_gateway.api.convert import error_from, fill_of, forecast_from, levels_of, time_of
from forecast_gateway.core.forecaster import ForecastResult
from forecast_gateway.core.results import Outcome
from forecast_gateway.core.validation import ForecastQuery, batch_violations
from forecast_gateway.errors import FieldViolation, GatewayError, InvalidArgument

Request = forecast_service_pb2.ForecastBatchRequest


def check_batch(request: Request, max_series: int) -> None:
    """INVALID_ARGUMENT for a batch that is wrong as a whole (model, size, ids)."""
    violations = batch_violations([s.id for s in request.series], max_series)
    if not request.model:
        violations.insert(0, FieldViolation("model", "model is required (see ListModels)"))
    if violations:
        raise InvalidArgument.of(violations)


def batch_queries_from(request: Request) -> list[ForecastQuery | GatewayError]:
    """One query per series (or the series' own conversion error); routed by id when no key."""
    # Read once: each read of a proto string field is a new copy, and a
    # version of up to 1 MB shared by 4,096 series must not become 4,096 copies.
    model, version = request.model, request.version
    levels = levels_of(request)
    queries: list[ForecastQuery | GatewayError] = []
    for index, series in enumerate(request.series):
        try:
            fill = fill_of(series, f"series[{index}].fill")
        except GatewayError as error:
            queries.append(error)
            continue
        queries.append(
            ForecastQuery(
                model=model,
                version=version,
                routing_key=series.routing_key or series.id,
                history=np.asarray(series.history, dtype=np.float64),
                horizon=request.horizon,
                sequence_length=request.sequence_length,
                levels=levels,
                time=time_of(series),
                fill=fill,
            )
        )
    return queries


def batch_response_from(
    ids: Sequence[str], outcomes: Sequence[Outcome], rpc: str
) -> tuple[forecast_service_pb2.ForecastBatchResponse, int]:
    """The response, and how many points its forecasts filled (counted per series)."""
    results = []
    filled = 0
    for series_id, outcome in zip(ids, outcomes, strict=True):
        if isinstance(outcome, GatewayError):
            results.append(
                forecast_service_pb2.SeriesResult(id=series_id, error=error_from(outcome))
            )
        else:
            count_series(rpc, outcome)
            filled += outcome.filled
            results.append(
                forecast_service_pb2.SeriesResult(id=series_id, forecast=forecast_from(outcome))
            )
    return forecast_service_pb2.ForecastBatchResponse(results=results), filled


def count_series(rpc: str, result: ForecastResult) -> None:
    """The series counter of one forecast series."""
    metrics.SERIES.labels(rpc, result.model, result.version, result.decision.value).inc()
