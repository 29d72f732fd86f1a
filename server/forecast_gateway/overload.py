"""Load shedding: a bound on requests in progress in the gateway.

Past `max_in_flight` concurrent calls, a new call is refused at once with
RESOURCE_EXHAUSTED instead of queueing without bound: at 10x capacity the
accepted calls keep a bounded latency and memory stays bounded. This bound is
also what bounds Triton's queue: the shipped model configs set no Triton queue
policy (it stalled Triton's batcher; see model_repository/*/config.pbtxt).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from forecast_gateway import metrics
from forecast_gateway.errors import ResourceExhausted
from forecast_gateway.interceptors import ServiceInterceptor

if TYPE_CHECKING:  # grpc's classes are generic only in the type stubs
    Context = grpc.aio.ServicerContext[Any, Any]
    Handler = grpc.RpcMethodHandler[Any, Any]


class LoadShedder(ServiceInterceptor):
    """Counts ForecastService calls in progress and sheds those over the limit.

    Installed after RequestInterceptor, so the refusal is reported like any
    other GatewayError (status, ErrorInfo, log line, metrics).
    """

    def __init__(self, max_in_flight: int) -> None:
        super().__init__()
        self.max_in_flight = max_in_flight
        self.in_flight = 0

    def wrap(self, method: str, handler: Handler) -> Handler | None:
        """Wrap a unary or bidirectional method with the in-flight count."""
        if handler.unary_unary:
            behavior = handler.unary_unary

            async def unary(request: Any, context: Context) -> Any:
                self._enter()
                try:
                    return await behavior(request, context)  # type: ignore[arg-type]
                finally:
                    self._leave()

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            stream_behavior = handler.stream_stream

            async def stream(requests: Any, context: Context) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for response in stream_behavior(requests, context):  # type: ignore[arg-type, attr-defined]
                        yield response
                finally:
                    self._leave()

            return grpc.stream_stream_rpc_method_handler(
                stream,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _enter(self) -> None:
        if self.in_flight >= self.max_in_flight:
            metrics.SHED.inc()
            raise ResourceExhausted(
                f"the gateway is at its limit of {self.max_in_flight} requests in progress; "
                "retry with backoff",
                reason="GATEWAY_OVERLOADED",
            )
        self.in_flight += 1
        metrics.IN_FLIGHT.set(self.in_flight)

    def _leave(self) -> None:
        self.in_flight -= 1
        metrics.IN_FLIGHT.set(self.in_flight)
