"""The store's reads: a forecast's predictions, an experiment's totals, the experiments."""

from __future__ import annotations

import math

import numpy as np

from forecast_gateway.ab import aggregates, scoring
from forecast_gateway.ab.records import ExperimentInfo, Role
from forecast_gateway.ab.report import ModelAggregates
from forecast_gateway.ab.rows import array
from forecast_gateway.ab.schema import Transaction, decode_sums


async def read_predictions(tx: Transaction, forecast_id: str) -> list[aggregates.StoredPrediction]:
    """Every prediction of a forecast with its current score, in version order."""
    rows = await tx.fetchall(
        "SELECT version, role, forecast_values, steps_scored, mae, smape, mase, bounds, "
        "naive_scale, native_bounds "
        "FROM predictions WHERE forecast_id = %s ORDER BY version",
        (forecast_id,),
    )
    return [
        aggregates.StoredPrediction(
            version,
            Role(role),
            array(values),
            scoring.Score(steps, *(math.nan if v is None else v for v in (mae, smape, mase)))
            if steps
            else aggregates.UNSCORED,
            None if bounds is None else np.frombuffer(bounds, dtype="<f4").astype(np.float64),
            math.nan if scale is None else scale,
            bool(native),
        )
        for version, role, values, steps, mae, smape, mase, bounds, scale, native in rows
    ]


async def read_totals(tx: Transaction, model: str, experiment: str) -> ModelAggregates:
    """The running totals of one experiment of a model: O(versions) rows."""
    result = ModelAggregates()
    key = (model, experiment)
    for version, served, shadowed in await tx.fetchall(
        "SELECT version, served, shadowed FROM counters WHERE model = %s AND experiment = %s", key
    ):
        result.counters[version] = (int(served), int(shadowed))
    for metric, a, b, n, total, squares in await tx.fetchall(
        "SELECT metric, version_a, version_b, n, total, squares FROM moments "
        "WHERE model = %s AND experiment = %s AND n > 0",
        key,
    ):
        result.moments[(metric, a, b)] = decode_sums(n, total, squares).moments
    for version, bucket, n in await tx.fetchall(
        "SELECT version, bucket, n FROM latency_buckets WHERE model = %s AND experiment = %s", key
    ):
        result.latency.setdefault(version, {})[int(bucket)] = int(n)
    row = await tx.fetchone(
        "SELECT started_at, forecasts FROM experiments WHERE model = %s AND experiment = %s", key
    )
    if row is not None:
        result.info = ExperimentInfo(model, experiment, float(row[0]), int(row[1]))
    return result


async def read_experiments(tx: Transaction, model: str) -> list[ExperimentInfo]:
    """The experiments of `model` ("" = every model), newest first within a model."""
    rows = await tx.fetchall(
        "SELECT model, experiment, started_at, forecasts FROM experiments "
        "WHERE model = %s OR %s = '' ORDER BY model, started_at DESC, experiment",
        (model, model),
    )
    return [ExperimentInfo(m, e, float(at), int(n)) for m, e, at, n in rows]
