"""Conversions between the Backtest protos and the backtest runner's types.

Kept apart from `convert` (the forecast RPCs) so each stays small; the
series and levels are read with `convert`'s own helpers, as ForecastBatch's are.
"""

from __future__ import annotations

import numpy as np

from forecast.v1 import forecast_service_pb2
from forecast_gateway.api.convert import STATUSES, fill_of, levels_of, time_of, timestamp_at
from forecast_gateway.backtest.results import (
    BacktestQuery,
    BacktestReport,
    BacktestSeries,
    Target,
    TargetResult,
)
from forecast_gateway.backtest.windows import Layout
from forecast_gateway.core.validation import ForecastQuery


def backtest_query_from(request: forecast_service_pb2.BacktestRequest) -> BacktestQuery:
    """The core's view of a BacktestRequest (series as ForecastBatch's, targets by label)."""
    series = tuple(
        BacktestSeries(
            series.id,
            ForecastQuery(
                model=request.model,
                version="",
                routing_key="",
                history=np.asarray(series.history, dtype=np.float64),
                horizon=request.horizon,
                sequence_length=request.sequence_length,
                time=time_of(series),
                fill=fill_of(series, f"series[{index}].fill"),
            ),
        )
        for index, series in enumerate(request.series)
    )
    return BacktestQuery(
        model=request.model,
        series=series,
        layout=Layout(request.horizon, request.n_windows, request.step or request.horizon),
        targets=tuple(Target(t.model or request.model, t.version) for t in request.targets),
        sequence_length=request.sequence_length,
        levels=levels_of(request),
        per_window=request.per_window,
    )


def backtest_from(
    report: BacktestReport, per_window: bool
) -> forecast_service_pb2.BacktestResponse:
    """The BacktestResponse of a finished backtest."""
    return forecast_service_pb2.BacktestResponse(
        model=report.model,
        horizon=report.layout.horizon,
        n_windows=report.layout.n_windows,
        step=report.layout.step,
        scale=report.scale,
        results=[_backtest_result(report, result, per_window) for result in report.results],
        comparisons=[
            forecast_service_pb2.BacktestComparison(
                target_a=c.a.label,
                target_b=c.b.label,
                test=c.test.test,
                windows=c.test.samples,
                mase_a=c.mase_a,
                mase_b=c.mase_b,
                mean_difference=c.test.mean_difference,
                statistic=c.test.statistic,
                p_value=c.test.p_value,
                lag=c.test.lag,
                significant=c.test.significant,
                verdict=c.verdict,
            )
            for c in report.comparisons
        ],
    )


def _backtest_result(
    report: BacktestReport, result: TargetResult, per_window: bool
) -> forecast_service_pb2.BacktestResult:
    scores = result.scores
    windows = []
    if per_window:
        for window, score in zip(report.windows, scores.per_window, strict=True):
            windows.append(
                forecast_service_pb2.BacktestWindowScore(
                    series_id=report.series_ids[window.series],
                    window=window.index,
                    origin=window.origin,
                    mae=score.mae,
                    smape=score.smape,
                    mase=score.mase,
                    origin_time=(
                        None if window.origin_time is None else timestamp_at(window.origin_time)
                    ),
                )
            )
    return forecast_service_pb2.BacktestResult(
        model=result.target.model,
        version=result.target.version,
        windows=scores.windows,
        mae=scores.mae,
        smape=scores.smape,
        mase=scores.mase,
        rmse=scores.rmse,
        steps=[
            forecast_service_pb2.BacktestStepScore(
                step=s.step, mae=s.mae, smape=s.smape, mase=s.mase
            )
            for s in scores.per_step
        ],
        intervals=[
            forecast_service_pb2.BacktestIntervalScore(
                coverage=i.coverage,
                observed=i.observed,
                winkler=i.winkler,
                per_step_observed=i.per_step_observed,
                per_step_winkler=i.per_step_winkler,
                status=STATUSES[status],
            )
            for i, status in zip(scores.intervals, result.statuses, strict=True)
        ],
        quantiles=[
            forecast_service_pb2.BacktestQuantileScore(
                level=q.level, pinball=q.pinball, per_step=q.per_step
            )
            for q in scores.quantiles
        ],
        window_scores=windows,
    )
