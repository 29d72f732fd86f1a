"""`make run`: the whole stack in the foreground, Triton (embedded CPU build) + gateway.

Starts Triton on the model repository, waits until it is ready, runs the
gateway (or `workers` gateway processes under their supervisor) until Ctrl-C
or SIGTERM, then stops the gateway first (in-flight requests finish) and
Triton after it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from forecast_gateway.config import GatewayConfig, load_or_exit
from forecast_gateway.logs import configure_logging
from forecast_gateway.workers import Supervisor, worker_count
from tools.embedded_triton import TritonPorts, TritonProcess

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
        code = serve(config)
    except KeyboardInterrupt:
        code = 0
    finally:
        triton.stop()
    raise SystemExit(code)


def serve(config: GatewayConfig) -> int:
    """The gateway, or its worker processes under a supervisor (`workers` > 1); the exit code."""
    count = worker_count(config)
    if count > 1:
        return Supervisor(config, count).run()
    from forecast_gateway.api.server import run  # grpc only in the gateway's own process

    run(config)
    return 0


if __name__ == "__main__":
    main()
