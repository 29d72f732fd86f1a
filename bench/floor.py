"""The floor under the gateway: the cheapest Python servers of ForecastService/Forecast.

Two servers, each a ``grpc.aio`` process of its own, measured in the same
run as the gateway so that its per-call cost can be compared with what any
Python proxy must pay:

- ``echo``: answers every call with one fixed, pre-serialized
  ForecastResponse (the request is parsed, nothing else happens): the cost of
  one Python gRPC hop.
- ``proxy``: the gateway's core job and nothing else: parse, z-score the
  last `window` points with numpy, one raw ModelInfer to Triton, map the
  forecast back, answer. No routing, validation, coalescing, logging,
  metrics or A/B recording; one Triton request per call.

Run as ``python -m bench.floor --kind proxy --triton-url HOST:PORT --port 0``;
it writes ``PORT <n>`` on stdout once it serves, and stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING, Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from forecast.v1 import forecast_pb2, forecast_service_pb2

if TYPE_CHECKING:
    Context = grpc.aio.ServicerContext[Any, Any]

SERVICE = "forecast.v1.ForecastService"
WINDOW = 10
DEFAULT_TIMEOUT_S = 10.0


def _echo_answer(horizon: int) -> forecast_service_pb2.ForecastResponse:
    return forecast_service_pb2.ForecastResponse(
        forecast_id="00000000-0000-7000-8000-000000000000",
        model="lstm_timeseries",
        version="1",
        values=[float(v) for v in range(horizon)],
        routing_decision=forecast_pb2.ROUTING_DECISION_PINNED,
        horizon=horizon,
        sequence_length=WINDOW,
    )


class Echo:
    """A fixed answer: what one Python gRPC hop costs."""

    def __init__(self, horizon: int) -> None:
        self.answer = _echo_answer(horizon)

    async def forecast(
        self, request: forecast_service_pb2.ForecastRequest, context: Context
    ) -> forecast_service_pb2.ForecastResponse:
        """Answer the fixed response."""
        return self.answer


class MinimalProxy:
    """Parse, z-score, one ModelInfer, de-normalize, answer: the core job, nothing more."""

    def __init__(self, triton_url: str, window: int) -> None:
        self.channel = grpc.aio.insecure_channel(triton_url)
        self.infer = service_pb2_grpc.GRPCInferenceServiceStub(self.channel).ModelInfer
        self.window = window

    async def forecast(
        self, request: forecast_service_pb2.ForecastRequest, context: Context
    ) -> forecast_service_pb2.ForecastResponse:
        """One forecast, one Triton request."""
        history = np.asarray(request.history, dtype=np.float64)[-self.window :]
        horizon = request.horizon
        mean = history.mean()
        std = max(float(history.std()), 1e-9 * max(1.0, abs(float(mean))))
        z = ((history - mean) / std).astype(np.float32)
        remaining = context.time_remaining()
        reply = await self.infer(
            service_pb2.ModelInferRequest(
                model_name=request.model,
                model_version=request.version,
                inputs=[
                    service_pb2.ModelInferRequest.InferInputTensor(
                        name="HISTORY", datatype="FP32", shape=[1, self.window]
                    ),
                    service_pb2.ModelInferRequest.InferInputTensor(
                        name="HORIZON", datatype="INT32", shape=[1, 1]
                    ),
                ],
                raw_input_contents=[z.tobytes(), np.int32(horizon).tobytes()],
            ),
            timeout=DEFAULT_TIMEOUT_S if remaining is None else remaining,
        )
        values = np.frombuffer(reply.raw_output_contents[0], dtype=np.float32) * std + mean
        return forecast_service_pb2.ForecastResponse(
            model=request.model,
            version=request.version,
            values=values.tolist(),
            routing_decision=forecast_pb2.ROUTING_DECISION_PINNED,
            horizon=horizon,
            sequence_length=self.window,
        )


async def serve(kind: str, port: int, triton_url: str, window: int, horizon: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    behavior: Echo | MinimalProxy = (
        Echo(horizon) if kind == "echo" else MinimalProxy(triton_url, window)
    )
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Forecast": grpc.unary_unary_rpc_method_handler(
                behavior.forecast,  # a coroutine function: grpc.aio checks with inspect
                request_deserializer=forecast_service_pb2.ForecastRequest.FromString,
                response_serializer=forecast_service_pb2.ForecastResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    sys.stdout.write(f"PORT {bound}\n")
    sys.stdout.flush()
    await stop.wait()
    await server.stop(1)


def main() -> None:
    """Parse the command line and serve."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kind", choices=("echo", "proxy"), required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--triton-url", default="127.0.0.1:8001")
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--horizon", type=int, default=5, help="length of the echo's answer")
    args = parser.parse_args()
    asyncio.run(serve(args.kind, args.port, args.triton_url, args.window, args.horizon))


if __name__ == "__main__":
    main()
