"""`python -m forecast_gateway`: run the gateway against an already running Triton."""

from __future__ import annotations

import asyncio
import sys

from forecast_gateway.config import ConfigError, GatewayConfig
from forecast_gateway.logs import configure_logging
from forecast_gateway.routing_config import RoutingConfigError
from forecast_gateway.server import serve


def main() -> None:
    """Load the configuration (file + FORECAST_* env) and serve until SIGTERM/SIGINT."""
    try:
        config = GatewayConfig.load()
    except ConfigError as error:
        sys.stderr.write(f"forecast-gateway: invalid configuration: {error}\n")
        raise SystemExit(2) from error
    configure_logging(config.log_format, config.log_level)
    try:
        asyncio.run(serve(config))
    except RoutingConfigError as error:
        sys.stderr.write(f"forecast-gateway: invalid routing file: {error}\n")
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
