"""The `forecast` command's A/B subcommands (compare, report, experiment, plot) and the
client's batch/stream/compare/actuals/experiment methods, against a real gateway whose
routing file shadows lstm_timeseries v1 (v2, the default, serves; v1 forecasts every
request on the side and is scored against the same actuals).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from forecast_client import ForecastArgs, ForecastClient
from tests.conftest import VENV_BIN, GatewayProcess, start_gateway, stop_process
from tools.embedded_triton import TritonProcess
from training.data import load_co2, train_test_split

pytestmark = pytest.mark.functional

ROUTING = """
[models.lstm_timeseries]
shadow = { version = "1", percent = 100 }
experiment = "cli-test"
"""
HORIZON = 6
SERIES = load_co2()
_, HELD_OUT = train_test_split(SERIES)
ORIGIN = len(SERIES) - len(HELD_OUT)  # first held-out point
HISTORY = SERIES[:ORIGIN]
ACTUALS = SERIES[ORIGIN : ORIGIN + HORIZON]
INLINE = ",".join(f"{value:.3f}" for value in HISTORY[-80:])


@pytest.fixture(scope="module")
def shadow_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("cli_ab")
    routing = directory / "routing.toml"
    routing.write_text(ROUTING)
    process = start_gateway(
        triton.grpc_url, directory / "gateway.log", FORECAST_ROUTING_FILE=str(routing)
    )
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def env(shadow_gateway: GatewayProcess) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FORECAST_TARGET": shadow_gateway.target,
        "MPLCONFIGDIR": str(shadow_gateway.log_path.parent / "matplotlib"),
    }


@pytest.fixture(scope="module")
def client(shadow_gateway: GatewayProcess) -> Iterator[ForecastClient]:
    with ForecastClient(shadow_gateway.target, timeout_s=30) as forecast_client:
        yield forecast_client


@pytest.fixture(scope="module")
def history_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("series") / "co2.csv"
    path.write_text("week,co2\n" + "".join(f"{i},{v:.4f}\n" for i, v in enumerate(HISTORY)))
    return path


def forecast(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("forecast", path=env["PATH"])
    assert executable is not None, "the `forecast` console script is not on PATH"
    return subprocess.run(
        [executable, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def forecast_json(env: dict[str, str], *args: str) -> Any:
    result = forecast(env, "--json", *args)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    return json.loads(result.stdout)


def assert_fails(
    result: subprocess.CompletedProcess[str], exit_code: int, code: str, field: str | None = None
) -> None:
    assert result.returncode == exit_code, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"error: {code}: "), result.stderr
    if field is not None:
        assert any(line.startswith(f"  field {field}") for line in lines[1:]), result.stderr


def report_until_shadow_scored(
    client: ForecastClient, forecast_id: str, actuals: list[float]
) -> set[str]:
    """Report actuals (repeating is harmless: steps are overwritten) until v1's shadow is in."""
    deadline = time.monotonic() + 5
    while True:
        report = client.report_actuals(forecast_id, actuals)
        roles = {score.role for score in report.scores}
        if "shadow" in roles or time.monotonic() > deadline:
            return roles
        time.sleep(0.05)


def test_compare_table_and_json(env: dict[str, str], history_csv: Path) -> None:
    request = ["compare", "--model", "lstm_timeseries", "--horizon", "8"]
    body = forecast_json(env, *request, "--csv", str(history_csv), "--versions", "1,2")
    assert body["model"] == "lstm_timeseries"
    by_version = {f["version"]: f for f in body["forecasts"]}
    assert set(by_version) == {"1", "2"}
    assert (by_version["1"]["sequenceLength"], by_version["2"]["sequenceLength"]) == (10, 52)
    for version in by_version.values():
        assert version["error"] is None and version["latencyMs"] > 0
        assert len(version["values"]) == 8
    (difference,) = body["differences"]
    gap = np.abs(np.subtract(by_version["1"]["values"], by_version["2"]["values"]))
    assert difference["meanAbsoluteDifference"] == pytest.approx(gap.mean())
    assert difference["maxAbsoluteDifference"] == pytest.approx(gap.max())

    table = forecast(env, *request, "--history", INLINE)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == "lstm_timeseries: 2 version(s), horizon 8"
    assert lines[2].split() == ["VERSION", "WINDOW", "LATENCY", "ms", "STATUS"]
    assert lines[3].split()[:2] == ["1", "10"] and lines[3].split()[-1] == "ok"
    assert lines[4].split()[:2] == ["2", "52"] and lines[4].split()[-1] == "ok"
    assert lines[6].split() == ["STEP", "v1", "v2"]
    assert [line.split()[0] for line in lines[7:15]] == [str(step) for step in range(1, 9)]
    assert lines[16].split() == ["VERSIONS", "MEAN", "|A-B|", "MAX", "|A-B|"]
    assert lines[17].startswith("1 vs 2")


def test_compare_errors(env: dict[str, str]) -> None:
    assert_fails(
        forecast(env, "compare", "--model", "lstm_timeseries", "--versions", "7",
                 "--history", INLINE),
        2, "NOT_FOUND",
    )  # fmt: skip
    assert_fails(
        forecast(env, "compare", "--model", "lstm_timeseries", "--history", "1,2,3"),
        2, "INVALID_ARGUMENT", "history",
    )  # fmt: skip


def test_report_prints_the_served_and_shadow_scores(
    env: dict[str, str], history_csv: Path, client: ForecastClient
) -> None:
    predicted = forecast_json(env, "predict", "--model", "lstm_timeseries", "--csv",
                              str(history_csv), "--horizon", str(HORIZON))  # fmt: skip
    assert (predicted["version"], predicted["routingDecision"]) == ("2", "ROUTING_DECISION_DEFAULT")
    forecast_id = predicted["forecastId"]
    time.sleep(0.2)  # the shadow forecast runs off the response path

    first = ",".join(f"{v:.4f}" for v in ACTUALS[:3])
    table = forecast(env, "report", "--forecast-id", forecast_id, "--actuals", first)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0] == f"forecast {forecast_id} (lstm_timeseries): 3 of {HORIZON} steps received"
    assert lines[2].split() == ["VERSION", "ROLE", "STEPS", "MAE", "sMAPE", "%", "MASE"]
    served = lines[3].split()
    assert served[:3] == ["2", "served", "3"]
    mae = np.abs(np.asarray(predicted["values"][:3]) - ACTUALS[:3]).mean()
    assert float(served[3]) == pytest.approx(mae, rel=1e-4)

    rest = ",".join(f"{v:.4f}" for v in ACTUALS[3:])
    body = forecast_json(env, "report", "--forecast-id", forecast_id, "--actuals", rest,
                         "--offset", "3")  # fmt: skip
    assert (body["forecastId"], body["model"]) == (forecast_id, "lstm_timeseries")
    assert (body["horizon"], body["stepsReceived"]) == (HORIZON, HORIZON)
    scores = {score["role"]: score for score in body["scores"]}
    assert set(scores) == {"SCORE_ROLE_SERVED", "SCORE_ROLE_SHADOW"}, body
    assert (scores["SCORE_ROLE_SERVED"]["version"], scores["SCORE_ROLE_SHADOW"]["version"]) == (
        "2",
        "1",
    )
    for score in scores.values():
        assert score["stepsScored"] == HORIZON
        assert score["mae"] > 0 and score["smape"] > 0 and score["mase"] > 0


def test_report_errors_print_the_status_without_traceback(env: dict[str, str]) -> None:
    unknown = forecast(env, "report", "--forecast-id", "no-such-id", "--actuals", "1,2")
    assert_fails(unknown, 2, "NOT_FOUND")
    assert "  reason: " in unknown.stderr

    as_json = forecast(env, "--json", "report", "--forecast-id", "no-such-id", "--actuals", "1")
    assert (as_json.returncode, as_json.stdout) == (2, "")
    assert json.loads(as_json.stderr)["error"]["code"] == "NOT_FOUND"

    local = forecast(env, "report", "--forecast-id", "x", "--actuals", "1,two")
    assert_fails(local, 2, "INVALID_ARGUMENT", "--actuals")


def test_experiment_after_scoring_held_out_co2(env: dict[str, str], client: ForecastClient) -> None:
    paired = 0
    for origin in range(ORIGIN, ORIGIN + 30 * 7, 7):
        history, actuals = SERIES[:origin], SERIES[origin : origin + HORIZON]
        result = client.forecast("lstm_timeseries", history.tolist(), horizon=HORIZON)
        assert result.version == "2"
        paired += "shadow" in report_until_shadow_scored(
            client, result.forecast_id, actuals.tolist()
        )
    assert paired >= 25

    body = forecast_json(env, "experiment", "--model", "lstm_timeseries")
    assert body["model"] == "lstm_timeseries"
    versions = {v["version"]: v for v in body["versions"]}
    assert versions["2"]["requestsServed"] >= 30 and versions["1"]["requestsShadowed"] >= 30
    for version in versions.values():
        assert version["actualsReceived"] >= 25
        assert version["errors"]["count"] >= 25 and version["errors"]["maseMean"] > 0
    assert versions["2"]["latency"]["p50Ms"] > 0
    (comparison,) = body["comparisons"]
    assert (comparison["test"], comparison["metric"]) == ("paired t-test", "mase")
    assert comparison["samples"] >= 25
    assert comparison["ciLow"] <= comparison["meanDifference"] <= comparison["ciHigh"]
    assert comparison["significant"] == (comparison["pValue"] < 0.05)

    assert body["experiment"] == "cli-test" and body["forecasts"] >= 30
    assert comparison["verdict"].startswith(("version 2 is more accurate", "not conclusive yet"))
    assert comparison["conclusive"] == comparison["verdict"].startswith("version")
    assert comparison["csLow"] <= comparison["meanDifference"] <= comparison["csHigh"]

    table = forecast(env, "experiment", "--model", "lstm_timeseries")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith(f"lstm_timeseries: experiment cli-test ({body['forecasts']} ")
    assert lines[2] == f"1 vs 2: {comparison['verdict']}"  # the verdict comes first
    header = lines.index(next(line for line in lines if line.startswith("VERSION ")))
    assert lines[header].split() == [
        "VERSION", "SERVED", "SHADOWED", "ACTUALS", "MAE", "sMAPE", "%", "MASE",
        "P50", "ms", "P95", "ms", "P99", "ms",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[header + 1 : header + 3]}
    assert rows["2"][1] == str(versions["2"]["requestsServed"])
    assert rows["1"][2] == str(versions["1"]["requestsShadowed"])
    assert lines[header + 4].split()[:4] == ["VERSIONS", "TEST", "METRIC", "SAMPLES"]
    row = lines[header + 5]
    assert row.startswith(f"{comparison['versionA']} vs {comparison['versionB']}")
    assert "paired t-test" in row
    assert row.split()[-1] == ("yes" if comparison["significant"] else "no")
    assert lines[header + 6].startswith("mean difference = ")

    listed = forecast_json(env, "experiment", "--model", "lstm_timeseries", "--list")
    assert [(e["experiment"], e["current"]) for e in listed["experiments"]] == [("cli-test", True)]
    old = forecast(env, "experiment", "--model", "lstm_timeseries", "--experiment", "nope")
    assert_fails(old, 2, "NOT_FOUND")


def test_experiment_unknown_model(env: dict[str, str]) -> None:
    assert_fails(forecast(env, "experiment", "--model", "no_such_model"), 2, "NOT_FOUND")


def test_plot_writes_a_png(env: dict[str, str], history_csv: Path, tmp_path: Path) -> None:
    actuals_csv = tmp_path / "actuals.csv"
    actuals_csv.write_text("co2\n" + "".join(f"{v:.4f}\n" for v in ACTUALS))
    output = tmp_path / "plot.png"
    result = forecast(env, "plot", "--model", "lstm_timeseries", "--csv", str(history_csv),
                      "--versions", "1,2", "--horizon", str(HORIZON), "--actuals-csv",
                      str(actuals_csv), "--last", "60", "--output", str(output))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{output}\n"
    png = output.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    assert struct.unpack(">II", png[16:24]) == (1200, 600)
    assert len(png) > 10_000

    inline = tmp_path / "inline.png"
    body = forecast_json(env, "plot", "--model", "lstm_timeseries", "--history", INLINE,
                         "--actuals", "340,341", "--output", str(inline))  # fmt: skip
    assert body["output"] == str(inline) and inline.stat().st_size > 10_000
    assert {f["version"] for f in body["forecasts"]} == {"1", "2"}


def test_plot_errors(env: dict[str, str], tmp_path: Path) -> None:
    missing_dir = tmp_path / "no" / "such" / "dir" / "plot.png"
    result = forecast(env, "plot", "--model", "lstm_timeseries", "--history", INLINE,
                      "--output", str(missing_dir))  # fmt: skip
    assert_fails(result, 2, "INVALID_ARGUMENT", "--output")
    result = forecast(env, "plot", "--model", "no_such_model", "--history", INLINE,
                      "--output", str(tmp_path / "x.png"))  # fmt: skip
    assert_fails(result, 2, "NOT_FOUND")
    assert not (tmp_path / "x.png").exists()


def test_client_batch_and_stream(client: ForecastClient) -> None:
    windows = {f"co2-{i}": SERIES[: ORIGIN + i].tolist() for i in range(5)}
    outcomes = client.forecast_batch(
        "lstm_timeseries", {**windows, "too-short": [1.0, 2.0]}, horizon=HORIZON
    )
    assert [o.id for o in outcomes] == [*windows, "too-short"]
    for outcome in outcomes[:-1]:
        assert outcome.ok and outcome.forecast is not None and outcome.error is None
        assert len(outcome.forecast.values) == HORIZON and outcome.forecast.forecast_id
    bad = outcomes[-1]
    assert not bad.ok and bad.error is not None
    assert bad.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "history" in [v.field for v in bad.error.field_violations]

    # Pairs work as well as a mapping; a pinned version applies to every series.
    (pinned,) = client.forecast_batch("moving_average", [("one", list(range(60)))], version="2")
    assert pinned.forecast is not None and pinned.forecast.version == "2"

    requests: list[tuple[str, ForecastArgs]] = [
        (f"r{i}", {"model": "lstm_timeseries", "history": SERIES[: ORIGIN + i].tolist(),
                   "version": "1", "horizon": 3})
        for i in range(10)
    ]  # fmt: skip
    requests.append(("bad", {"model": "no_such_model", "history": [1.0] * 60}))
    answers = {o.id: o for o in client.stream_forecast(iter(requests))}
    assert set(answers) == {request_id for request_id, _ in requests}
    for i in range(10):
        answer = answers[f"r{i}"].forecast
        assert answer is not None and answer.version == "1" and len(answer.values) == 3
    error = answers["bad"].error
    assert error is not None and error.code is grpc.StatusCode.NOT_FOUND
    assert error.reason == "MODEL_NOT_FOUND" and error.domain == "forecast.v1"


def test_client_compare_matches_pinned_forecasts(client: ForecastClient) -> None:
    history = HISTORY[-100:].tolist()
    comparison = client.compare_versions("lstm_timeseries", history, versions=["1", "2"],
                                         horizon=4)  # fmt: skip
    assert [f.version for f in comparison.forecasts] == ["1", "2"]
    for version in comparison.forecasts:
        pinned = client.forecast("lstm_timeseries", history, version=version.version, horizon=4)
        assert np.allclose(version.values, pinned.values, rtol=1e-5, atol=1e-4)
    experiment = client.get_experiment("moving_average")
    assert experiment.model == "moving_average"
