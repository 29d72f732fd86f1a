"""The installed `forecast` command against the real gateway and Triton.

Runs the console script as a user would (a subprocess with `cli_env`, whose
FORECAST_TARGET points at the session's gateway) and checks stdout, stderr and
the exit status.
"""

from __future__ import annotations

import json
import math
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.functional

HORIZON = 12
# A seasonal series with a trend, long enough for every window (52 at most).
SERIES = [round(350 + 3 * math.sin(2 * math.pi * i / 52) + 0.03 * i, 3) for i in range(80)]
INLINE = ",".join(str(value) for value in SERIES)
FORECAST_KEYS = {
    "forecastId",
    "model",
    "version",
    "values",
    "routingDecision",
    "horizon",
    "sequenceLength",
}


def forecast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `forecast` executable found on env's PATH."""
    executable = shutil.which("forecast", path=env["PATH"])
    assert executable is not None, "the `forecast` console script is not on cli_env's PATH"
    return subprocess.run(
        [executable, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def forecast_json(env: dict[str, str], *args: str) -> Any:
    result = forecast(env, "--json", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def test_predict_inline_prints_a_table(cli_env: dict[str, str]) -> None:
    result = forecast(cli_env, "predict", "--model", "lstm_timeseries", "--version", "1",
                      "--horizon", str(HORIZON), "--history", INLINE)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"lstm_timeseries version 1 (pinned), window 10, horizon {HORIZON}"
    assert lines[3].split() == ["STEP", "VALUE"]
    rows = [line.split() for line in lines[4:]]
    assert [int(step) for step, _ in rows] == list(range(1, HORIZON + 1))
    assert all(math.isfinite(float(value)) for _, value in rows)


@pytest.mark.parametrize(
    ("model", "version", "window"),
    [("lstm_timeseries", "1", 10), ("lstm_timeseries", "2", 52), ("moving_average", "1", 10)],
)
def test_predict_json(cli_env: dict[str, str], model: str, version: str, window: int) -> None:
    body = forecast_json(cli_env, "predict", "--model", model, "--version", version,
                         "--routing-key", "cli-test", "--horizon", str(HORIZON),
                         "--history", INLINE)  # fmt: skip
    assert set(body) == FORECAST_KEYS
    assert (body["model"], body["version"], body["routingDecision"]) == (
        model,
        version,
        "ROUTING_DECISION_PINNED",
    )
    assert (body["horizon"], body["sequenceLength"]) == (HORIZON, window)
    assert len(body["values"]) == HORIZON
    assert all(isinstance(v, float) and math.isfinite(v) for v in body["values"])
    assert body["forecastId"]


def test_predict_without_version_reports_the_default(cli_env: dict[str, str]) -> None:
    body = forecast_json(cli_env, "predict", "--model", "lstm_timeseries", "--history", INLINE)
    assert body["routingDecision"] == "ROUTING_DECISION_DEFAULT"
    assert body["version"] in {"1", "2"}
    assert len(body["values"]) == body["horizon"] > 0


@pytest.mark.parametrize(
    ("header", "row", "column_args"),
    [
        ("week,co2", "2001-01-{day:02d},{value}", []),
        ("week,co2,count", "2001-01-{day:02d},{value},{day}", ["--column", "co2"]),
    ],
    ids=["last-numeric-column", "named-column"],
)
def test_predict_from_csv_matches_inline(
    cli_env: dict[str, str], tmp_path: Path, header: str, row: str, column_args: list[str]
) -> None:
    path = tmp_path / "series.csv"
    rows = [row.format(day=day % 28 + 1, value=value) for day, value in enumerate(SERIES)]
    path.write_text("\n".join([header, *rows]) + "\n")
    request = ["predict", "--model", "moving_average", "--version", "1", "--horizon", "6"]
    from_csv = forecast_json(cli_env, *request, "--csv", str(path), *column_args)
    inline = forecast_json(cli_env, *request, "--history", INLINE)
    assert len(from_csv["values"]) == 6
    assert from_csv["values"] == pytest.approx(inline["values"])


def test_models_lists_both_models(cli_env: dict[str, str]) -> None:
    models = {m["name"]: m for m in forecast_json(cli_env, "models")["models"]}
    assert {"lstm_timeseries", "moving_average"} <= set(models)
    windows = {v["version"]: v["sequenceLength"] for v in models["lstm_timeseries"]["versions"]}
    assert windows == {"1": 10, "2": 52}
    assert {v["version"] for v in models["moving_average"]["versions"]} >= {"1", "2"}

    table = forecast(cli_env, "models")
    assert table.returncode == 0, table.stderr
    assert "lstm_timeseries" in table.stdout
    assert "moving_average" in table.stdout


def test_models_name_describes_one(cli_env: dict[str, str]) -> None:
    model = forecast_json(cli_env, "models", "lstm_timeseries")["model"]
    assert model["name"] == "lstm_timeseries"
    assert model["maxHorizon"] >= model["defaultHorizon"] > 0
    assert {v["version"]: v["state"] for v in model["versions"]} == {
        "1": "MODEL_VERSION_STATE_READY",
        "2": "MODEL_VERSION_STATE_READY",
    }


@pytest.mark.parametrize(
    ("args", "code", "field"),
    [
        (["--model", "lstm_timeseries", "--history", ""], "INVALID_ARGUMENT", "history"),
        (["--model", "lstm_timeseries", "--history", f"{INLINE},nan"], "INVALID_ARGUMENT",
         "history"),
        (["--model", "no_such_model", "--history", INLINE], "NOT_FOUND", None),
    ],
    ids=["empty-history", "nan", "unknown-model"],
)  # fmt: skip
def test_invalid_request_exits_2_with_the_status(
    cli_env: dict[str, str], args: list[str], code: str, field: str | None
) -> None:
    result = forecast(cli_env, "predict", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {code}: ")
    if field is not None:
        assert any(line.startswith(f"  field {field}") for line in lines[1:]), result.stderr


def test_invalid_request_json_error_on_stderr(cli_env: dict[str, str]) -> None:
    result = forecast(cli_env, "--json", "predict", "--model", "lstm_timeseries", "--history", "")
    assert (result.returncode, result.stdout) == (2, "")
    error = json.loads(result.stderr)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["domain"] == "forecast.v1"
    assert "history" in [violation["field"] for violation in error["fieldViolations"]]


def test_target_flag_overrides_the_environment(cli_env: dict[str, str], gateway: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{sock.getsockname()[1]}"
    env = {**cli_env, "FORECAST_TARGET": closed}

    unreachable = forecast(env, "--timeout", "3", "models")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: UNAVAILABLE: ")
    assert "Traceback" not in unreachable.stderr

    assert forecast(env, "--target", gateway.target, "models").returncode == 0
