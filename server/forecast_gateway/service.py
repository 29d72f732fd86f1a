"""The ForecastService servicer: proto in, core call, proto out. No logic of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
import numpy as np

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_gateway.catalog import ModelCatalog, ModelSpec, VersionState
from forecast_gateway.errors import FieldViolation, InvalidArgument
from forecast_gateway.forecaster import Forecaster
from forecast_gateway.routing import Decision
from forecast_gateway.validation import ForecastQuery

if TYPE_CHECKING:  # grpc's classes are generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]

_DECISIONS = {
    Decision.PINNED: forecast_pb2.ROUTING_DECISION_PINNED,
    Decision.DEFAULT: forecast_pb2.ROUTING_DECISION_DEFAULT,
}
_STATES = {
    VersionState.READY: forecast_pb2.MODEL_VERSION_STATE_READY,
    VersionState.LOADING: forecast_pb2.MODEL_VERSION_STATE_LOADING,
    VersionState.UNAVAILABLE: forecast_pb2.MODEL_VERSION_STATE_UNAVAILABLE,
}


class ForecastServicer(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Implements forecast.v1.ForecastService on top of the Forecaster core."""

    def __init__(
        self, forecaster: Forecaster, catalog: ModelCatalog, default_timeout_s: float
    ) -> None:
        self.forecaster = forecaster
        self.catalog = catalog
        self.default_timeout_s = default_timeout_s

    async def Forecast(
        self, request: forecast_service_pb2.ForecastRequest, context: Context
    ) -> forecast_service_pb2.ForecastResponse:
        """Forecast one series."""
        query = ForecastQuery(
            model=request.model,
            version=request.version,
            routing_key=request.routing_key,
            history=np.asarray(request.history, dtype=np.float64),
            horizon=request.horizon,
            sequence_length=request.sequence_length,
        )
        result = await self.forecaster.forecast(query, self._timeout(context))
        return forecast_service_pb2.ForecastResponse(
            forecast_id=result.forecast_id,
            model=result.model,
            version=result.version,
            values=result.values.tolist(),
            routing_decision=_DECISIONS[result.decision],
            horizon=result.horizon,
            sequence_length=result.window,
        )

    async def ListModels(
        self, request: forecast_service_pb2.ListModelsRequest, context: Context
    ) -> forecast_service_pb2.ListModelsResponse:
        """List the served models Triton has reported."""
        specs = [
            self.catalog.specs[m.name] for m in self.catalog.models if m.name in self.catalog.specs
        ]
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

    def _timeout(self, context: Context) -> float:
        """Time left for the call to Triton: the caller's deadline, capped by the default."""
        remaining = context.time_remaining()
        if remaining is None:
            return self.default_timeout_s
        return min(float(remaining), self.default_timeout_s)


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
            )
            for v in sorted(spec.versions.values(), key=lambda v: int(v.version))
        ],
    )
