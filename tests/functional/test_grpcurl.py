"""The README's grpcurl commands, with the real grpcurl binary, through server reflection."""

from __future__ import annotations

import json
import subprocess

from tests.conftest import VENV_BIN, GatewayProcess, served_models

SERVICE = "forecast.v1.ForecastService"


def grpcurl(
    gateway: GatewayProcess, *command: str, data: object = None
) -> subprocess.CompletedProcess[str]:
    """Run `grpcurl -plaintext [-d JSON] TARGET COMMAND...` against the gateway."""
    options = ["-d", json.dumps(data)] if data is not None else []
    return subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", *options, gateway.target, *command],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_list_shows_the_service_health_and_reflection(gateway: GatewayProcess) -> None:
    result = grpcurl(gateway, "list")
    assert result.returncode == 0, result.stderr
    services = result.stdout.split()
    assert SERVICE in services
    assert "grpc.health.v1.Health" in services
    assert "grpc.reflection.v1alpha.ServerReflection" in services
    assert "grpc.reflection.v1.ServerReflection" in services


def test_describe_shows_the_request_fields(gateway: GatewayProcess) -> None:
    result = grpcurl(gateway, "describe", "forecast.v1.ForecastRequest")
    assert result.returncode == 0, result.stderr
    for field in ("model", "version", "routing_key", "history", "horizon", "sequence_length"):
        assert field in result.stdout


def test_forecast_with_json_through_reflection(gateway: GatewayProcess) -> None:
    # Input: the proto3 JSON names (lowerCamelCase), as users script them.
    request = {
        "model": "moving_average",
        "version": "1",
        "routingKey": "store-17",
        "history": [float(x) for x in range(30)],
        "horizon": 4,
        "sequenceLength": 5,
    }
    result = grpcurl(gateway, f"{SERVICE}/Forecast", data=request)
    assert result.returncode == 0, result.stderr
    # Output: grpcurl 1.8.6 prints the proto field names (forecast_id, routing_decision).
    reply = json.loads(result.stdout)
    assert set(reply) >= {
        "forecast_id",
        "model",
        "version",
        "values",
        "routing_decision",
        "horizon",
    }
    assert reply["version"] == "1" and len(reply["values"]) == 4
    assert reply["sequence_length"] == 5 and reply["values"][0] == 27.0
    assert reply["routing_decision"] == "ROUTING_DECISION_PINNED"


def test_list_models_through_reflection(gateway: GatewayProcess) -> None:
    result = grpcurl(gateway, f"{SERVICE}/ListModels", data={})
    assert result.returncode == 0, result.stderr
    names = [m["name"] for m in json.loads(result.stdout)["models"]]
    assert names == served_models()


def test_health_answers_serving(gateway: GatewayProcess) -> None:
    for service in ("", SERVICE):
        result = grpcurl(gateway, "grpc.health.v1.Health/Check", data={"service": service})
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["status"] == "SERVING"


def test_invalid_request_shows_status_and_field(gateway: GatewayProcess) -> None:
    result = grpcurl(
        gateway, f"{SERVICE}/Forecast", data={"model": "lstm_timeseries", "history": []}
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr and "history" in result.stderr
