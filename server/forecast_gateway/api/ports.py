"""The gateway's listening port: binding it, and the options that bound its connections' life."""

from __future__ import annotations

import grpc

from forecast_gateway.config import GatewayConfig

KEEPALIVE_TIME_MS = 60_000
"""How often the server pings a connection that has been quiet (gRPC's default is 2 hours)."""
KEEPALIVE_TIMEOUT_MS = 20_000
INT32_MAX = 2**31 - 1


class BindError(RuntimeError):
    """The gateway's address could not be bound (taken by another process, or not local)."""


def bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    """Add the listening port (TLS when `credentials`); the port bound, or BindError."""
    try:
        port = (
            server.add_insecure_port(address)
            if credentials is None
            else server.add_secure_port(address, credentials)
        )
    except RuntimeError as error:  # grpcio raises on a failed bind (older ones returned 0)
        raise BindError(_cannot_bind(address)) from error
    if port == 0:
        raise BindError(_cannot_bind(address))
    return port


def _cannot_bind(address: str) -> str:
    return (
        f"could not bind {address}: the port is in use by another process "
        "(a single gateway does not share its port), or the host is not an address of this machine"
    )


def connection_options(config: GatewayConfig) -> list[tuple[str, int]]:
    """Channel arguments that bound the life of client connections.

    Keepalive pings find peers that vanished without closing TCP (a node
    lost, a NAT entry dropped), so their connections do not live forever.
    """
    options = [
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ]
    if config.idle_timeout_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(config.idle_timeout_s * 1000)))
    if config.max_connection_age_s > 0:
        # No forced close after the GOAWAY: calls in progress, long streams
        # included, run to their end; new calls go over a new connection.
        options += [
            ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", INT32_MAX),
        ]
    return options
