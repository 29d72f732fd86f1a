"""A throw-away PKI and a TLS gateway process, for the tests of secured gateways.

Certificates come from the openssl CLI, written to a tmp dir: a CA, a
server certificate for 127.0.0.1 / localhost, a client certificate from the
same CA, and a client certificate from an unrelated CA (docs/security.md
shows the same commands).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import GatewayProcess, spawn_gateway


@dataclass(frozen=True)
class Pki:
    """PEM files of the test CA, the gateway, and two clients."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path
    rogue_key: Path

    def credentials(
        self, client: tuple[Path, Path] | None = None, trust: Path | None = None
    ) -> grpc.ChannelCredentials:
        """Channel credentials trusting `trust` (default: the CA), with an optional client cert."""
        cert, key = client or (None, None)
        return grpc.ssl_channel_credentials(
            root_certificates=(trust or self.ca).read_bytes(),
            private_key=key.read_bytes() if key else None,
            certificate_chain=cert.read_bytes() if cert else None,
        )

    @property
    def client(self) -> tuple[Path, Path]:
        return self.client_cert, self.client_key

    @property
    def rogue(self) -> tuple[Path, Path]:
        return self.rogue_cert, self.rogue_key


def openssl(directory: Path, *args: str) -> None:
    binary = shutil.which("openssl") or "/usr/bin/openssl"
    subprocess.run([binary, *args], cwd=directory, check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> Path:
    openssl(
        directory,
        *("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-days", "2", "-subj", f"/CN={name}"),
        *("-keyout", f"{name}.key", "-out", f"{name}.pem"),
        *("-addext", "basicConstraints=critical,CA:TRUE"),
        *("-addext", "keyUsage=critical,keyCertSign,cRLSign"),
    )
    return directory / f"{name}.pem"


def issue(directory: Path, name: str, ca: str, extensions: str) -> tuple[Path, Path]:
    openssl(
        directory,
        *("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
        *("-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr"),
    )
    (directory / f"{name}.ext").write_text(extensions)
    openssl(
        directory,
        *("x509", "-req", "-in", f"{name}.csr", "-days", "2", "-CAcreateserial"),
        *("-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-out", f"{name}.pem"),
        *("-extfile", f"{name}.ext"),
    )
    return directory / f"{name}.pem", directory / f"{name}.key"


def make_pki(directory: Path) -> Pki:
    """A test CA, a gateway certificate for 127.0.0.1/localhost, a client of that CA and
    a client of another CA, written to `directory`."""
    ca = make_ca(directory, "test-ca")
    make_ca(directory, "rogue-ca")
    server = issue(
        directory,
        "gateway",
        "test-ca",
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    client_ext = "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n"
    client = issue(directory, "client", "test-ca", client_ext)
    rogue = issue(directory, "rogue-client", "rogue-ca", client_ext)
    return Pki(ca, *server, *client, *rogue)


def start_tls_gateway(
    triton_url: str, log_path: Path, credentials: grpc.ChannelCredentials, **env: str
) -> GatewayProcess:
    """conftest.start_gateway for a TLS port: the readiness probe goes over TLS too."""
    variables: dict[str, Any] = {"FORECAST_ROUTING_FILE": "", **env}
    gateway = spawn_gateway(triton_url, log_path, **variables)
    process = gateway.process
    deadline = time.monotonic() + 60
    with grpc.secure_channel(gateway.target, credentials) as channel:
        while time.monotonic() < deadline and process.poll() is None:
            try:
                health_check(channel)
                return gateway
            except grpc.RpcError:
                time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"TLS gateway did not become SERVING:\n{gateway.log_text()[-3000:]}")


def start_locked_gateway(triton_url: str, directory: Path, pki: Pki, token: str) -> GatewayProcess:
    """The locked-down configuration: mTLS, and a token required for reads as well as writes."""
    tokens = directory / "tokens"
    tokens.write_text(f"# gateway tokens\n{token}\n")
    return start_tls_gateway(
        triton_url,
        directory / "gateway.log",
        pki.credentials(pki.client),
        FORECAST_TLS_CERT_FILE=str(pki.server_cert),
        FORECAST_TLS_KEY_FILE=str(pki.server_key),
        FORECAST_TLS_CLIENT_CA_FILE=str(pki.ca),
        FORECAST_AUTH_TOKEN_FILE=str(tokens),
        FORECAST_AUTH_REQUIRED_FOR_READS="true",
    )


def health_check(channel: grpc.Channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
