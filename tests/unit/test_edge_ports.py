"""Binding the gateway's port: one single-worker gateway per port, a clear error otherwise.

gRPC sets SO_REUSEPORT on its listening sockets unless told not to; a
single gateway started on a port another process holds would then share
it silently, the kernel handing each new connection to either. Only the
worker supervisor's processes share a port, on purpose.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from forecast_gateway.api.ports import BindError
from forecast_gateway.api.server import create_gateway
from tests.edge import LSTM, forecast_request, gateway_config, serving


async def test_a_second_single_worker_gateway_on_a_taken_port_fails_to_start(
    tmp_path: Path,
) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    async with serving(tmp_path / "first") as first:
        taken = first.gateway.port
        with pytest.raises(BindError) as raised:
            create_gateway(gateway_config(tmp_path / "second", port=taken))
        # The first gateway still answers: the failed start did not disturb it.
        response = await first.stub.Forecast(forecast_request(version="1"))
    message = str(raised.value)
    assert f"127.0.0.1:{taken}" in message and "in use" in message
    assert response.model == LSTM
    # Nothing was opened for the gateway that did not start.
    assert not (tmp_path / "second" / "experiments.sqlite3").exists()
