"""The whole gateway in process: `create_gateway(config, backend=FakeBackend)` on port 0.

For fast tests of the gRPC edge (status codes, details, auth, shedding,
health, reflection, the request line, metrics, drain) without Triton; the
real-Triton functional tests keep what needs Triton.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from forecast.v1 import forecast_service_pb2_grpc
from forecast_gateway.api.server import Gateway, create_gateway
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from forecast_gateway.config import GatewayConfig, ModelConfig

PARAMETERS = {"default_horizon": "4", "max_horizon": "8", "sequence_length": "10"}


def backend() -> FakeBackend:
    """Model "m" (versions 1 and 2 ready) and "fallback" (version 1)."""
    return FakeBackend(
        {
            "m": FakeModel(dict(PARAMETERS), {"1": "READY", "2": "READY"}),
            "fallback": FakeModel(dict(PARAMETERS), {"1": "READY"}),
        }
    )


def config(tmp_path: Path, **fields: Any) -> GatewayConfig:
    """A gateway on 127.0.0.1:0 with a SQLite store in `tmp_path`, no routing file."""
    settings: dict[str, Any] = {
        "models": (ModelConfig("m"), ModelConfig("fallback")),
        "host": "127.0.0.1",
        "port": 0,
        "metrics_port": -1,
        "store_path": str(tmp_path / "ab.sqlite3"),
        "routing_file": "",
        "calibration_dir": "",
        "shutdown_drain_s": 0.0,
        "shutdown_grace_s": 5.0,
        **fields,
    }
    return GatewayConfig(**settings)


@dataclass
class Running:
    """A started in-process gateway and a client stub on a real loopback channel."""

    gateway: Gateway
    backend: FakeBackend
    channel: grpc.aio.Channel
    stub: forecast_service_pb2_grpc.ForecastServiceAsyncStub


@asynccontextmanager
async def running(
    tmp_path: Path, fake: FakeBackend | None = None, **fields: Any
) -> AsyncIterator[Running]:
    """Start the gateway, yield it with a stub, stop it (the drain included)."""
    fake = fake or backend()
    gateway = create_gateway(config(tmp_path, **fields), fake)
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield Running(
            gateway, fake, channel, forecast_service_pb2_grpc.ForecastServiceStub(channel)
        )
    finally:
        await channel.close()
        await gateway.stop()
