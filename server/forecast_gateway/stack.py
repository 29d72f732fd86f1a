"""`make run`: the whole stack in the foreground, Triton (embedded CPU build) + gateway.

Starts Triton on the model repository, waits until it is ready, runs the
gateway until Ctrl-C or SIGTERM, then stops the gateway first (in-flight
requests finish) and Triton after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from forecast_gateway.config import load_or_exit
from forecast_gateway.embedded_triton import TritonPorts, TritonProcess
from forecast_gateway.logs import configure_logging
from forecast_gateway.server import run

log = structlog.get_logger(__name__)


def main() -> None:
    """Run Triton and the gateway until interrupted."""
    env = os.environ
    ports = TritonPorts(
        http=int(env.get("TRITON_HTTP_PORT", "8000")),
        grpc=int(env.get("TRITON_GRPC_PORT", "8001")),
        metrics=int(env.get("TRITON_METRICS_PORT", "8002")),
    )
    config = load_or_exit({**env, "FORECAST_TRITON_URL": f"127.0.0.1:{ports.grpc}"})
    configure_logging(config.log_format, config.log_level)
    repository = Path(env.get("FORECAST_MODEL_REPOSITORY", "model_repository"))
    triton = TritonProcess(repository, ports, log_path=Path(".run/triton.log"))
    started = time.monotonic()
    triton.start()
    try:
        triton.wait_ready()
        log.info(
            "stack_ready",
            triton_startup_s=round(time.monotonic() - started, 2),
            gateway=f"localhost:{config.port}",
            triton_log=".run/triton.log",
            try_it=f"grpcurl -plaintext localhost:{config.port} list",
        )
        run(config)
    except KeyboardInterrupt:
        pass
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
