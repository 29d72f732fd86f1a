"""A small, typed, blocking client for `forecast.v1.ForecastService`.

    with ForecastClient("localhost:50051") as client:
        result = client.forecast("lstm_timeseries", history, horizon=12)
        result.values  # list[float], `horizon` steps

Every failed call raises `ForecastError` (see `errors.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self, TypeVar

import grpc

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client.errors import from_rpc_error

__all__ = ["Forecast", "ForecastClient", "ModelInfo", "ModelVersionInfo"]

_Response = TypeVar("_Response")
_Number = TypeVar("_Number", bound=int)


@dataclass(frozen=True)
class Forecast:
    """A forecast of one series, as the gateway returned it.

    `routing_decision` is the enum value without its prefix, lowercased
    ("pinned" or "default"); `sequence_length` is the window the model read.
    """

    forecast_id: str
    model: str
    version: str
    values: list[float]
    routing_decision: str
    horizon: int
    sequence_length: int


@dataclass(frozen=True)
class ModelVersionInfo:
    """One version of a served model; `state` is e.g. "ready" or "loading"."""

    version: str
    state: str
    sequence_length: int
    min_sequence_length: int
    max_sequence_length: int
    description: str


@dataclass(frozen=True)
class ModelInfo:
    """A model the gateway serves, with every version it knows of."""

    name: str
    description: str
    default_version: str
    default_horizon: int
    max_horizon: int
    versions: tuple[ModelVersionInfo, ...]


class ForecastClient:
    """Blocking client; use it as a context manager (or call `close()`).

    `timeout_s` is the deadline of every call; `metadata` is sent with every
    call (e.g. `[("x-request-id", "abc")]`). Without `credentials` the channel
    is plaintext.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout_s: float = 10.0,
        metadata: Sequence[tuple[str, str]] = (),
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.target = target
        self._timeout_s = timeout_s
        self._metadata = tuple(metadata)
        self._channel = (
            grpc.insecure_channel(target)
            if credentials is None
            else grpc.secure_channel(target, credentials)
        )
        self._stub = forecast_service_pb2_grpc.ForecastServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel; the client cannot be used afterwards."""
        self._channel.close()

    def forecast(
        self,
        model: str,
        history: Iterable[float],
        *,
        version: str = "",
        routing_key: str = "",
        horizon: int = 0,
        sequence_length: int = 0,
    ) -> Forecast:
        """Forecast one series (`history`, oldest point first).

        `version` "" lets the gateway choose; `horizon` and `sequence_length`
        0 mean the model's defaults. Validation is the gateway's: an empty
        history or a NaN comes back as INVALID_ARGUMENT with a field violation.
        """
        request = forecast_service_pb2.ForecastRequest(
            model=model,
            version=version,
            routing_key=routing_key,
            history=[float(value) for value in history],
            horizon=horizon,
            sequence_length=sequence_length,
        )
        response = self._call(self._stub.Forecast, request)
        return Forecast(
            forecast_id=response.forecast_id,
            model=response.model,
            version=response.version,
            values=list(response.values),
            routing_decision=_enum_label(
                forecast_pb2.RoutingDecision.Name, response.routing_decision, "ROUTING_DECISION_"
            ),
            horizon=response.horizon,
            sequence_length=response.sequence_length,
        )

    def list_models(self) -> list[ModelInfo]:
        """List the served models, sorted by name."""
        response = self._call(self._stub.ListModels, forecast_service_pb2.ListModelsRequest())
        return [_model_info(model) for model in response.models]

    def get_model(self, name: str) -> ModelInfo:
        """Describe one model; NOT_FOUND if the gateway does not serve it."""
        request = forecast_service_pb2.GetModelRequest(name=name)
        return _model_info(self._call(self._stub.GetModel, request).model)

    def _call(self, method: Callable[..., _Response], request: object) -> _Response:
        try:
            return method(request, timeout=self._timeout_s, metadata=self._metadata)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from error


def _enum_label(name_of: Callable[[_Number], str], number: _Number, prefix: str) -> str:
    """Map e.g. ROUTING_DECISION_PINNED to "pinned"; an unknown number to its digits."""
    try:
        name = name_of(number)
    except ValueError:  # a value added to the contract after these stubs were generated
        return str(number)
    return name.removeprefix(prefix).lower()


def _model_info(model: forecast_pb2.Model) -> ModelInfo:
    return ModelInfo(
        name=model.name,
        description=model.description,
        default_version=model.default_version,
        default_horizon=model.default_horizon,
        max_horizon=model.max_horizon,
        versions=tuple(
            ModelVersionInfo(
                version=v.version,
                state=_enum_label(
                    forecast_pb2.ModelVersionState.Name, v.state, "MODEL_VERSION_STATE_"
                ),
                sequence_length=v.sequence_length,
                min_sequence_length=v.min_sequence_length,
                max_sequence_length=v.max_sequence_length,
                description=v.description,
            )
            for v in model.versions
        ),
    )
