"""`python -m forecast_gateway`: run the gateway against an already running Triton."""

from __future__ import annotations

from forecast_gateway.config import load_or_exit
from forecast_gateway.logs import configure_logging
from forecast_gateway.server import run


def main() -> None:
    """Load the configuration (file + FORECAST_* env) and serve until SIGTERM/SIGINT."""
    config = load_or_exit()
    configure_logging(config.log_format, config.log_level)
    run(config)


if __name__ == "__main__":
    main()
