"""The load generator's clients: one per path, each a coroutine that makes one call.

Every caller answers ``(series answered, series failed)`` for call number `i`
and cycles through the workload's pool. `drive` runs `concurrency` closed-loop
workers until a deadline or a call count; `drive_stream` keeps a window of
requests in flight on one StreamForecast call.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput

from bench import timecost
from bench.baseline import METHOD, encode_request
from bench.workload import Workload
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc as pb_grpc

CALL_TIMEOUT_S = 20.0
Call = Callable[[int], Awaitable[tuple[int, int]]]


class Unimplemented(Exception):
    """The server answered UNIMPLEMENTED: the RPC is not there (yet)."""


@dataclass
class Samples:
    """Latencies and counts of one measured run."""

    latencies_s: list[float] = field(default_factory=list)
    calls: int = 0
    series: int = 0
    failed_series: int = 0
    errors: int = 0
    error_sample: str = ""

    def add(self, latency_s: float, ok: int, failed: int) -> None:
        """Record one finished call."""
        self.latencies_s.append(latency_s)
        self.calls += 1
        self.series += ok
        self.failed_series += failed

    def fail(self, error: BaseException) -> None:
        """Record one failed call (raises Unimplemented for UNIMPLEMENTED)."""
        if isinstance(error, grpc.aio.AioRpcError):
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                raise Unimplemented(error.details() or "UNIMPLEMENTED") from error
            message = f"{error.code().name}: {error.details()}"
        else:
            message = f"{type(error).__name__}: {error}"
        self.errors += 1
        self.error_sample = self.error_sample or message[:300]


async def drive(call: Call, concurrency: int, seconds: float, max_calls: int) -> Samples:
    """Closed loop: `concurrency` workers call back to back until `seconds` or `max_calls`."""
    samples = Samples()
    deadline = time.perf_counter() + seconds
    numbers = itertools.count()

    async def worker() -> None:
        while time.perf_counter() < deadline:
            i = next(numbers)
            if i >= max_calls:
                return
            start = time.perf_counter()
            try:
                ok, failed = await call(i)
            except Exception as error:
                samples.fail(error)
                continue
            samples.add(time.perf_counter() - start, ok, failed)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


class GatewayUnary:
    """`Forecast` through the gateway, one series per call, over `channels` connections.

    The kernel gives each connection to one gateway worker (SO_REUSEPORT), so
    reaching several workers takes several. Each channel gets its own
    subchannel pool: channels with equal options would share one connection.
    With `interval_coverages`, every call asks for those intervals, and a
    series counts only when all of them came back (calibrated). With `time`
    (`bench.timecost.TIMES`), every request carries that kind of time, and a
    series counts only with one timestamp per step and the points filled
    that the kind leaves missing; the time is on the grid of the workload's
    frequency.
    """

    def __init__(
        self,
        target: str,
        workload: Workload,
        channels: int = 1,
        interval_coverages: Sequence[float] = (),
        time: str = "none",
    ) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else []
        self.channels = [
            grpc.aio.insecure_channel(target, options=options) for _ in range(channels)
        ]
        self.channel = self.channels[0]
        self.stubs = [pb_grpc.ForecastServiceStub(channel) for channel in self.channels]
        self.stub = self.stubs[0]
        self.horizon = workload.horizon
        self.intervals = len(interval_coverages)
        self.timestamps = 0 if time == "none" else workload.horizon
        self.filled = timecost.filled_points(time)
        self.requests = [
            timecost.with_time(
                pb.ForecastRequest(
                    model=workload.model,
                    version=workload.version,
                    history=history.tolist(),
                    horizon=workload.horizon,
                    interval_coverages=interval_coverages,
                ),
                time,
                timecost.grid(workload.frequency),
            )
            for history in workload.histories()
        ]

    async def __call__(self, i: int) -> tuple[int, int]:
        """One Forecast call (call i on channel i mod channels)."""
        reply = await self.stubs[i % len(self.stubs)].Forecast(
            self.requests[i % len(self.requests)], timeout=CALL_TIMEOUT_S
        )
        ok = (
            len(reply.values) == self.horizon
            and len(reply.intervals) == self.intervals
            and len(reply.timestamps) == self.timestamps
            and reply.filled_points == self.filled
        )
        return (1, 0) if ok else (0, 1)

    async def close(self) -> None:
        """Close the channels."""
        for channel in self.channels:
            await channel.close()


class GatewayBatch:
    """`ForecastBatch` through the gateway, `batch_size` series per call."""

    def __init__(self, target: str, workload: Workload, batch_size: int) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.stub = pb_grpc.ForecastServiceStub(self.channel)
        histories = workload.histories()
        self.requests = [
            pb.ForecastBatchRequest(
                model=workload.model,
                version=workload.version,
                horizon=workload.horizon,
                series=[
                    pb.Series(id=f"s{k}", history=histories[(start + k) % len(histories)].tolist())
                    for k in range(batch_size)
                ],
            )
            for start in range(0, len(histories), max(1, len(histories) // 8))
        ]

    async def __call__(self, i: int) -> tuple[int, int]:
        """One ForecastBatch call; a series counts when its result holds a forecast."""
        reply = await self.stub.ForecastBatch(
            self.requests[i % len(self.requests)], timeout=CALL_TIMEOUT_S
        )
        ok = sum(1 for result in reply.results if result.WhichOneof("outcome") == "forecast")
        return ok, len(reply.results) - ok

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


class DirectTriton:
    """The same requests straight to Triton with tritonclient.grpc.aio (normalized tensors)."""

    def __init__(self, url: str, workload: Workload) -> None:
        self.client = triton_aio.InferenceServerClient(url=url)
        self.workload = workload
        self.outputs = [InferRequestedOutput("FORECAST")]
        self.inputs = [self._inputs(window) for window in workload.normalized()]

    def _inputs(self, window: np.ndarray[Any, Any]) -> list[InferInput]:
        history = InferInput("HISTORY", [1, self.workload.window], "FP32")
        history.set_data_from_numpy(window.reshape(1, -1))
        horizon = InferInput("HORIZON", [1, 1], "INT32")
        horizon.set_data_from_numpy(np.full((1, 1), self.workload.horizon, dtype=np.int32))
        return [history, horizon]

    async def __call__(self, i: int) -> tuple[int, int]:
        """One infer call."""
        result = await self.client.infer(
            model_name=self.workload.model,
            model_version=self.workload.version,
            inputs=self.inputs[i % len(self.inputs)],
            outputs=self.outputs,
            client_timeout=CALL_TIMEOUT_S,
        )
        output = result.as_numpy("FORECAST")
        return (
            (1, 0) if output is not None and output.shape == (1, self.workload.horizon) else (0, 1)
        )

    async def close(self) -> None:
        """Close the client's channel."""
        await self.client.close()


class Baseline:
    """The hand-written server: raw float32 bytes over a proto-less gRPC method."""

    def __init__(self, target: str, workload: Workload) -> None:
        self.channel = grpc.aio.insecure_channel(target)
        self.method: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = self.channel.unary_unary(
            METHOD
        )
        self.horizon = workload.horizon
        self.requests = [encode_request(h, workload.horizon) for h in workload.histories()]

    async def __call__(self, i: int) -> tuple[int, int]:
        """One raw call."""
        reply = await self.method(self.requests[i % len(self.requests)], timeout=CALL_TIMEOUT_S)
        return (1, 0) if len(reply) == 4 * self.horizon else (0, 1)

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


class GatewayStream:
    """`StreamForecast`: one call, up to `in_flight` requests awaiting their answers."""

    def __init__(self, target: str, workload: Workload) -> None:
        self.unary = GatewayUnary(target, workload)
        self.runs = itertools.count()

    async def run(self, in_flight: int, seconds: float, max_calls: int) -> Samples:
        """Stream requests until `seconds` or `max_calls`, then half-close and read the rest."""
        samples = Samples()
        call = self.unary.stub.StreamForecast(timeout=seconds + CALL_TIMEOUT_S)
        window = asyncio.Semaphore(in_flight)
        sent: dict[str, float] = {}
        prefix = f"r{next(self.runs)}-"
        requests = self.unary.requests

        async def write() -> None:
            deadline = time.perf_counter() + seconds
            for i in range(max_calls):
                await window.acquire()
                if time.perf_counter() >= deadline:
                    break
                request_id = f"{prefix}{i}"
                sent[request_id] = time.perf_counter()
                await call.write(
                    pb.StreamForecastRequest(
                        request_id=request_id, request=requests[i % len(requests)]
                    )
                )
            await call.done_writing()

        writer = asyncio.create_task(write())
        try:
            async for reply in call:
                started = sent.pop(reply.request_id, None)
                window.release()
                if started is not None:
                    ok = reply.WhichOneof("outcome") == "forecast"
                    samples.add(time.perf_counter() - started, int(ok), int(not ok))
        except grpc.aio.AioRpcError as error:
            samples.fail(error)
        finally:
            writer.cancel()  # a no-op when it is done; else the stream ended early
            (outcome,) = await asyncio.gather(writer, return_exceptions=True)
        if isinstance(outcome, Exception):
            samples.fail(outcome)
        return samples

    async def close(self) -> None:
        """Close the channel."""
        await self.unary.close()
