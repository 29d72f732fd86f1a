"""`make run`: the whole stack in the foreground, Triton (embedded CPU build) + gateway.

Starts Triton on the model repository, waits until it is ready, runs the
gateway (or `workers` gateway processes under their supervisor) until Ctrl-C
or SIGTERM, then stops the gateway first (in-flight requests finish) and
Triton after it.

A model that fails to load does not stop the stack: the console names each
version Triton left unavailable with Triton's own load error, and the other
models serve. If Triton itself fails, the console shows the error lines of
its log (not its option table). `.run/triton.log` holds this run's log; the
previous run's is `.run/triton.previous.log`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import structlog

from forecast_gateway.config import GatewayConfig, load_or_exit
from forecast_gateway.logs import configure_logging
from forecast_gateway.workers import Supervisor, worker_count
from tools.embedded_triton import TritonPorts, TritonProcess, previous_log_path

log = structlog.get_logger(__name__)

TRITON_LOG = Path(".run/triton.log")


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
    triton = TritonProcess(repository, ports, log_path=TRITON_LOG)
    started = time.monotonic()
    triton.start()
    try:
        triton.wait_ready()
        unavailable = report_unavailable(triton)
        log.info(
            "stack_ready",
            triton_startup_s=round(time.monotonic() - started, 2),
            gateway=f"localhost:{config.port}",
            unavailable_versions=unavailable,
            triton_log=str(TRITON_LOG),
            previous_triton_log=str(previous_log_path(TRITON_LOG)),
            try_it=f"grpcurl -plaintext localhost:{config.port} list",
        )
        code = serve(config)
    except KeyboardInterrupt:
        code = 0
    except RuntimeError as error:  # Triton exited or never became ready
        log.error("triton_failed", error=str(error), triton_log=str(TRITON_LOG))
        code = 1
    finally:
        triton.stop()
    raise SystemExit(code)


def report_unavailable(triton: TritonProcess) -> int:
    """Log each version Triton failed to load, with Triton's reason; the number of them."""
    try:
        versions = triton.unavailable_versions()
    except OSError as error:  # the index is a courtesy here: the gateway reads it itself
        log.warning("triton_index_unreadable", error=str(error))
        return 0
    for version in versions:
        log.error(
            "model_unavailable",
            model=version.model,
            version=version.version or None,
            state=version.state or None,
            reason=" ".join(version.reason.split()),
        )
    return len(versions)


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
