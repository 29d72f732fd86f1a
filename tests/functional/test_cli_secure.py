"""Every `forecast` command, and ForecastClient, against a locked-down gateway process.

The gateway serves TLS only, asks for a client certificate from the test CA
(mTLS) and a bearer token for every call, reads included. Each command runs
once with the flags and once with the FORECAST_* variables; then the
failures a user meets first (no token, a wrong token, no CA, no client
certificate) must say what to pass, and no output may contain the token.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forecast_client import ForecastClient
from forecast_client.cli import build_parser
from tests.conftest import VENV_BIN, GatewayProcess, served_models, stop_process
from tests.pki import Pki, make_pki, start_locked_gateway
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

TOKEN = "tok-cli-secure-5e0c9a1f3b7d4e2a8c6b0d9e"
WRONG = "tok-cli-wrong-00000000000000000000000"
HISTORY = ",".join(str(float(v % 7)) for v in range(60))
# Every subcommand with arguments that succeed on moving_average; {id} is a forecast id.
COMMANDS: dict[str, tuple[str, ...]] = {
    "predict": ("predict", "--model", "moving_average", "--horizon", "3", "--history", HISTORY),
    "models": ("models",),
    "models NAME": ("models", "moving_average"),
    "compare": ("compare", "--model", "moving_average", "--versions", "1,2", "--horizon", "3",
                "--history", HISTORY),
    "report": ("report", "--forecast-id", "{id}", "--actuals", "1,2,3"),
    "experiment": ("experiment", "--model", "moving_average"),
    "plot": ("plot", "--model", "moving_average", "--horizon", "3", "--history", HISTORY,
             "--actuals", "1,2,3", "--output", "{dir}/plot.png"),
    "backtest": ("backtest", "--model", "moving_average", "--history", HISTORY, "--horizon", "3",
                 "--windows", "2", "--versions", "1"),
    "operations": ("operations", "list"),
}  # fmt: skip
CONNECTION_VARIABLES = (
    "FORECAST_CACERT",
    "FORECAST_CERT",
    "FORECAST_KEY",
    "FORECAST_TOKEN",
    "FORECAST_TOKEN_FILE",
    "FORECAST_TLS",
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure_gateway(
    triton: TritonProcess, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("cli_secure")
    process = start_locked_gateway(triton.grpc_url, directory, pki, TOKEN)
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(f"{TOKEN}\n")
    return path


@pytest.fixture
def env(secure_gateway: GatewayProcess, tmp_path: Path) -> dict[str, str]:
    """The environment of a user with no connection settings yet."""
    base = {k: v for k, v in os.environ.items() if k not in CONNECTION_VARIABLES}
    return {
        **base,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FORECAST_TARGET": secure_gateway.target,
        "MPLCONFIGDIR": str(tmp_path / "matplotlib"),
    }


def forecast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("forecast", path=env["PATH"])
    assert executable is not None, "the `forecast` console script is not on PATH"
    result = subprocess.run(
        [executable, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert TOKEN not in result.stdout + result.stderr
    assert WRONG not in result.stdout + result.stderr
    return result


def succeeds(env: dict[str, str], *args: str) -> Any:
    result = forecast(env, "--json", *args)
    assert (result.returncode, result.stderr) == (0, ""), (args, result.stderr)
    return json.loads(result.stdout)


def flags(pki: Pki, token_file: Path) -> tuple[str, ...]:
    return ("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key",
            str(pki.client_key), "--token-file", str(token_file))  # fmt: skip


def command(name: str, forecast_id: str, directory: Path) -> tuple[str, ...]:
    return tuple(a.format(id=forecast_id, dir=directory) for a in COMMANDS[name])


def test_the_commands_here_are_every_command_of_the_cli() -> None:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    assert set(subparsers.choices or ()) == {name.split()[0] for name in COMMANDS}


@pytest.mark.parametrize("how", ["flags", "environment", "token flag, system roots"])
def test_every_command_reaches_a_tls_token_gateway(
    env: dict[str, str], pki: Pki, token_file: Path, tmp_path: Path, how: str
) -> None:
    options: tuple[str, ...] = ()
    if how == "flags":
        options = flags(pki, token_file)
    elif how == "environment":
        env |= {"FORECAST_CACERT": str(pki.ca), "FORECAST_CERT": str(pki.client_cert),
                "FORECAST_KEY": str(pki.client_key), "FORECAST_TOKEN": TOKEN}  # fmt: skip
    else:  # --tls trusts gRPC's default roots, which this variable replaces
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(pki.ca)
        options = ("--tls", "--cert", str(pki.client_cert), "--key", str(pki.client_key),
                   "--token", TOKEN)  # fmt: skip
    predicted = succeeds(env, *options, *command("predict", "", tmp_path))
    assert len(predicted["values"]) == 3
    outputs = {
        name: succeeds(env, *options, *command(name, predicted["forecastId"], tmp_path))
        for name in COMMANDS
        if name != "predict"
    }
    assert [m["name"] for m in outputs["models"]["models"]] == served_models()
    assert outputs["models NAME"]["model"]["name"] == "moving_average"
    assert [f["version"] for f in outputs["compare"]["forecasts"]] == ["1", "2"]
    assert outputs["report"]["stepsReceived"] == 3
    assert outputs["experiment"]["model"] == "moving_average"
    assert (tmp_path / "plot.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_without_a_token_every_command_says_to_pass_one(
    env: dict[str, str], pki: Pki, tmp_path: Path, name: str
) -> None:
    tls = ("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    result = forecast(env, *tls, *command(name, "f-unknown", tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: UNAUTHENTICATED: this call needs a token: send metadata "
        "'authorization: Bearer <token>'",
        "  reason: TOKEN_MISSING (domain forecast.v1)",
        "  hint: this call needs a token: pass --token-file FILE (or --token, FORECAST_TOKEN)",
    ]


def test_a_wrong_token_is_refused_and_never_printed(env: dict[str, str], pki: Pki) -> None:
    tls = ("--cacert", str(pki.ca), "--cert", str(pki.client_cert), "--key", str(pki.client_key))
    for output in ("--json", "--timeout=10"):
        result = forecast(env, output, *tls, "--token", WRONG, "models")  # checks WRONG not shown
        assert result.returncode == 1
        assert "PERMISSION_DENIED" in result.stderr and "TOKEN_INVALID" in result.stderr
        assert "the gateway does not accept this token" in result.stderr


@pytest.mark.parametrize(
    ("case", "hint"),
    [
        ("no CA: plaintext", "If it uses TLS, pass --cacert FILE"),
        ("no client certificate", "needs --cert and --key"),
        ("another CA", "--cacert must be the CA that signed its certificate"),
        ("--tls: the system's roots", "--cacert must be the CA that signed its certificate"),
    ],
)
def test_tls_failures_say_which_option_is_missing(
    env: dict[str, str], pki: Pki, token_file: Path, case: str, hint: str
) -> None:
    client = ("--cert", str(pki.client_cert), "--key", str(pki.client_key))
    options = {
        "no CA: plaintext": (),
        "no client certificate": ("--cacert", str(pki.ca)),
        "another CA": ("--cacert", str(pki.rogue_cert), *client),
        "--tls: the system's roots": ("--tls", *client),
    }[case]
    result = forecast(env, *options, "--token-file", str(token_file), "--timeout", "5", "models")
    assert result.returncode == 1 and result.stdout == ""
    # gRPC core itself may log the failed handshakes first (lines starting "I1130 ...").
    *_, error, last = result.stderr.splitlines()
    assert error.startswith("error: UNAVAILABLE: "), result.stderr
    assert last.startswith(f"  hint: is a gateway listening on {env['FORECAST_TARGET']}")
    assert hint in last


def test_the_client_library_reaches_every_rpc(secure_gateway: GatewayProcess, pki: Pki) -> None:
    history = [float(v % 7) for v in range(60)]
    with ForecastClient(
        secure_gateway.target,
        cacert=pki.ca,
        cert=pki.client_cert,
        key=pki.client_key,
        token=TOKEN,
    ) as client:
        forecast = client.forecast("moving_average", history, horizon=3)
        batch = client.forecast_batch("moving_average", {"a": history, "b": history})
        stream = list(
            client.stream_forecast([("r1", {"model": "moving_average", "history": history})])
        )
        comparison = client.compare_versions("moving_average", history, versions=["1", "2"])
        report = client.report_actuals(forecast.forecast_id, [1.0, 2.0, 3.0])
        experiment = client.get_experiment("moving_average")
        models = client.list_models()
        model = client.get_model("moving_average")
    assert len(forecast.values) == 3
    assert [o.ok for o in batch] == [True, True] and [o.ok for o in stream] == [True]
    assert [f.error for f in comparison.forecasts] == [None, None]
    assert report.steps_received == 3
    assert experiment.model == model.name == "moving_average"
    assert sorted(m.name for m in models) == served_models()
