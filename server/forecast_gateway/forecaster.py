"""The forecasting core: validate, route, normalize, infer, denormalize.

Everything between the servicer's proto conversion and the Triton proxy.
The decisions (model, version, routing) are bound to the request's log
context, so the interceptor's one line per request reports them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import numpy as np
import structlog

from forecast_gateway.catalog import ModelCatalog
from forecast_gateway.errors import DeadlineExceeded, Internal
from forecast_gateway.normalization import FloatArray, denormalize, fit_window, normalize
from forecast_gateway.routing import Decision, choose_version
from forecast_gateway.triton import TritonProxy
from forecast_gateway.validation import ForecastQuery, check_query, resolve_shape

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class ForecastResult:
    """A forecast in the units of the history, and how it was produced."""

    forecast_id: str
    model: str
    version: str
    decision: Decision
    values: FloatArray
    horizon: int
    window: int


class Forecaster:
    """Runs forecast queries against the catalog's models through the proxy."""

    def __init__(self, catalog: ModelCatalog, proxy: TritonProxy, max_history_length: int) -> None:
        self.catalog = catalog
        self.proxy = proxy
        self.max_history_length = max_history_length

    async def forecast(self, query: ForecastQuery, timeout_s: float) -> ForecastResult:
        """Forecast one series; raises a GatewayError subclass on any failure."""
        check_query(query, self.max_history_length)
        spec = self.catalog.get(query.model)
        route = choose_version(spec, query.version)
        structlog.contextvars.bind_contextvars(
            model=spec.name, version=route.version, routing=route.decision.value
        )
        shape = resolve_shape(query, spec, spec.versions[route.version])
        if timeout_s <= 0:
            raise DeadlineExceeded("the deadline passed before the request reached Triton")
        window = fit_window(query.history, shape.window)
        z, scaling = normalize(window[np.newaxis, :])
        output = await self.proxy.forecast(spec.name, route.version, z, shape.horizon, timeout_s)
        values = denormalize(output, scaling)[0]
        if not np.isfinite(values).all():
            raise Internal(
                "the model produced a non-finite forecast",
                reason="MODEL_OUTPUT_INVALID",
                metadata={"model": spec.name, "version": route.version},
            )
        return ForecastResult(
            forecast_id=str(uuid.uuid4()),
            model=spec.name,
            version=route.version,
            decision=route.decision,
            values=values,
            horizon=shape.horizon,
            window=shape.window,
        )
