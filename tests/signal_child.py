"""A gateway process with a slow start, for the signal tests (`python -m tests.signal_child`).

The fake backend's first catalog read takes START_S, so the test can signal
the process while the gateway is still starting. Prints "started" once
serving and "stopped" once serve() has returned.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile

from forecast_gateway.api.server import serve
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from forecast_gateway.config import GatewayConfig, ModelConfig

START_S = 1.0


class SlowStart(FakeBackend):
    started = False
    """Whether the slow first read is over (later reads are the fake's own)."""

    async def version_states(self) -> dict[str, dict[str, str]]:
        if not self.started:
            sys.stdout.write("starting\n")
            sys.stdout.flush()
            await asyncio.sleep(START_S)
            sys.stdout.write("started\n")
            sys.stdout.flush()
            self.started = True
        return await super().version_states()


def main() -> None:
    scratch = tempfile.mkdtemp(prefix="signal-child-")
    config = GatewayConfig(
        models=(ModelConfig("m"),),
        port=0,
        metrics_port=-1,
        store_path=f"{scratch}/ab.sqlite3",
        routing_file="",
        calibration_dir="",
        shutdown_drain_s=0.0,
        shutdown_grace_s=1.0,
    )
    model = FakeModel(
        {"default_horizon": "4", "max_horizon": "8", "sequence_length": "10"}, {"1": "READY"}
    )
    asyncio.run(serve(config, backend=SlowStart({"m": model})))
    sys.stdout.write("stopped\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
