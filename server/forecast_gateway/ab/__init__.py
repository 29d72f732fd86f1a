"""The A/B subsystem: forecasts recorded for scoring, actuals, running aggregates, reports.

The rest of the gateway uses only the names below. Layout, one concern per
module: `records` (types), `store` (the write-behind façade), `actuals`
(checks), `aggregates` (running totals), `report` (GetExperiment and its verdict),
`sequential` (always-valid comparisons), `scoring` and `student_t` (metrics,
tests, exact running sums). Beneath the façade, one interface: `storage`
(`Storage`: every operation and query, written once, and the backend choice
from `store_url`) runs on a `Backend`'s connections: `sqlite` (one file, its
own thread) or `postgres` (a connection pool). `migrations` holds both backends'
schema versions, `schema` the framework that runs them and their data steps.
"""

from forecast_gateway.ab.aggregates import TRACKED
from forecast_gateway.ab.records import (
    ARM_SEPARATOR,
    DEFAULT_EXPERIMENT,
    ActualsReport,
    ExperimentInfo,
    ExperimentReport,
    Prediction,
    RecordedForecast,
    Role,
    arm_label,
    arm_of,
    arm_parts,
    new_forecast_id,
)
from forecast_gateway.ab.report import interval_flags
from forecast_gateway.ab.schema import Transaction
from forecast_gateway.ab.storage import Bounds, Storage
from forecast_gateway.ab.store import ExperimentStore, StoreOpenError

__all__ = [
    "ARM_SEPARATOR",
    "DEFAULT_EXPERIMENT",
    "TRACKED",
    "ActualsReport",
    "Bounds",
    "ExperimentInfo",
    "ExperimentReport",
    "ExperimentStore",
    "Prediction",
    "RecordedForecast",
    "Role",
    "Storage",
    "StoreOpenError",
    "Transaction",
    "arm_label",
    "arm_of",
    "arm_parts",
    "interval_flags",
    "new_forecast_id",
]
