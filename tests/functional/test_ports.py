"""A port picked free and taken before the gateway binds it costs a retry, not a failed test."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from bench.services import free_port
from tests import conftest
from tests.conftest import start_gateway, stop_process
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional


def test_a_taken_port_is_retried_on_another(
    triton: TritonProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        first = [int(taken.getsockname()[1])]
        monkeypatch.setattr(conftest, "free_port", lambda: first.pop() if first else free_port())
        gateway = start_gateway(triton.grpc_url, tmp_path / "gateway.log")
        try:
            assert gateway.port != taken.getsockname()[1]
            assert "Failed to add port" in gateway.log_text()  # the first try met the taken port
        finally:
            stop_process(gateway.process)
