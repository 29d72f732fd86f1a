"""`triton_url` to a gRPC target: one Triton, a list of replicas, or a name gRPC resolves.

Forms accepted (see docs/architecture.md, "Several Triton replicas"):

- `host:port`: one Triton, dialled exactly as given (gRPC's pick_first).
- `a:port,b:port,...`: a fixed list of replicas, IP literals or `localhost`
  (`[::1]:8001` for IPv6). Turned into gRPC's own `ipv4:` / `ipv6:` target,
  balanced per call with round_robin. Host names are refused in a list: they
  would be resolved once and never again, so a replica that moves would be
  lost silently; `dns:///name:port` is the form that re-resolves.
- `scheme:...` (`dns:///triton-headless.ns.svc.cluster.local:8001`, `ipv4:`,
  `ipv6:`, `unix:`...): passed to gRPC unchanged, balanced with round_robin.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass

from forecast_gateway.errors import ConfigError

GRPC_SCHEMES = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")
"""Target schemes gRPC resolves itself; such a `triton_url` is passed through unchanged."""


ROUND_ROBIN = json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})
"""Service config that spreads calls over every connected replica, one call at a time."""


@dataclass(frozen=True)
class TritonTarget:
    """Where the gateway's channels to Triton connect, and how they balance."""

    grpc_target: str
    """What gRPC dials."""
    replicas: tuple[str, ...]
    """host:port of each replica when the gateway knows them (a list or an ipv4:/ipv6:
    target); empty when gRPC resolves a name (dns:///...) and the set may change."""
    balanced: bool
    """Whether calls are spread over several replicas (round_robin)."""

    def channel_options(self) -> list[tuple[str, str | int]]:
        """Channel options for the balancing policy (none for a single Triton)."""
        if not self.balanced:
            return []
        # The gateway's policy wins over a service config published in DNS TXT records.
        return [("grpc.service_config", ROUND_ROBIN), ("grpc.service_config_disable_resolution", 1)]


def parse_target(url: str) -> TritonTarget:
    """Parse `triton_url`; raise ConfigError with the form to use when it cannot work."""
    url = url.strip()
    if not url:
        raise ConfigError("triton_url: empty; expected host:port, a comma list or dns:///name:port")
    if url.lower().startswith(GRPC_SCHEMES):
        return TritonTarget(url, _scheme_replicas(url), balanced=True)
    items = [item.strip() for item in url.split(",")]
    if len(items) == 1:
        return TritonTarget(url, (url,), balanced=False)
    hosts = [_split(item) for item in items]
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"triton_url: {url!r} lists a replica twice")
    families = {isinstance(ipaddress.ip_address(host), ipaddress.IPv6Address) for host, _ in hosts}
    if len(families) > 1:
        raise ConfigError(
            f"triton_url: {url!r} mixes IPv4 and IPv6 replicas; gRPC balances one family per list"
        )
    replicas = tuple(_join(host, port) for host, port in hosts)
    scheme = "ipv6" if families == {True} else "ipv4"
    return TritonTarget(f"{scheme}:{','.join(replicas)}", replicas, balanced=True)


def _split(item: str) -> tuple[str, int]:
    """An item of a comma list as (IP literal, port); `localhost` is 127.0.0.1."""
    host, sep, port = item.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"triton_url: {item!r} is not host:port (a port from 1 to 65535)")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host.lower() == "localhost":
        return "127.0.0.1", int(port)
    try:
        return str(ipaddress.ip_address(host)), int(port)
    except ValueError:
        raise ConfigError(
            f"triton_url: {host!r} in a list must be an IP address; for a name that "
            f"resolves to every replica use dns:///{host}:{port}"
        ) from None


def _join(host: str, port: int) -> str:
    """host:port, with IPv6 literals in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _scheme_replicas(url: str) -> tuple[str, ...]:
    """The addresses of an `ipv4:` / `ipv6:` target; empty for a name gRPC resolves."""
    scheme, _, rest = url.partition(":")
    if scheme.lower() not in ("ipv4", "ipv6"):
        return ()
    return tuple(item.strip() for item in rest.lstrip("/").split(",") if item.strip())
