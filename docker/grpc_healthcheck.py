"""Container health check for the gateway: one grpc.health.v1 Check call.

Docker's HEALTHCHECK and compose's `healthcheck:` can only run a command, and
the gateway image has no grpc_health_probe binary, but it does have Python and
grpcio-health-checking. This script exits 0 when the gateway answers SERVING
and 1 otherwise (not listening, timeout, NOT_SERVING, unknown service).
Kubernetes does not need it: its native `grpc:` probe speaks the same protocol.

Usage: python grpc_healthcheck.py [--address HOST:PORT] [--service NAME] [--timeout S]
The address defaults to 127.0.0.1:$FORECAST_PORT (50051).
"""

from __future__ import annotations

import argparse
import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def check(address: str, service: str, timeout_s: float) -> int:
    """Return 0 if `service` at `address` reports SERVING, else 1."""
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
        except grpc.RpcError as error:
            sys.stderr.write(f"unhealthy: {error.code().name} {error.details()}\n")
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    if response.status != health_pb2.HealthCheckResponse.SERVING:
        sys.stderr.write(f"unhealthy: {status}\n")
        return 1
    return 0


def main() -> None:
    """Parse arguments and exit with the check's result."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    port = os.environ.get("FORECAST_PORT", "50051")
    parser.add_argument("--address", default=f"127.0.0.1:{port}")
    parser.add_argument("--service", default="", help='"" is the server as a whole')
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds")
    args = parser.parse_args()
    sys.exit(check(args.address, args.service, args.timeout))


if __name__ == "__main__":
    main()
