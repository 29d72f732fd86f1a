"""Python client and `forecast` command line for the Forecast Gateway."""

from forecast_client.client import Forecast, ForecastClient, ModelInfo, ModelVersionInfo
from forecast_client.errors import FieldViolation, ForecastError, from_rpc_error

__all__ = [
    "FieldViolation",
    "Forecast",
    "ForecastClient",
    "ForecastError",
    "ModelInfo",
    "ModelVersionInfo",
    "from_rpc_error",
]
