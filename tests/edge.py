"""The whole gateway in process for tests of its gRPC edge (tests/unit/test_edge_*.py).

`serving(tmp_path)` builds the gateway with `create_gateway(config,
FakeBackend)` on 127.0.0.1 port 0 (metrics off, a SQLite A/B store in
`tmp_path`, no routing file unless given), starts it in the test's own event
loop and yields an `Edge`: the gateway, the fake, and a real grpc.aio
channel over loopback with a ForecastService stub. The fake serves two
models shaped like the shipped ones (lstm_timeseries: v1 window 10, v2
window 52; moving_average: any window from 1 to 1024, v1 the window's mean).

The helpers read what a caller sees: the status with its google.rpc details
(`failure`, `details`), the request lines (`captured_logs`, `request_lines`)
and Prometheus samples (`sample`). `until` polls a condition with a deadline:
nothing here waits a fixed time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import structlog
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from forecast_gateway.api.server import Gateway, create_gateway
from forecast_gateway.backends.base import Rows
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from forecast_gateway.config import GatewayConfig, ModelConfig
from forecast_gateway.core.routing import sticky_version
from tests.polling import eventually

LSTM = "lstm_timeseries"
MA = "moving_average"
SERVICE = "forecast.v1.ForecastService"
LSTM_PARAMETERS = {
    "default_horizon": "5",
    "max_horizon": "64",
    "v1.sequence_length": "10",
    "v2.sequence_length": "52",
}
MA_PARAMETERS = {
    "default_horizon": "5",
    "max_horizon": "64",
    "sequence_length": "10",
    "min_sequence_length": "1",
    "max_sequence_length": "1024",
    "v2.sequence_length": "52",
}
HISTORY = [float(i % 7) for i in range(60)]
"""60 points: enough for every version's window. Last value 3.0; mean of the last 10: 2.7."""
LAST = HISTORY[-1]
MEAN_OF_10 = sum(HISTORY[-10:]) / 10

POLL_S = 0.002
"""How often `until` looks: conditions here are made true by tasks of the test's own loop."""

LogEvents = list[MutableMapping[str, Any]]
"""Captured log events (event dicts, the bound context merged in)."""

SHIPPED_ROUTING = """
[models.lstm_timeseries]
split = { "1" = 10, "2" = 90 }
shadow = { version = "1", percent = 100 }
fallback = { model = "moving_average", version = "1" }
experiment = "edge-demo"
"""
"""config/routing.toml's policy shape, under an experiment of its own."""


def key_routed_to(version: str) -> str:
    """A routing key that SHIPPED_ROUTING's split sends to lstm_timeseries `version`."""
    split = [("1", 10.0), ("2", 90.0)]
    keys = (f"key-{i}" for i in range(1000))
    return next(key for key in keys if sticky_version(LSTM, key, split) == version)


def window_mean(windows: Rows, horizon: int) -> Rows:
    """Each row's mean, repeated: moving_average v1 (in z units, so the window's mean)."""
    return np.repeat(windows.mean(axis=1, keepdims=True), horizon, axis=1).astype(np.float32)


def fake_backend(**states: dict[str, str]) -> FakeBackend:
    """The two models, every version READY unless `states` (model -> version -> state) says."""
    return FakeBackend(
        {
            LSTM: FakeModel(dict(LSTM_PARAMETERS), states.get(LSTM, {"1": "READY", "2": "READY"})),
            MA: FakeModel(
                dict(MA_PARAMETERS),
                states.get(MA, {"1": "READY", "2": "READY"}),
                forecasts={"1": window_mean},
            ),
        }
    )


def gateway_config(tmp_path: Path, **fields: Any) -> GatewayConfig:
    """127.0.0.1:0, metrics off, SQLite in `tmp_path`, no routing file, no calibration files.

    The background catalog refresh is slow (60 s) so that a test that turns
    the fake down sees the catalog it left; health tests set their own.
    """
    settings: dict[str, Any] = {
        "models": (ModelConfig(LSTM, "2"), ModelConfig(MA, "1")),
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "store_path": str(tmp_path / "experiments.sqlite3"),
        "routing_file": "",
        "calibration_dir": "",
        "catalog_refresh_s": 60.0,
        "shutdown_drain_s": 0.0,
        "shutdown_grace_s": 5.0,
        **fields,
    }
    return GatewayConfig(**settings)


def routing_file(tmp_path: Path, text: str = SHIPPED_ROUTING) -> str:
    """A routing file in `tmp_path` holding `text`; its path."""
    path = tmp_path / "routing.toml"
    path.write_text(text)
    return str(path)


@dataclass
class Edge:
    """A started gateway, its fake backend and a client over a real loopback channel."""

    gateway: Gateway
    backend: FakeBackend
    channel: grpc.aio.Channel
    stub: forecast_service_pb2_grpc.ForecastServiceAsyncStub
    stopped: bool = False

    def raw(self, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
        """A unary ForecastService method that sends and returns bytes as they are."""
        return self.channel.unary_unary(f"/{SERVICE}/{method}")

    async def stop(self) -> None:
        """Gateway.stop() (the drain), once."""
        if not self.stopped:
            self.stopped = True
            await self.gateway.stop()


@asynccontextmanager
async def serving(
    tmp_path: Path, backend: FakeBackend | None = None, **fields: Any
) -> AsyncIterator[Edge]:
    """Build and start the gateway with `fields` over `gateway_config`; stop it at the end."""
    fake = backend if backend is not None else fake_backend()
    gateway = create_gateway(gateway_config(tmp_path, **fields), fake)
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    edge = Edge(gateway, fake, channel, forecast_service_pb2_grpc.ForecastServiceStub(channel))
    try:
        yield edge
    finally:
        if fake.gate is not None:
            fake.gate.set()  # never leave a held call behind
        await channel.close()
        await edge.stop()


def forecast_request(**fields: Any) -> pb.ForecastRequest:
    """A ForecastRequest for lstm_timeseries over HISTORY, `fields` overriding."""
    return pb.ForecastRequest(**{"model": LSTM, "history": HISTORY, **fields})


async def failure(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    """The error a call that must fail ends with."""
    try:
        outcome = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {outcome!r}")


@dataclass(frozen=True)
class Details:
    """The google.rpc details of a failed call."""

    info: error_details_pb2.ErrorInfo
    violations: list[tuple[str, str]]
    """BadRequest field violations: (field, description)."""

    @property
    def fields(self) -> list[str]:
        """The violated fields, in order."""
        return [f for f, _ in self.violations]


def details(error: grpc.aio.AioRpcError) -> Details:
    """ErrorInfo and BadRequest of `error`, checked to agree with its status code and message."""
    raw = dict(error.trailing_metadata() or ()).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), f"no google.rpc status details: {error!r}"
    status = status_pb2.Status.FromString(raw)
    assert status.code == error.code().value[0]
    assert status.message == error.details()
    infos, violations = [], []
    for packed in status.details:
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            infos.append(info)
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations += [(v.field, v.description) for v in bad.field_violations]
        else:
            raise AssertionError(f"unexpected detail {packed.type_url}")
    assert len(infos) == 1, f"{len(infos)} ErrorInfo details"
    return Details(infos[0], violations)


def trailer(metadata: grpc.aio.Metadata | None, key: str) -> list[str | bytes]:
    """Every value of `key` in trailing metadata."""
    return [value for k, value in (metadata or ()) if k == key]


async def until(
    predicate: Callable[[], object], what: str = "the condition", timeout_s: float = 5.0
) -> None:
    """Poll `predicate` on the loop until it is true; AssertionError after `timeout_s`."""
    await eventually(predicate, timeout_s=timeout_s, interval_s=POLL_S, message=what)


async def until_answers(
    check: Callable[[], Awaitable[object]], what: str = "the condition", timeout_s: float = 5.0
) -> None:
    """`until` for a condition that takes a call (an RPC): `check()` is awaited at each poll."""
    await eventually(check, timeout_s=timeout_s, interval_s=POLL_S, message=what)


async def calls_in_progress(
    edge: Edge, count: int, version: str = "1"
) -> list[asyncio.Task[pb.ForecastResponse]]:
    """`count` Forecast calls of lstm_timeseries `version`, once all are in progress.

    In progress: admitted by the load shedder and not yet answered (a test
    holds them with `edge.backend.gate`); none may be in progress before.
    """
    calls = [
        asyncio.ensure_future(edge.stub.Forecast(forecast_request(version=version)))
        for _ in range(count)
    ]
    await until(lambda: edge.gateway.shedder.in_flight == count, f"{count} calls in progress")
    return calls


@contextmanager
def captured_logs() -> Iterator[LogEvents]:
    """Every log event while inside, with the bound context (request_id, rpc, reason)."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        yield logs


def request_lines(logs: LogEvents, rpc: str = "") -> LogEvents:
    """The canonical request lines among `logs` (of `rpc` only, when given)."""
    return [e for e in logs if e["event"] == "request" and (not rpc or e.get("rpc") == rpc)]


async def one_request_line(logs: LogEvents, rpc: str = "") -> MutableMapping[str, Any]:
    """The request line of the one call made (written on the loop turn after the response)."""
    await until(lambda: request_lines(logs, rpc), "the request line")
    await asyncio.sleep(0)  # a second line, were one written, would be written by now
    (line,) = request_lines(logs, rpc)
    return line


def sample(name: str, labels: Mapping[str, str] | None = None) -> float:
    """A sample's current value in the default Prometheus registry (0 if never set)."""
    return REGISTRY.get_sample_value(name, dict(labels or {})) or 0.0


def requests_counted(
    rpc: str, code: str, model: str = "", version: str = "", routing: str = ""
) -> float:
    """forecast_gateway_requests_total for one label set."""
    labels = {"rpc": rpc, "model": model, "version": version, "routing": routing, "code": code}
    return sample("forecast_gateway_requests_total", labels)
