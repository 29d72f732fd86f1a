"""Python client and `forecast` command line for the Forecast Gateway."""

from forecast_client.client import (
    ActualsReport,
    Comparison,
    ErrorStats,
    Experiment,
    Forecast,
    ForecastArgs,
    ForecastClient,
    LatencyStats,
    ModelInfo,
    ModelVersionInfo,
    SeriesOutcome,
    VersionComparison,
    VersionDifference,
    VersionExperiment,
    VersionForecast,
    VersionScore,
)
from forecast_client.connection import DEFAULT_RETRY_POLICY, RetryPolicy, SettingError
from forecast_client.errors import FieldViolation, ForecastError, from_proto_error, from_rpc_error

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "ActualsReport",
    "Comparison",
    "ErrorStats",
    "Experiment",
    "FieldViolation",
    "Forecast",
    "ForecastArgs",
    "ForecastClient",
    "ForecastError",
    "LatencyStats",
    "ModelInfo",
    "ModelVersionInfo",
    "RetryPolicy",
    "SeriesOutcome",
    "SettingError",
    "VersionComparison",
    "VersionDifference",
    "VersionExperiment",
    "VersionForecast",
    "VersionScore",
    "from_proto_error",
    "from_rpc_error",
]
