"""`python -m forecast_gateway`: run the gateway against an already running Triton."""

from __future__ import annotations

from forecast_gateway.config import load_or_exit
from forecast_gateway.logs import configure_logging
from forecast_gateway.workers import Supervisor, worker_count


def main() -> None:
    """Load the configuration (file + FORECAST_* env) and serve until SIGTERM/SIGINT.

    With several workers this process is their supervisor and never imports
    grpc (workers are spawned: see workers.py); with one it is the gateway.
    """
    config = load_or_exit()
    configure_logging(config.log_format, config.log_level)
    count = worker_count(config)
    if count > 1:
        raise SystemExit(Supervisor(config, count).run())
    from forecast_gateway.api.server import run

    run(config)


if __name__ == "__main__":
    main()
