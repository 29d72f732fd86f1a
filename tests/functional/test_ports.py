"""No port is picked free and handed on to a gateway; fixed-port servers retry a taken one.

A gateway binds port 0 and the tests read the port it reports, so no other
process can take (or, with SO_REUSEPORT, share) its port in between. Triton
and PostgreSQL only take fixed ports: one taken before they bind it costs a
retry on another, not a failed test.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.services import free_port
from tests import conftest
from tests.conftest import listening_ports, start_gateway, start_postgres, stop_process
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional


@pytest.fixture
def taken() -> Iterator[int]:
    """A port another socket listens on (without SO_REUSEPORT)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_gateway_binds_a_port_of_its_own_pick(
    triton: TritonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    def no_pick() -> int:
        raise AssertionError("a gateway's port was picked by the tests")

    monkeypatch.setattr(conftest, "free_port", no_pick)
    gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log")
    try:
        assert gateway.port not in (0, taken)
        assert {gateway.port, gateway.metrics_port} <= listening_ports(gateway.process.pid)
        assert "Failed to add port" not in gateway.log_text()
    finally:
        stop_process(gateway.process)


def test_triton_listens_on_its_ports_itself(triton: TritonProcess) -> None:
    assert triton.pid is not None
    ports = triton.ports
    assert {ports.http, ports.grpc, ports.metrics} <= listening_ports(triton.pid)


def test_a_taken_postgres_port_is_retried_on_another(
    monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    first = [taken]
    monkeypatch.setattr(conftest, "free_port", lambda: first.pop() if first else free_port())
    server = start_postgres()
    try:
        assert server.port != taken and not first  # the first try met the taken port
        assert server.create_database("retried").endswith(f":{server.port}/retried")
    finally:
        server.stop()
