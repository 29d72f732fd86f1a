"""`ForecastClient.backtest` and `forecast backtest` against the whole gateway in process.

The gateway (tests.edge.serving: the fake backend) runs on the test's event
loop; the blocking client and the CLI run in a worker thread
(`asyncio.to_thread`), over a real loopback channel. The fake's versions
forecast plain functions of the window (moving_average v2 and
lstm_timeseries v2: the last value; moving_average v1: the mean of the last
10 points), so the expected scores are computed here from the series.
tests/unit/test_edge_backtest.py checks the RPC itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
import pandas as pd
import pytest
import pytest_asyncio

from forecast_client import (
    BacktestComparison,
    BacktestInterval,
    BacktestQuantile,
    BacktestReport,
    BacktestResult,
    BacktestStep,
    BacktestWindow,
    ForecastClient,
    ForecastError,
    SeriesInput,
)
from forecast_client.cli import main
from forecast_client.plot import backtest_png
from forecast_client.series_input import InputError, read_csv
from tests.edge import LSTM, MA, Edge, captured_logs, one_request_line, request_lines, serving

SERIES = [10.0 + 3.0 * math.sin(i / 2.0) + 0.05 * i for i in range(120)]
OTHER = [50.0 + (i % 9) - 0.1 * i for i in range(90)]
JAN_1 = datetime(2024, 1, 1, tzinfo=UTC)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_T = TypeVar("_T")


def last_value_mae(series: list[float], horizon: int, n_windows: int, step: int) -> float:
    """MAE over every held-out point of "the last point before the origin"."""
    values = np.asarray(series)
    errors: list[float] = []
    for k in range(n_windows):
        origin = len(values) - horizon - step * (n_windows - 1 - k)
        errors.extend(np.abs(values[origin : origin + horizon] - values[origin - 1]))
    return float(np.mean(errors))


@pytest_asyncio.fixture(scope="module")
async def edge(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Edge]:
    """One gateway for the module: a backtest records nothing, so tests cannot disturb others."""
    async with serving(tmp_path_factory.mktemp("backtest")) as started:
        yield started


def address(edge: Edge) -> str:
    return f"127.0.0.1:{edge.gateway.port}"


async def with_client(edge: Edge, call: Callable[[ForecastClient], _T]) -> _T:
    """Run `call(client)` in a thread: the gateway serves on this loop meanwhile."""

    def run() -> _T:
        with ForecastClient(address(edge)) as client:
            return call(client)

    return await asyncio.to_thread(run)


async def cli(
    edge: Edge, capsys: pytest.CaptureFixture[str], *args: str, calls: bool = True
) -> tuple[int, str, str]:
    """`forecast --target <edge> backtest ARGS`: exit status, stdout, stderr.

    The gateway's log events are captured (not printed amid the command's
    output) until its request line is written, when the command `calls` it.
    """
    with captured_logs() as logs:
        status = await asyncio.to_thread(main, ["--target", address(edge), "backtest", *args])
        if calls:
            await one_request_line(logs, "Backtest")
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def plain_types(value: object, where: str = "report") -> None:
    """Every field, recursively, is a dataclass of ours or a plain Python value (no protos)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        assert type(value).__module__ == "forecast_client.client", where
        for field in dataclasses.fields(value):
            plain_types(getattr(value, field.name), f"{where}.{field.name}")
    elif isinstance(value, tuple):
        for index, item in enumerate(value):
            plain_types(item, f"{where}[{index}]")
    else:
        assert value is None or type(value) in (str, int, float, bool, datetime), (where, value)


# --- the client ---------------------------------------------------------------------


async def test_the_report_is_typed_and_scores_every_window(edge: Edge) -> None:
    report = await with_client(
        edge,
        lambda c: c.backtest(
            MA,
            {"a": SERIES, "b": OTHER},
            horizon=6,
            n_windows=5,
            step=3,
            targets=["1", "2"],
            interval_coverages=[0.8],
            quantile_levels=[0.9],
            per_window=True,
        ),
    )
    assert isinstance(report, BacktestReport)
    plain_types(report)
    assert (report.model, report.horizon, report.n_windows, report.step) == (MA, 6, 5, 3)
    assert "naive (no frequency given)" in report.scale
    assert [(r.target, r.windows) for r in report.results] == [(f"{MA}:1", 10), (f"{MA}:2", 10)]
    last_value = report.results[1]
    assert isinstance(last_value, BacktestResult)
    both = (last_value_mae(SERIES, 6, 5, 3) + last_value_mae(OTHER, 6, 5, 3)) / 2
    assert last_value.mae == pytest.approx(both, rel=1e-5)
    assert last_value.rmse >= last_value.mae
    assert all(isinstance(s, BacktestStep) for s in last_value.steps)
    assert [s.step for s in last_value.steps] == [1, 2, 3, 4, 5, 6]
    assert np.mean([s.mae for s in last_value.steps]) == pytest.approx(last_value.mae, rel=1e-9)
    # The windows: origin T - horizon - step * (n - 1 - k), earliest first; no time, no origin_time.
    assert all(isinstance(w, BacktestWindow) for w in last_value.window_scores)
    assert [(w.series_id, w.window, w.origin) for w in last_value.window_scores] == [
        ("a", k, 120 - 6 - 3 * (4 - k)) for k in range(5)
    ] + [("b", k, 90 - 6 - 3 * (4 - k)) for k in range(5)]
    assert all(w.origin_time is None for w in last_value.window_scores)
    # No calibration files in the edge's config: the scores of what does not exist are NaN.
    interval = last_value.interval(0.8)
    assert isinstance(interval, BacktestInterval)
    assert interval.status == "not_calibrated"
    assert math.isnan(interval.observed) and math.isnan(interval.winkler)
    assert len(interval.per_step_observed) == len(interval.per_step_winkler) == 6
    assert last_value.interval(0.95) is None
    quantile = last_value.quantile(0.9)
    assert isinstance(quantile, BacktestQuantile) and len(quantile.per_step) == 6
    (comparison,) = report.comparisons
    assert isinstance(comparison, BacktestComparison)
    assert (comparison.target_a, comparison.target_b) == (f"{MA}:1", f"{MA}:2")
    assert comparison.windows == 10
    assert "Diebold-Mariano" in comparison.test
    assert comparison.verdict
    assert comparison.mase_b == pytest.approx(last_value.mase, rel=1e-9)
    assert isinstance(comparison.significant, bool)


async def test_targets_as_model_version_bare_version_or_pair(edge: Edge) -> None:
    report = await with_client(
        edge,
        lambda c: c.backtest(
            MA, [("a", SERIES)], horizon=4, n_windows=3, targets=["1", f"{LSTM}:2", (MA, "2")]
        ),
    )
    assert [r.target for r in report.results] == [f"{MA}:1", f"{LSTM}:2", f"{MA}:2"]
    assert [(c.target_a, c.target_b) for c in report.comparisons] == [
        (f"{MA}:1", f"{LSTM}:2"),
        (f"{MA}:1", f"{MA}:2"),
        (f"{LSTM}:2", f"{MA}:2"),
    ]
    assert report.step == 4  # step 0: the horizon
    # Both forecast the last value: the same scores, model by model.
    lstm, ma = report.result(f"{LSTM}:2"), report.result("2")
    assert lstm is not None and ma is not None and ma.target == f"{MA}:2"
    assert lstm.mae == pytest.approx(ma.mae, rel=1e-9)
    assert report.result("9") is None


async def test_no_targets_means_every_ready_version(edge: Edge) -> None:
    report = await with_client(
        edge, lambda c: c.backtest(MA, {"a": SERIES}, horizon=4, n_windows=2)
    )
    assert [r.version for r in report.results] == ["1", "2"]
    assert len(report.comparisons) == 1


def test_a_target_of_another_shape_is_refused_before_any_call() -> None:
    with ForecastClient("127.0.0.1:1") as client, pytest.raises(TypeError, match="targets"):
        client.backtest(MA, {"a": SERIES}, horizon=4, n_windows=2, targets=[(MA, "1", "x")])  # type: ignore[list-item]


async def test_a_pandas_series_with_a_datetime_index_gives_origin_times(edge: Edge) -> None:
    index = pd.date_range("2024-01-01", periods=len(SERIES), freq="D")
    sales = pd.Series(SERIES, index=index)
    report = await with_client(
        edge,
        lambda c: c.backtest(
            MA, {"sales": sales}, horizon=6, n_windows=3, targets=["2"], per_window=True
        ),
    )
    assert "seasonal naive, season 7 (D)" in report.scale
    windows = report.results[0].window_scores
    assert [w.origin for w in windows] == [102, 108, 114]
    for w in windows:
        assert w.origin_time == index[w.origin].to_pydatetime().replace(tzinfo=UTC)
        assert w.origin_time is not None and w.origin_time.tzinfo is not None


async def test_start_frequency_timestamps_and_fill_apply_as_on_forecast_batch(
    edge: Edge,
) -> None:
    gappy = [*SERIES[:100], math.nan, *SERIES[101:]]
    days = [JAN_1 + timedelta(days=i) for i in range(len(OTHER))]
    series: dict[str, list[float] | SeriesInput] = {
        "dated": gappy,  # the call's start and frequency
        "own": SeriesInput(OTHER, timestamps=days),  # its own times
    }
    report = await with_client(
        edge,
        lambda c: c.backtest(
            MA,
            series,
            horizon=5,
            n_windows=2,
            targets=["2"],
            per_window=True,
            start="2024-03-01",
            frequency="D",
            fill="linear",
        ),
    )
    windows = {(w.series_id, w.window): w for w in report.results[0].window_scores}
    march_1 = datetime(2024, 3, 1, tzinfo=UTC)
    assert windows["dated", 0].origin_time == march_1 + timedelta(days=110)
    assert windows["own", 1].origin_time == JAN_1 + timedelta(days=85)


async def test_an_invalid_backtest_carries_its_field_violations(edge: Edge) -> None:
    with pytest.raises(ForecastError) as raised:
        await with_client(
            edge,
            lambda c: c.backtest(MA, {"tiny": SERIES[:20]}, horizon=6, n_windows=5, targets=["1"]),
        )
    error = raised.value
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    ((violation),) = error.field_violations
    assert violation.field == "series[0].history"
    assert "'tiny' has 20 points" in violation.description
    with pytest.raises(ForecastError) as layout:
        await with_client(edge, lambda c: c.backtest(MA, {"a": SERIES}, horizon=0, n_windows=0))
    assert {v.field for v in layout.value.field_violations} == {"horizon", "n_windows"}
    with pytest.raises(ForecastError) as unknown:
        await with_client(
            edge, lambda c: c.backtest(MA, {"a": SERIES}, horizon=4, n_windows=2, targets=["9"])
        )
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND


async def test_timeout_s_is_the_deadline_of_this_call(edge: Edge) -> None:
    edge.backend.gate = asyncio.Event()  # holds every backend call until set
    try:
        with pytest.raises(ForecastError) as raised:
            await with_client(
                edge,
                lambda c: c.backtest(
                    MA, {"a": SERIES}, horizon=4, n_windows=2, targets=["1"], timeout_s=0.2
                ),
            )
    finally:
        edge.backend.gate.set()
        edge.backend.gate = None
    assert raised.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


# --- the command ----------------------------------------------------------------------


def daily_csv(path: Path, series: dict[str, list[float]]) -> Path:
    """A long CSV (store, day, units), or without the store column for one series."""
    long = len(series) > 1
    lines = ["store,day,units" if long else "day,units"]
    for name, values in series.items():
        for i, value in enumerate(values):
            day = (JAN_1 + timedelta(days=i)).date().isoformat()
            lines.append(f"{name},{day},{value}" if long else f"{day},{value}")
    path.write_text("\n".join(lines) + "\n")
    return path


async def test_cli_table_verdicts_and_scale(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = daily_csv(tmp_path / "sales.csv", {"sales": SERIES})
    status, out, err = await cli(
        edge, capsys, "--model", MA, "--csv", str(csv), "--date-column", "day",
        "--column", "units", "--horizon", "6", "--windows", "4", "--versions", "1,2",
        "--intervals", "0.8,0.95",
    )  # fmt: skip
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"{MA}: backtest of 2 target(s), 4 window(s) per series, horizon 6, step 6"
    assert lines[2].split() == [
        "TARGET", "WINDOWS", "MAE", "sMAPE", "%", "MASE", "RMSE",
        "cov80%", "winkler80", "cov95%", "winkler95",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[3:5]}
    assert set(rows) == {f"{MA}:1", f"{MA}:2"}
    assert rows[f"{MA}:2"][1] == "4"
    assert float(rows[f"{MA}:2"][2]) == pytest.approx(last_value_mae(SERIES, 6, 4, 6), rel=1e-5)
    assert rows[f"{MA}:2"][6:] == ["-", "-", "-", "-"]  # not calibrated: NaN
    assert (
        f"note: {MA}:1: no calibrated 80% intervals (not calibrated): their scores are -" in lines
    )
    (verdict,) = [line for line in lines if line.startswith(f"{MA}:1 vs {MA}:2: ")]
    assert "window" in verdict
    (scale,) = [line for line in lines if line.startswith("scale: ")]
    assert "season 7 (D)" in scale
    assert lines.index(verdict) < lines.index(scale)


async def test_cli_json_is_the_response(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = daily_csv(tmp_path / "sales.csv", {"sales": SERIES})
    status, out, _ = await cli(
        edge, capsys, "--json", "--model", MA, "--csv", str(csv), "--date-column", "day",
        "--horizon", "6", "--windows", "3", "--step", "2", "--versions", f"2,{LSTM}:2",
        "--per-window", "--interval", "0.8", "--quantiles", "0.1,0.9",
    )  # fmt: skip
    assert status == 0
    body: dict[str, Any] = json.loads(out)
    assert (body["model"], body["horizon"], body["nWindows"], body["step"]) == (MA, 6, 3, 2)
    assert [(r["model"], r["version"]) for r in body["results"]] == [(MA, "2"), (LSTM, "2")]
    result = body["results"][0]
    assert set(result) == {
        "model", "version", "windows", "mae", "smape", "mase", "rmse",
        "steps", "intervals", "quantiles", "windowScores",
    }  # fmt: skip
    assert [s["step"] for s in result["steps"]] == [1, 2, 3, 4, 5, 6]
    (interval,) = result["intervals"]
    assert interval["status"] == "UNCERTAINTY_STATUS_NOT_CALIBRATED"
    assert interval["observed"] is None  # NaN: null, as the other commands write it
    assert [q["level"] for q in result["quantiles"]] == [0.1, 0.9]
    origins = [(w["seriesId"], w["origin"], w["originTime"]) for w in result["windowScores"]]
    assert origins == [
        ("sales", o, f"{(JAN_1 + timedelta(days=o)).date().isoformat()}T00:00:00Z")
        for o in (110, 112, 114)
    ]
    (comparison,) = body["comparisons"]
    assert (comparison["targetA"], comparison["targetB"]) == (f"{MA}:2", f"{LSTM}:2")
    assert comparison["verdict"]


async def test_cli_id_column_backtests_every_series_of_a_long_csv(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = daily_csv(tmp_path / "stores.csv", {"north": SERIES, "south": OTHER})
    status, out, _ = await cli(
        edge, capsys, "--json", "--model", MA, "--csv", str(csv), "--id-column", "store",
        "--date-column", "day", "--column", "units", "--horizon", "4", "--windows", "2",
        "--versions", "2", "--per-window",
    )  # fmt: skip
    assert status == 0
    (result,) = json.loads(out)["results"]
    assert result["windows"] == 4
    assert [(w["seriesId"], w["origin"]) for w in result["windowScores"]] == [
        ("north", 112), ("north", 116), ("south", 82), ("south", 86),
    ]  # fmt: skip
    expected = (last_value_mae(SERIES, 4, 2, 4) + last_value_mae(OTHER, 4, 2, 4)) / 2
    assert result["mae"] == pytest.approx(expected, rel=1e-5)


async def test_cli_per_window_table_has_origin_times(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = daily_csv(tmp_path / "sales.csv", {"sales": SERIES})
    status, out, _ = await cli(
        edge, capsys, "--model", MA, "--csv", str(csv), "--date-column", "day",
        "--horizon", "6", "--windows", "2", "--versions", "2", "--per-window",
    )  # fmt: skip
    assert status == 0
    table = out.split("\n\n")[-1].splitlines()
    assert table[0].split() == [
        "TARGET", "SERIES", "WINDOW", "ORIGIN", "ORIGIN", "TIME", "MAE", "sMAPE", "%", "MASE",
    ]  # fmt: skip
    assert [line.split()[:5] for line in table[1:]] == [
        [f"{MA}:2", "sales", "0", "108", "2024-04-18"],
        [f"{MA}:2", "sales", "1", "114", "2024-04-24"],
    ]


async def test_cli_plot_writes_a_png(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    png = tmp_path / "backtest.png"
    history = ",".join(str(v) for v in SERIES)
    status, out, err = await cli(
        edge, capsys, "--model", MA, f"--history={history}", "--horizon", "6",
        "--windows", "3", "--plot", str(png), "--plot-metric", "mase",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert out.endswith(f"\nplot: {png}\n")
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 1000


async def test_cli_errors_name_the_field(
    edge: Edge, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    csv = daily_csv(tmp_path / "tiny.csv", {"tiny": SERIES[:20]})
    status, out, err = await cli(
        edge, capsys, "--model", MA, "--csv", str(csv), "--horizon", "6", "--windows", "5",
        "--versions", "1",
    )  # fmt: skip
    assert (status, out) == (2, "")
    assert err.startswith("error: INVALID_ARGUMENT: ")
    assert "  field series[0].history: " in err and "'tiny' has 20 points" in err


async def test_cli_input_errors_are_local(edge: Edge, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = await cli(
        edge, capsys, "--model", MA, "--history", "1,2,3", "--id-column", "store",
        "--horizon", "1", "--windows", "1", calls=False,
    )  # fmt: skip
    assert status == 2
    assert "field --id-column: only applies with --csv" in err
    with pytest.raises(SystemExit) as usage:
        await cli(
            edge, capsys, "--model", MA, "--history", "1,2", "--horizon", "0", "--windows", "1",
            calls=False,
        )  # fmt: skip
    assert usage.value.code == 2
    assert "--horizon: must be >= 1" in capsys.readouterr().err


def test_read_csv_ids_and_the_id_column_is_never_the_values() -> None:
    text = "store,day,units\n1,2024-01-01,5\n2,2024-01-01,7\n1,2024-01-02,\n"
    series = read_csv(text, None, "day", "store")
    assert series.ids == ["1", "2", "1"]
    assert series.values[:2] == [5.0, 7.0] and math.isnan(series.values[2])
    assert read_csv(text, None, "day").ids is None
    with pytest.raises(InputError) as empty:
        read_csv("store,units\n,5\n", "units", None, "store")
    assert (empty.value.field, empty.value.description) == (
        "--id-column",
        "line 2: the series id is empty",
    )


def test_backtest_png_draws_mae_or_mase_by_step() -> None:
    steps = tuple(BacktestStep(s, 0.5 * s, 10.0, 0.2 * s) for s in range(1, 5))
    unscaled = tuple(BacktestStep(s, 0.4 * s, 9.0, math.nan) for s in range(1, 5))
    report = BacktestReport(
        model=MA, horizon=4, n_windows=3, step=4, scale="naive (no frequency given)",
        results=(
            BacktestResult(MA, "1", 3, 1.25, 10.0, 0.5, 1.4, steps),
            BacktestResult(MA, "2", 3, 1.0, 9.0, math.nan, 1.1, unscaled),
        ),
        comparisons=(),
    )  # fmt: skip
    for metric in ("mae", "mase"):
        png = backtest_png(report, metric=metric, size_px=(640, 320))
        assert png[:8] == PNG_SIGNATURE and len(png) > 1000
    with pytest.raises(ValueError, match="metric"):
        backtest_png(report, metric="rmse")


async def test_cli_plot_without_matplotlib_fails_before_the_call(
    edge: Edge,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.delitem(sys.modules, "forecast_client.plot", raising=False)
    for name in [n for n in sys.modules if n == "matplotlib" or n.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with captured_logs() as logs:
        status, out, err = await cli(
            edge, capsys, "--model", MA, "--history", "1,2,3", "--horizon", "1",
            "--windows", "1", "--plot", str(tmp_path / "p.png"), calls=False,
        )  # fmt: skip
    assert (status, out) == (1, "")
    assert err == (
        "error: FAILED_PRECONDITION: plotting needs matplotlib: "
        "pip install 'forecast-client[plot]'\n"
    )
    assert not request_lines(logs, "Backtest")
    assert not (tmp_path / "p.png").exists()
