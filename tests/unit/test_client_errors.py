"""The Python client and CLI against a real in-process gRPC server (port 0).

The servicer is a stand-in for the gateway that aborts with the same kind of
rich status (`google.rpc.BadRequest` + `ErrorInfo`), so these tests cover the
status -> ForecastError conversion and the CLI's output, not the gateway.
"""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from hypothesis import given
from hypothesis import strategies as st

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client import FieldViolation, ForecastClient, ForecastError, from_rpc_error
from forecast_client.cli import main
from forecast_client.client import ModelInfo, ModelVersionInfo
from forecast_client.render import models_text
from forecast_client.series_input import InputError, parse_csv, parse_history

EMPTY_HISTORY = "history is empty; send at least the window"


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _abort(context: grpc.ServicerContext, code: int, message: str, *details: Message) -> None:
    status = status_pb2.Status(code=code, message=message, details=[_packed(d) for d in details])
    context.abort_with_status(rpc_status.to_status(status))


def _info(reason: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="forecast.v1")


def _model(name: str) -> forecast_pb2.Model:
    ready = forecast_pb2.MODEL_VERSION_STATE_READY
    return forecast_pb2.Model(
        name=name,
        description=f"{name} for tests",
        default_version="2",
        default_horizon=12,
        max_horizon=52,
        versions=[
            forecast_pb2.ModelVersion(
                version="1", state=ready, sequence_length=10, min_sequence_length=10,
                max_sequence_length=10, description="window 10",
            ),
            forecast_pb2.ModelVersion(
                version="2", state=forecast_pb2.MODEL_VERSION_STATE_LOADING, sequence_length=52,
                min_sequence_length=52, max_sequence_length=52, description="window 52",
            ),
        ],
    )  # fmt: skip


class FakeGateway(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Answers like the gateway: model "missing" is NOT_FOUND, "down" is UNAVAILABLE."""

    def __init__(self) -> None:
        self.metadata: list[dict[str, str]] = []

    def Forecast(
        self, request: forecast_service_pb2.ForecastRequest, context: grpc.ServicerContext
    ) -> forecast_service_pb2.ForecastResponse:
        self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
        if request.model == "missing":
            _abort(context, code_pb2.NOT_FOUND, "model 'missing' is not served",
                   _info("MODEL_NOT_FOUND"))  # fmt: skip
        if request.model == "down":
            context.abort(grpc.StatusCode.UNAVAILABLE, "triton is unreachable")
        violations = []
        if not request.history:
            violations.append(("history", EMPTY_HISTORY))
        elif not all(math.isfinite(v) for v in request.history):
            violations.append(("history", "history holds NaN or infinite values"))
        if request.horizon < 0:
            violations.append(("horizon", "horizon must be >= 0"))
        if violations:
            bad_request = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                    for f, d in violations
                ]
            )
            _abort(context, code_pb2.INVALID_ARGUMENT, "the request is invalid", bad_request,
                   _info("INVALID_ARGUMENT"))  # fmt: skip
        horizon = request.horizon or 3
        last = request.history[-1]
        decision = (
            forecast_pb2.ROUTING_DECISION_PINNED
            if request.version
            else forecast_pb2.ROUTING_DECISION_DEFAULT
        )
        return forecast_service_pb2.ForecastResponse(
            forecast_id="f-1",
            model=request.model,
            version=request.version or "2",
            values=[last + step for step in range(1, horizon + 1)],
            routing_decision=decision,
            horizon=horizon,
            sequence_length=request.sequence_length or len(request.history),
        )

    def ListModels(
        self, request: forecast_service_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> forecast_service_pb2.ListModelsResponse:
        return forecast_service_pb2.ListModelsResponse(
            models=[_model("lstm_timeseries"), _model("moving_average")]
        )

    def GetModel(
        self, request: forecast_service_pb2.GetModelRequest, context: grpc.ServicerContext
    ) -> forecast_service_pb2.GetModelResponse:
        if request.name not in {"lstm_timeseries", "moving_average"}:
            _abort(context, code_pb2.NOT_FOUND, f"model {request.name!r} is not served",
                   _info("MODEL_NOT_FOUND"))  # fmt: skip
        return forecast_service_pb2.GetModelResponse(model=_model(request.name))


@pytest.fixture(scope="module")
def fake() -> Iterator[tuple[str, FakeGateway]]:
    servicer = FakeGateway()  # type: ignore[abstract]  # plays only the RPCs its tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(None)


@pytest.fixture
def target(fake: tuple[str, FakeGateway]) -> str:
    return fake[0]


@pytest.fixture
def closed_target() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- the client and the status conversion ---------------------------------------


def test_forecast_maps_the_response(fake: tuple[str, FakeGateway]) -> None:
    target, servicer = fake
    with ForecastClient(target, metadata=[("x-request-id", "req-7")]) as client:
        pinned = client.forecast("lstm_timeseries", [1.0, 2.0, 3.0], version="1", horizon=2)
        chosen = client.forecast("lstm_timeseries", [1, 2, 3])
    assert pinned.values == [4.0, 5.0]
    assert (pinned.version, pinned.routing_decision, pinned.horizon) == ("1", "pinned", 2)
    assert (chosen.version, chosen.routing_decision, chosen.sequence_length) == ("2", "default", 3)
    assert servicer.metadata[-1]["x-request-id"] == "req-7"


def test_models_map_versions_and_states(target: str) -> None:
    with ForecastClient(target) as client:
        models = client.list_models()
        one = client.get_model("moving_average")
    assert [m.name for m in models] == ["lstm_timeseries", "moving_average"]
    assert [(v.version, v.state, v.sequence_length) for v in one.versions] == [
        ("1", "ready", 10),
        ("2", "loading", 52),
    ]
    assert (one.default_version, one.default_horizon, one.max_horizon) == ("2", 12, 52)


def test_bad_request_becomes_field_violations(target: str) -> None:
    with ForecastClient(target) as client, pytest.raises(ForecastError) as raised:
        client.forecast("lstm_timeseries", [], horizon=-1)
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message == "the request is invalid"
    assert (error.reason, error.domain) == ("INVALID_ARGUMENT", "forecast.v1")
    assert error.field_violations == (
        FieldViolation("history", EMPTY_HISTORY),
        FieldViolation("horizon", "horizon must be >= 0"),
    )
    assert isinstance(error.__cause__, grpc.RpcError)


def test_error_info_reason_without_violations(target: str) -> None:
    with ForecastClient(target) as client, pytest.raises(ForecastError) as raised:
        client.get_model("nope")
    assert raised.value.code is grpc.StatusCode.NOT_FOUND
    assert raised.value.reason == "MODEL_NOT_FOUND"
    assert raised.value.field_violations == ()


def test_status_without_details(target: str) -> None:
    with ForecastClient(target) as client, pytest.raises(ForecastError) as raised:
        client.forecast("down", [1.0])
    assert raised.value.code is grpc.StatusCode.UNAVAILABLE
    assert raised.value.message == "triton is unreachable"
    assert (raised.value.reason, raised.value.field_violations) == (None, ())


def test_unreachable_gateway_is_unavailable(closed_target: str) -> None:
    # 5 s: the default retry policy tries 5 times before giving up (about 1.5 s).
    with ForecastClient(closed_target, timeout_s=5) as client, pytest.raises(ForecastError) as e:
        client.list_models()
    assert e.value.code is grpc.StatusCode.UNAVAILABLE


async def test_aio_errors_convert_the_same_way(target: str) -> None:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Forecast(forecast_service_pb2.ForecastRequest(model="m"), timeout=5)
    error = from_rpc_error(raised.value)
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.field_violations == (FieldViolation("history", EMPTY_HISTORY),)


# --- the CLI's output -------------------------------------------------------------


def test_cli_predict_json(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", target, "--json", "predict", "--model", "m", "--version", "1",
                 "--horizon", "2", "--history", "1, 2 3"])  # fmt: skip
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert json.loads(out) == {
        "forecastId": "f-1",
        "model": "m",
        "version": "1",
        "values": [4.0, 5.0],
        "routingDecision": "ROUTING_DECISION_PINNED",
        "horizon": 2,
        "sequenceLength": 3,
    }


def test_cli_predict_table(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FORECAST_TARGET", target)
    assert main(["predict", "--model", "m", "--history", "1,2,3"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "m version 2 (default), window 3, horizon 3"
    assert out.splitlines()[3:] == ["STEP  VALUE", "1     4", "2     5", "3     6"]


def test_cli_invalid_argument_text(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--target", target, "predict", "--model", "m", "--history", ""])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (
        "error: INVALID_ARGUMENT: the request is invalid\n"
        f"  field history: {EMPTY_HISTORY}\n"
        "  reason: INVALID_ARGUMENT (domain forecast.v1)\n"
    )


def test_cli_error_json_with_options_after_the_command(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["predict", "--target", target, "--json", "--model", "m", "--history", "1,nan"])
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert json.loads(err) == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "message": "the request is invalid",
            "reason": "INVALID_ARGUMENT",
            "domain": "forecast.v1",
            "fieldViolations": [
                {"field": "history", "description": "history holds NaN or infinite values"}
            ],
        }
    }


@pytest.mark.parametrize(
    ("model", "exit_code", "first_line"),
    [
        ("missing", 2, "error: NOT_FOUND: model 'missing' is not served"),
        ("down", 1, "error: UNAVAILABLE: triton is unreachable"),
    ],
)
def test_cli_exit_codes(
    target: str, model: str, exit_code: int, first_line: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "predict", "--model", model, "--history", "1"]) == exit_code
    assert capsys.readouterr().err.splitlines()[0] == first_line


def test_cli_unreachable_gateway(closed_target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", closed_target, "--timeout", "5", "models"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: UNAVAILABLE: ")
    assert f"hint: is a gateway listening on {closed_target}? If it uses TLS" in err
    assert "Traceback" not in err


def test_cli_models_table_and_json(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--target", target, "models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["MODEL", "VERSION", "STATE", "REPLICAS", "WINDOW", "RANGE",
                                "DEFAULT", "HORIZON", "(MAX)", "OUTPUT", "FREQUENCIES"]  # fmt: skip
    assert lines[2].split() == ["lstm_timeseries", "2", "loading", "0", "52", "52-52", "*", "12",
                                "(52)", "point", "any"]  # fmt: skip
    assert main(["--target", target, "--json", "models", "moving_average"]) == 0
    model = json.loads(capsys.readouterr().out)["model"]
    assert (model["name"], model["defaultVersion"], model["maxHorizon"]) == (
        "moving_average",
        "2",
        52,
    )
    assert model["versions"][0] == {
        "version": "1",
        "state": "MODEL_VERSION_STATE_READY",
        "sequenceLength": 10,
        "minSequenceLength": 10,
        "maxSequenceLength": 10,
        "description": "window 10",
        "replicasReady": 0,
        "unavailableReason": "",
        "outputKind": "",
        "quantileLevels": [],
        "frequencies": [],
    }


def test_cli_predict_from_csv(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "series.csv"
    path.write_text("date,units,price,note\n2024-01-01,5,1.5,a\n2024-01-02,7,1.25,b\n")
    assert main(["--target", target, "--json", "predict", "--model", "m", "--csv", str(path),
                 "--column", "units", "--horizon", "1"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["values"] == [8.0]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--history", "1,two,3"], "--history"),
        (["--csv", "/nonexistent/series.csv"], "--csv"),
        (["--history", "1", "--column", "x"], "--column"),
    ],
)
def test_cli_input_errors_are_local(
    target: str, args: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--target", target, "predict", "--model", "m", *args]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: INVALID_ARGUMENT: invalid input"
    assert err[1].startswith(f"  field {field}: ")


def test_cli_usage_error_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        main(["predict", "--history", "1"])  # no --model
    assert raised.value.code == 2
    assert "--model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as raised:
        main(["--json", "predict", "--history", "1"])
    assert raised.value.code == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "--model" in error["message"]


# --- reading the series -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "expected"),
    [
        ("1\n2\n3\n", None, [1.0, 2.0, 3.0]),
        ("value\n1\n2\n", None, [1.0, 2.0]),
        ("date,value\n2024-01-01,1.5\n2024-01-02,-2e3\n", None, [1.5, -2000.0]),
        ("date,a,b,note\nd1,1,10,x\nd2,2,20,y\n", None, [10.0, 20.0]),
        ("date,a,b,note\nd1,1,10,x\nd2,2,20,y\n", "a", [1.0, 2.0]),
        ("\ufeffy\n\n1\n\n2\n", None, [1.0, 2.0]),
        ("y\n1\nnan\n", "y", [1.0, math.nan]),
        (" a , b \n 1 , 2 \n", "b", [2.0]),
    ],
)
def test_parse_csv(text: str, column: str | None, expected: list[float]) -> None:
    assert parse_csv(text, column) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize(
    ("text", "column", "field", "fragment"),
    [
        ("", None, "--csv", "no rows"),
        ("value\n", None, "--csv", "no data rows"),
        ("date,note\nd1,x\n", None, "--csv", "no column holds only numbers"),
        ("t;y\n1;2\n", None, "--csv", "no column holds only numbers"),  # not comma-separated
        ("y\n1\noops\n", "y", "--csv", "line 3, y: 'oops' is not a number"),
        ("y\n1\n", "z", "--column", "'z' is not in the header"),
        ("1,2\n3,4\n", "y", "--column", "no header row"),
    ],
)
def test_parse_csv_errors(text: str, column: str | None, field: str, fragment: str) -> None:
    with pytest.raises(InputError) as raised:
        parse_csv(text, column)
    assert raised.value.field == field
    assert fragment in raised.value.description


def test_parse_history_separators_and_empty() -> None:
    assert parse_history(" 1, 2.5 ,-3\t4e1 ") == [1.0, 2.5, -3.0, 40.0]
    assert parse_history("") == []
    with pytest.raises(InputError, match="value 2"):
        parse_history("1,x")


@given(st.lists(st.floats(allow_nan=False, allow_infinity=False), min_size=1))
def test_series_round_trip(values: list[float]) -> None:
    assert parse_history(",".join(repr(v) for v in values)) == values
    assert parse_csv("value\n" + "\n".join(repr(v) for v in values)) == values


def test_the_models_table_says_what_each_version_declares_and_why_one_is_unavailable() -> None:
    versions = (
        ModelVersionInfo("1", "ready", 28, 28, 28, "", 1, "", "quantiles", (0.1, 0.5, 0.9), ("D",)),
        ModelVersionInfo("2", "unavailable", 0, 0, 0, "", 0, "Internal: no weights\n"),
    )
    text = models_text([ModelInfo("team", "", "1", 14, 14, versions)])
    lines = text.splitlines()
    assert lines[1].split()[-3:] == ["quantiles", "(3)", "D"]
    assert lines[-1] == "team 2: Internal: no weights"
