"""Prediction intervals and quantiles through the client and the `forecast` command.

Against the session gateway (calibrated from the shipped held-out scores;
nothing here reports actuals to it, other tests share its calibration
pools), and for `forecast experiment` a gateway of this module's own that
does get actuals.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from forecast_client import ForecastArgs, ForecastClient, Interval, QuantileForecast
from tests.conftest import VENV_BIN, GatewayProcess, start_gateway, stop_process
from tests.functional.test_cli import INLINE, SERIES, forecast, forecast_json
from tools.embedded_triton import TritonProcess

pytestmark = pytest.mark.functional

HORIZON = 6
COVERAGES = (0.8, 0.95)
LEVELS = (0.1, 0.5, 0.9)
LEVEL_FLAGS = ["--interval", "0.8", "--interval", "0.95",
               "--quantile", "0.1", "--quantile", "0.5", "--quantile", "0.9"]  # fmt: skip


def check_bands(
    values: list[float], intervals: list[Interval], quantiles: list[QuantileForecast]
) -> None:
    """Every requested level, horizon values each, lower <= upper, nested, monotone quantiles."""
    assert [i.coverage for i in intervals] == list(COVERAGES)
    assert [q.level for q in quantiles] == list(LEVELS)
    narrow, wide = intervals
    for step in range(len(values)):
        assert wide.lower[step] <= narrow.lower[step] <= narrow.upper[step] <= wide.upper[step]
        column = [q.values[step] for q in quantiles]
        assert column == sorted(column)
    assert all(len(i.lower) == len(i.upper) == len(values) for i in intervals)
    assert all(len(q.values) == len(values) for q in quantiles)


@pytest.mark.parametrize(("model", "version"), [("lstm_timeseries", "1"), ("moving_average", "2")])
def test_predict_table_shows_nested_bounds(
    cli_env: dict[str, str], model: str, version: str
) -> None:
    result = forecast(cli_env, "predict", "--model", model, "--version", version,
                      "--horizon", str(HORIZON), "--history", INLINE, *LEVEL_FLAGS)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert re.fullmatch(r"intervals: calibrated, \d+ scores per step, split conformal.*", lines[2])
    assert not any(line.startswith("note:") for line in lines)
    header = lines[4].split()
    assert header == ["STEP", "VALUE", "lo80", "hi80", "lo95", "hi95", "q10", "q50", "q90"]
    rows = [[float(cell) for cell in line.split()] for line in lines[5:]]
    assert [int(row[0]) for row in rows] == list(range(1, HORIZON + 1))
    for _, _, lo80, hi80, lo95, hi95, q10, q50, q90 in rows:
        assert lo95 <= lo80 <= hi80 <= hi95
        assert q10 <= q50 <= q90


def test_predict_json_carries_intervals_quantiles_and_uncertainty(cli_env: dict[str, str]) -> None:
    body = forecast_json(cli_env, "predict", "--model", "lstm_timeseries", "--version", "2",
                         "--horizon", str(HORIZON), "--history", INLINE, *LEVEL_FLAGS)  # fmt: skip
    intervals = [Interval(i["coverage"], i["lower"], i["upper"]) for i in body["intervals"]]
    quantiles = [QuantileForecast(q["level"], q["values"]) for q in body["quantiles"]]
    check_bands(body["values"], intervals, quantiles)
    uncertainty = body["uncertainty"]
    assert (uncertainty["status"], uncertainty["detail"]) == ("UNCERTAINTY_STATUS_CALIBRATED", "")
    assert uncertainty["method"].startswith("split conformal")
    assert len(uncertainty["calibrationScores"]) == HORIZON
    assert all(n >= 39 for n in uncertainty["calibrationScores"])  # enough for 95%


def test_a_level_without_enough_scores_is_a_note_not_a_column(cli_env: dict[str, str]) -> None:
    result = forecast(cli_env, "predict", "--model", "moving_average", "--version", "1",
                      "--horizon", "3", "--history", INLINE,
                      "--interval", "0.8", "--interval", "0.999")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].startswith("intervals: partly calibrated, ")  # the 80% columns are
    assert lines[3].startswith("note: ") and "0.999" in lines[3]
    assert lines[5].split() == ["STEP", "VALUE", "lo80", "hi80"]


@pytest.mark.parametrize(
    ("flag", "value", "field"),
    [("--interval", "1.5", "interval_coverages[0]"), ("--quantile", "0", "quantile_levels[0]")],
)
def test_an_invalid_level_exits_2_with_the_field_violation(
    cli_env: dict[str, str], flag: str, value: str, field: str
) -> None:
    result = forecast(cli_env, "predict", "--model", "lstm_timeseries", "--history", INLINE,
                      flag, value)  # fmt: skip
    assert (result.returncode, result.stdout) == (2, "")
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert lines[0].startswith("error: INVALID_ARGUMENT: ")
    assert f"  field {field}: must be a probability strictly between 0 and 1" in result.stderr
    assert value in lines[1]

    as_json = forecast(
        cli_env, "--json", "predict", "--model", "lstm_timeseries", "--history", INLINE, flag, value
    )
    error = json.loads(as_json.stderr)["error"]
    assert [v["field"] for v in error["fieldViolations"]] == [field]


def test_compare_json_has_each_versions_bands(cli_env: dict[str, str]) -> None:
    body = forecast_json(cli_env, "compare", "--model", "lstm_timeseries", "--horizon", "4",
                         "--history", INLINE, *LEVEL_FLAGS)  # fmt: skip
    assert [f["version"] for f in body["forecasts"]] == ["1", "2"]
    for version in body["forecasts"]:
        intervals = [Interval(i["coverage"], i["lower"], i["upper"]) for i in version["intervals"]]
        quantiles = [QuantileForecast(q["level"], q["values"]) for q in version["quantiles"]]
        check_bands(version["values"], intervals, quantiles)
        assert version["uncertainty"]["status"] == "UNCERTAINTY_STATUS_CALIBRATED"


def test_client_returns_typed_bands_on_every_call(gateway: GatewayProcess) -> None:
    levels: dict[str, Any] = {"interval_coverages": COVERAGES, "quantile_levels": LEVELS}
    with ForecastClient(gateway.target, timeout_s=30) as client:
        single = client.forecast("lstm_timeseries", SERIES, horizon=HORIZON, **levels)
        batch = client.forecast_batch(
            "moving_average", {"a": SERIES, "b": SERIES[:60]}, horizon=HORIZON, **levels
        )
        comparison = client.compare_versions("lstm_timeseries", SERIES, horizon=3, **levels)
        args = ForecastArgs(model="lstm_timeseries", history=SERIES, horizon=2,
                            interval_coverages=COVERAGES, quantile_levels=LEVELS)  # fmt: skip
        streamed = list(client.stream_forecast([("r1", args)]))
        plain = client.forecast("lstm_timeseries", SERIES, horizon=HORIZON)

    results = [single, *(o.forecast for o in batch + streamed)]
    results += comparison.forecasts  # type: ignore[arg-type]
    assert len(results) == 6 and all(r is not None for r in results)
    for result in results:
        assert result is not None
        check_bands(result.values, list(result.intervals), list(result.quantiles))
        assert result.uncertainty is not None and result.uncertainty.calibrated
        assert len(result.uncertainty.calibration_scores) == len(result.values)
    assert single.interval(0.95) == single.intervals[1]
    # The bands are the only difference asking for them makes.
    assert plain.values == single.values
    assert (plain.intervals, plain.quantiles, plain.uncertainty) == ((), (), None)


@pytest.fixture(scope="module")
def scored_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """A gateway of this module's own, so reporting actuals leaves the session's pools alone."""
    directory = tmp_path_factory.mktemp("cli_intervals")
    process = start_gateway(triton.grpc_url, directory / "gateway.log", FORECAST_ROUTING_FILE="")
    yield process
    stop_process(process.process)


def test_experiment_prints_coverage_and_pinball(
    scored_gateway: GatewayProcess, cli_env: dict[str, str]
) -> None:
    env = {**cli_env, "FORECAST_TARGET": scored_gateway.target}
    with ForecastClient(scored_gateway.target, timeout_s=30) as client:
        for origin in range(60, 76):
            result = client.forecast(
                "moving_average", SERIES[:origin], version="1", horizon=4,
                interval_coverages=COVERAGES, quantile_levels=LEVELS,
            )  # fmt: skip
            client.report_actuals(result.forecast_id, SERIES[origin : origin + 4])
        experiment = client.get_experiment("moving_average")
    (version,) = experiment.versions
    # The gateway scores the tracked levels of every reported forecast: no coverage is a failure.
    assert version.interval_coverage, version

    body = forecast_json(env, "experiment", "--model", "moving_average")
    (scored,) = body["versions"]
    assert [c["nominal"] for c in scored["intervalCoverage"]][:2] == list(COVERAGES)
    assert all(c["steps"] > 0 and 0 <= c["coverage"] <= 1 for c in scored["intervalCoverage"])

    text = forecast(env, "experiment", "--model", "moving_average")
    assert text.returncode == 0, text.stderr
    pattern = (
        r"  80%: coverage \d\.\d\d \[\d\.\d\d, \d\.\d\d\] over \d+ steps, "
        r"width [-\d.e+]+, Winkler [-\d.e+]+( {2}UNDERCOVERING)?"
    )
    assert re.search(pattern, text.stdout), text.stdout
    if version.quantile_losses:
        assert re.search(r"  q10: pinball [\d.e+-]+, \d\.\d\d of actuals below", text.stdout)
    assert not math.isnan(version.interval_coverage[0].coverage)


def test_the_readme_grpcurl_example(gateway: GatewayProcess) -> None:
    history = [315.4, 316.2, 316.9, 317.3, 317.9, 318.4, 318.9, 318.7, 318.1, 317.5, 316.4, 315.8]
    request = {"model": "moving_average", "version": "1", "horizon": 3, "history": history,
               "intervalCoverages": [0.8, 0.95], "quantileLevels": [0.1, 0.9]}  # fmt: skip
    result = subprocess.run(
        [str(VENV_BIN / "grpcurl"), "-plaintext", "-d", json.dumps(request), gateway.target,
         "forecast.v1.ForecastService/Forecast"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["values"] == pytest.approx([317.59] * 3)
    assert [i["coverage"] for i in body["intervals"]] == [0.8, 0.95]
    assert [q["level"] for q in body["quantiles"]] == [0.1, 0.9]
    assert body["uncertainty"]["status"] == "UNCERTAINTY_STATUS_CALIBRATED"
    assert len(body["uncertainty"]["calibration_scores"]) == 3
