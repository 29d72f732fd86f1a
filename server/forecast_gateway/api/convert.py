"""Conversions between the forecast.v1 protos and the core's domain types.

The servicer stays thin: every field mapping lives here, in one place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2, forecast_service_pb2
from forecast_gateway.ab import ActualsReport, ExperimentInfo, ExperimentReport, Role
from forecast_gateway.core.calibration import Status, Uncertainty
from forecast_gateway.core.catalog import ModelSpec, VersionState
from forecast_gateway.core.contract import Contract
from forecast_gateway.core.forecaster import ForecastResult, VersionOutcome
from forecast_gateway.core.routing import Decision
from forecast_gateway.core.timeline import Fill, TimeInput
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.errors import (
    MAX_DESCRIPTION_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_METADATA_BYTES,
    FieldViolation,
    GatewayError,
    InvalidArgument,
    clip,
)
from forecast_gateway.numerics import NO_LEVELS, Levels
from forecast_gateway.timegrid import Instants, instant, instants

_DECISIONS = {
    Decision.PINNED: forecast_pb2.ROUTING_DECISION_PINNED,
    Decision.DEFAULT: forecast_pb2.ROUTING_DECISION_DEFAULT,
    Decision.WEIGHTED: forecast_pb2.ROUTING_DECISION_WEIGHTED,
    Decision.STICKY: forecast_pb2.ROUTING_DECISION_STICKY,
    Decision.FALLBACK: forecast_pb2.ROUTING_DECISION_FALLBACK,
}
_STATES = {
    VersionState.READY: forecast_pb2.MODEL_VERSION_STATE_READY,
    VersionState.LOADING: forecast_pb2.MODEL_VERSION_STATE_LOADING,
    VersionState.UNAVAILABLE: forecast_pb2.MODEL_VERSION_STATE_UNAVAILABLE,
}
_FILLS = {
    forecast_pb2.FILL_METHOD_UNSPECIFIED: Fill.NONE,
    forecast_pb2.FILL_METHOD_LINEAR: Fill.LINEAR,
    forecast_pb2.FILL_METHOD_PREVIOUS: Fill.PREVIOUS,
    forecast_pb2.FILL_METHOD_ZERO: Fill.ZERO,
}
_ROLES = {Role.SERVED: forecast_pb2.SCORE_ROLE_SERVED, Role.SHADOW: forecast_pb2.SCORE_ROLE_SHADOW}
STATUSES = {
    Status.CALIBRATED: forecast_pb2.UNCERTAINTY_STATUS_CALIBRATED,
    Status.NOT_CALIBRATED: forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED,
}


def levels_of(
    request: forecast_service_pb2.ForecastRequest
    | forecast_service_pb2.ForecastBatchRequest
    | forecast_service_pb2.CompareVersionsRequest
    | forecast_service_pb2.BacktestRequest,
) -> Levels:
    """The intervals and quantiles a request asks for (the shared empty value when none)."""
    if not request.interval_coverages and not request.quantile_levels:
        return NO_LEVELS
    return Levels(tuple(request.interval_coverages), tuple(request.quantile_levels))


def time_of(message: Any) -> TimeInput | None:
    """The time fields of a request or series as given (None when it has none)."""
    has_start = message.HasField("start")
    stamps = message.timestamps
    if not has_start and not stamps and not message.frequency:
        return None
    start = instant(message.start.seconds, message.start.nanos) if has_start else None
    return TimeInput(
        start=start,
        frequency=message.frequency,
        timestamps=instants([t.seconds for t in stamps], [t.nanos for t in stamps])
        if stamps
        else None,
    )


def fill_of(message: Any, field: str = "fill") -> Fill:
    """The fill method of a request or series (INVALID_ARGUMENT for an unknown value)."""
    value = message.fill
    if not value:  # the common case: no fill asked for
        return Fill.NONE
    fill = _FILLS.get(value)
    if fill is None:
        raise InvalidArgument.of(
            [FieldViolation(field, f"unknown FillMethod {message.fill}; see FillMethod")]
        )
    return fill


def _times(values: Instants | None) -> list[timestamp_pb2.Timestamp]:
    """Timestamps of ns instants (none for None)."""
    if values is None:
        return []
    return [timestamp_at(value) for value in values.tolist()]


def timestamp_at(nanoseconds: int) -> timestamp_pb2.Timestamp:
    """A protobuf Timestamp of a Unix instant in ns."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(nanoseconds)
    return stamp


def _time_fields(timestamps: Instants | None, frequency: str, filled: int) -> dict[str, Any]:
    """timestamps, frequency and filled_points of a returned forecast (none without time)."""
    if timestamps is None and not frequency and not filled:
        return {}
    return {"timestamps": _times(timestamps), "frequency": frequency, "filled_points": filled}


def _uncertainty_fields(uncertainty: Uncertainty | None) -> dict[str, Any]:
    """intervals, quantiles and uncertainty of a returned forecast (none when not asked)."""
    if uncertainty is None:
        return {}
    return {
        "intervals": [
            forecast_pb2.PredictionInterval(
                coverage=i.coverage, lower=i.lower.tolist(), upper=i.upper.tolist()
            )
            for i in uncertainty.intervals
        ],
        "quantiles": [
            forecast_pb2.QuantileForecast(level=q.level, values=q.values.tolist())
            for q in uncertainty.quantiles
        ],
        "uncertainty": forecast_pb2.Uncertainty(
            status=STATUSES[uncertainty.status],
            method=uncertainty.method,
            calibration_scores=uncertainty.scores,
            detail=uncertainty.detail,
        ),
    }


def query_from(request: forecast_service_pb2.ForecastRequest) -> ForecastQuery:
    """The core's view of a ForecastRequest."""
    return ForecastQuery(
        model=request.model,
        version=request.version,
        routing_key=request.routing_key,
        history=np.asarray(request.history, dtype=np.float64),
        horizon=request.horizon,
        sequence_length=request.sequence_length,
        levels=levels_of(request),
        time=time_of(request),
        fill=fill_of(request),
    )


def compare_query_from(request: forecast_service_pb2.CompareVersionsRequest) -> ForecastQuery:
    """The query every compared version runs."""
    return ForecastQuery(
        model=request.model,
        version="",
        routing_key="",
        history=np.asarray(request.history, dtype=np.float64),
        horizon=request.horizon,
        sequence_length=request.sequence_length,
        levels=levels_of(request),
        time=time_of(request),
        fill=fill_of(request),
    )


def _forecast_fields(result: ForecastResult) -> dict[str, Any]:
    """The fields ForecastResponse and Forecast share."""
    return {
        "forecast_id": result.forecast_id,
        "model": result.model,
        "version": result.version,
        "values": result.values.tolist(),
        "routing_decision": _DECISIONS[result.decision],
        "horizon": result.horizon,
        "sequence_length": result.window,
        "routing_restricted": result.restricted,
        **_uncertainty_fields(result.uncertainty),
        **_time_fields(result.timestamps, result.frequency, result.filled),
    }


def response_from(result: ForecastResult) -> forecast_service_pb2.ForecastResponse:
    """A ForecastResponse for a result."""
    return forecast_service_pb2.ForecastResponse(
        **_forecast_fields(result), primary_version=result.primary_version
    )


def forecast_from(result: ForecastResult) -> forecast_pb2.Forecast:
    """A Forecast message (batch results) for a result."""
    return forecast_pb2.Forecast(**_forecast_fields(result))


def error_from(error: GatewayError) -> forecast_pb2.ForecastError:
    """The in-band error of one series (same content as a unary call's status details)."""
    return forecast_pb2.ForecastError(
        code=int(error.code),
        message=clip(error.message, MAX_MESSAGE_BYTES),
        reason=error.reason,
        field_violations=[
            forecast_pb2.FieldViolation(
                field=clip(v.field, MAX_METADATA_BYTES),
                description=clip(v.description, MAX_DESCRIPTION_BYTES),
            )
            for v in error.violations
        ],
    )


def comparison_from(
    model: str, outcomes: Sequence[VersionOutcome]
) -> forecast_service_pb2.CompareVersionsResponse:
    """Each version's forecast and the pairwise differences of the successful ones."""
    forecasts = [
        forecast_service_pb2.VersionForecast(
            version=o.version,
            values=o.values.tolist() if o.values is not None else [],
            latency_ms=o.latency_ms,
            sequence_length=o.window,
            error=error_from(o.error) if o.error is not None else None,
            **_uncertainty_fields(o.uncertainty),
            **_time_fields(o.timestamps, o.frequency, o.filled),
        )
        for o in outcomes
    ]
    ok = [o for o in outcomes if o.values is not None]
    differences = []
    for i, a in enumerate(ok):
        for b in ok[i + 1 :]:
            assert a.values is not None and b.values is not None
            gap = np.abs(a.values - b.values)
            differences.append(
                forecast_service_pb2.VersionDifference(
                    version_a=a.version,
                    version_b=b.version,
                    mean_absolute_difference=float(gap.mean()),
                    max_absolute_difference=float(gap.max()),
                )
            )
    return forecast_service_pb2.CompareVersionsResponse(
        model=model, forecasts=forecasts, differences=differences
    )


def actuals_start(request: forecast_service_pb2.ReportActualsRequest) -> int | None:
    """ReportActuals' `start` as ns since the epoch (None when unset)."""
    if not request.HasField("start"):
        return None
    return int(instants([request.start.seconds], [request.start.nanos])[0])


def actuals_from(report: ActualsReport) -> forecast_service_pb2.ReportActualsResponse:
    """The proto view of an actuals report."""
    return forecast_service_pb2.ReportActualsResponse(
        forecast_id=report.forecast_id,
        model=report.model,
        horizon=report.horizon,
        steps_received=report.steps_received,
        scores=[
            forecast_service_pb2.VersionScore(
                version=s.version,
                role=_ROLES[s.role],
                steps_scored=s.steps_scored,
                mae=s.mae,
                smape=s.smape,
                mase=s.mase,
            )
            for s in report.scores
        ],
    )


def experiment_from(report: ExperimentReport) -> forecast_service_pb2.GetExperimentResponse:
    """The proto view of an experiment report."""
    return forecast_service_pb2.GetExperimentResponse(
        model=report.model,
        versions=[
            forecast_service_pb2.VersionExperiment(
                version=v.version,
                model=v.model or report.model,
                requests_served=v.requests_served,
                requests_shadowed=v.requests_shadowed,
                actuals_received=v.actuals_received,
                errors=forecast_pb2.ErrorStats(
                    count=v.errors.count,
                    mae_mean=v.errors.mae_mean,
                    smape_mean=v.errors.smape_mean,
                    mase_mean=v.errors.mase_mean,
                ),
                latency=forecast_pb2.LatencyStats(
                    count=v.latency.count,
                    p50_ms=v.latency.p50_ms,
                    p95_ms=v.latency.p95_ms,
                    p99_ms=v.latency.p99_ms,
                ),
                interval_coverage=[
                    forecast_pb2.IntervalCoverage(
                        nominal=i.nominal,
                        steps=i.steps,
                        coverage=i.coverage,
                        coverage_low=i.coverage_low,
                        coverage_high=i.coverage_high,
                        mean_width=i.mean_width,
                        winkler=i.winkler,
                        undercovering=i.undercovering,
                    )
                    for i in v.intervals
                ],
                quantile_losses=[
                    forecast_pb2.QuantileLoss(
                        level=q.level, steps=q.steps, pinball=q.pinball, below=q.below
                    )
                    for q in v.quantiles
                ],
            )
            for v in report.versions
        ],
        comparisons=[
            forecast_service_pb2.VersionComparison(
                version_a=c.version_a,
                version_b=c.version_b,
                model_a=c.model_a or report.model,
                model_b=c.model_b or report.model,
                metric=c.metric,
                test=c.test,
                samples=c.samples,
                mean_difference=c.mean_difference,
                ci_low=c.ci_low,
                ci_high=c.ci_high,
                p_value=c.p_value,
                significant=c.significant,
                verdict=c.verdict,
                conclusive=c.conclusive,
                sequential_test=c.sequential_test,
                sequential_p_value=c.sequential_p_value,
                cs_low=c.cs_low,
                cs_high=c.cs_high,
            )
            for c in report.comparisons
        ],
        experiment=report.experiment,
        started_at=timestamp_of(report.started_at),
        forecasts=report.forecasts,
    )


def experiments_from(
    infos: Sequence[ExperimentInfo], current: Mapping[str, str]
) -> forecast_service_pb2.ListExperimentsResponse:
    """The proto view of the store's experiments; `current`: model -> its current experiment."""
    return forecast_service_pb2.ListExperimentsResponse(
        experiments=[
            forecast_service_pb2.ExperimentSummary(
                model=info.model,
                experiment=info.experiment,
                started_at=timestamp_of(info.started_at),
                forecasts=info.forecasts,
                current=current.get(info.model) == info.experiment,
            )
            for info in infos
        ]
    )


def timestamp_of(seconds: float | None) -> timestamp_pb2.Timestamp | None:
    """A protobuf Timestamp of Unix seconds (None stays unset)."""
    return None if seconds is None else timestamp_at(int(seconds * 1e9))


def model_to_proto(spec: ModelSpec) -> forecast_pb2.Model:
    """The proto view of a model spec."""
    return forecast_pb2.Model(
        name=spec.name,
        description=spec.description,
        default_version=spec.default_version() or "",
        default_horizon=spec.default_horizon,
        max_horizon=spec.max_horizon,
        versions=[
            forecast_pb2.ModelVersion(
                version=v.version,
                state=_STATES[v.state],
                sequence_length=v.sequence_length,
                min_sequence_length=v.min_sequence_length,
                max_sequence_length=v.max_sequence_length,
                description=v.description,
                replicas_ready=v.replicas_ready,
                unavailable_reason=clip(v.unavailable_reason, MAX_MESSAGE_BYTES),
                **_contract_fields(v.contract),
            )
            for v in sorted(spec.versions.values(), key=lambda v: int(v.version))
        ],
    )


def _contract_fields(contract: Contract | None) -> dict[str, Any]:
    """What a version declares, as ModelVersion reports it (nothing for a bad declaration)."""
    if contract is None:
        return {}
    return {
        "output_kind": contract.output_kind.value,
        "quantile_levels": contract.quantile_levels,
        "horizon_mode": contract.horizon_mode.value,
        "max_horizon": contract.max_horizon,
        "frequencies": contract.frequencies,
        "normalization": contract.normalization.value,
        "season_length": contract.season_length,
        "accepts_missing": contract.accepts_missing,
    }
