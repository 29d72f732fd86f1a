"""forecast_client: intervals, quantiles and uncertainty, typed and rendered (a fake gateway).

A canned in-process ForecastService on port 0 answers with known messages,
so the conversion, the `forecast` command's table and JSON, and the
GetExperiment coverage lines are checked without Triton (the functional
tests in tests/functional/test_cli_intervals.py run the real gateway).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client import (
    ErrorStats,
    Experiment,
    ForecastClient,
    Interval,
    IntervalCoverage,
    LatencyStats,
    QuantileForecast,
    QuantileLoss,
    Uncertainty,
    VersionExperiment,
)
from forecast_client.cli import main
from forecast_client.render import experiment_json, experiment_text

VALUES = [10.0, 11.0]
INTERVALS = [
    forecast_pb2.PredictionInterval(coverage=0.8, lower=[9.0, 9.5], upper=[11.0, 12.5]),
    forecast_pb2.PredictionInterval(coverage=0.95, lower=[8.0, 8.0], upper=[12.0, 14.0]),
]
QUANTILES = [forecast_pb2.QuantileForecast(level=0.9, values=[11.0, 12.5])]
METHOD = "split conformal (signed errors / naive MAE of the window)"
DETAIL = "too few calibration scores: the 0.999 interval needs 1999 scores per step"
NOT_CALIBRATED = forecast_pb2.Uncertainty(
    status=forecast_pb2.UNCERTAINTY_STATUS_NOT_CALIBRATED,
    method=METHOD,
    calibration_scores=[165, 170],
    detail=DETAIL,
)
COVERAGE = [
    forecast_pb2.IntervalCoverage(
        nominal=0.8, steps=420, coverage=0.79, coverage_low=0.75, coverage_high=0.82,
        mean_width=3.1, winkler=4.5, undercovering=False,
    ),
    forecast_pb2.IntervalCoverage(
        nominal=0.95, steps=420, coverage=0.88, coverage_low=0.85, coverage_high=0.91,
        mean_width=5.02, winkler=9.75, undercovering=True,
    ),
]  # fmt: skip
LOSSES = [forecast_pb2.QuantileLoss(level=0.1, steps=420, pinball=0.213, below=0.12)]


class CannedGateway(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Answers every forecast with VALUES, INTERVALS, QUANTILES; records the requests."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Forecast(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        response = forecast_service_pb2.ForecastResponse(
            forecast_id="f-1", model=request.model, version="2", values=VALUES,
            routing_decision=forecast_pb2.ROUTING_DECISION_DEFAULT, horizon=2, sequence_length=10,
        )  # fmt: skip
        if request.interval_coverages or request.quantile_levels:
            response.intervals.extend(INTERVALS)
            response.quantiles.extend(QUANTILES)
            response.uncertainty.CopyFrom(NOT_CALIBRATED)
        return response

    def ForecastBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        forecast = forecast_pb2.Forecast(
            forecast_id="f-2", model=request.model, version="1", values=VALUES,
            intervals=INTERVALS[:1], quantiles=QUANTILES,
            uncertainty=forecast_pb2.Uncertainty(
                status=forecast_pb2.UNCERTAINTY_STATUS_CALIBRATED, method=METHOD,
                calibration_scores=[165, 165],
            ),
        )  # fmt: skip
        return forecast_service_pb2.ForecastBatchResponse(
            results=[forecast_service_pb2.SeriesResult(id="s", forecast=forecast)]
        )

    def CompareVersions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return forecast_service_pb2.CompareVersionsResponse(
            model=request.model,
            forecasts=[
                forecast_service_pb2.VersionForecast(
                    version="1", values=VALUES, latency_ms=1.5, sequence_length=10,
                    intervals=INTERVALS, uncertainty=NOT_CALIBRATED,
                ),
                forecast_service_pb2.VersionForecast(
                    version="2", values=VALUES, latency_ms=2.5, sequence_length=52
                ),
            ],
        )  # fmt: skip

    def GetExperiment(self, request: Any, context: grpc.ServicerContext) -> Any:
        version = forecast_service_pb2.VersionExperiment(
            version="2", requests_served=3, interval_coverage=COVERAGE, quantile_losses=LOSSES
        )
        return forecast_service_pb2.GetExperimentResponse(
            model=request.model, experiment="default", forecasts=3, versions=[version]
        )


@pytest.fixture
def fake() -> Iterator[tuple[str, CannedGateway]]:
    gateway = CannedGateway()  # type: ignore[abstract]  # plays only the RPCs its tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(gateway, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", gateway
    server.stop(None)


def test_forecast_sends_the_levels_and_types_the_answer(fake: tuple[str, CannedGateway]) -> None:
    target, gateway = fake
    with ForecastClient(target) as client:
        result = client.forecast(
            "m", [1.0, 2.0], interval_coverages=(0.8, 0.95), quantile_levels=[0.9]
        )
        plain = client.forecast("m", [1.0, 2.0])
    assert list(gateway.requests[0].interval_coverages) == [0.8, 0.95]
    assert list(gateway.requests[0].quantile_levels) == [0.9]
    assert result.intervals == (
        Interval(0.8, [9.0, 9.5], [11.0, 12.5]),
        Interval(0.95, [8.0, 8.0], [12.0, 14.0]),
    )
    assert result.quantiles == (QuantileForecast(0.9, [11.0, 12.5]),)
    assert result.uncertainty == Uncertainty("not_calibrated", METHOD, [165, 170], DETAIL)
    assert not result.uncertainty.calibrated
    assert result.interval(0.95) is result.intervals[1]
    assert result.interval(0.5) is None and result.quantile(0.9) is result.quantiles[0]
    # Nothing asked for: nothing returned, as before.
    assert not gateway.requests[1].interval_coverages
    assert (plain.intervals, plain.quantiles, plain.uncertainty) == ((), (), None)


def test_batch_stream_and_compare_carry_the_bands(fake: tuple[str, CannedGateway]) -> None:
    target, gateway = fake
    with ForecastClient(target) as client:
        (outcome,) = client.forecast_batch(
            "m", {"s": [1.0, 2.0]}, interval_coverages=[0.8], quantile_levels=[0.9]
        )
        comparison = client.compare_versions(
            "m", [1.0, 2.0], interval_coverages=[0.8, 0.95], quantile_levels=[0.1]
        )
    batch, compare = gateway.requests
    assert (list(batch.interval_coverages), list(batch.quantile_levels)) == ([0.8], [0.9])
    assert (list(compare.interval_coverages), list(compare.quantile_levels)) == ([0.8, 0.95], [0.1])
    assert outcome.forecast is not None
    assert outcome.forecast.intervals == (Interval(0.8, [9.0, 9.5], [11.0, 12.5]),)
    assert outcome.forecast.uncertainty is not None and outcome.forecast.uncertainty.calibrated
    assert outcome.forecast.uncertainty.status == "calibrated"
    v1, v2 = comparison.forecasts
    assert [i.coverage for i in v1.intervals] == [0.8, 0.95]
    assert v1.uncertainty is not None and v1.uncertainty.detail == DETAIL
    assert (v2.intervals, v2.quantiles, v2.uncertainty) == ((), (), None)


def test_cli_predict_table_has_the_bounds_and_the_note(
    fake: tuple[str, CannedGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    target, gateway = fake
    args = ["--target", target, "predict", "--model", "m", "--history", "1,2"]
    assert main([*args, "--interval", "0.8", "--interval", "0.95", "--quantile", "0.9"]) == 0
    assert list(gateway.requests[0].interval_coverages) == [0.8, 0.95]
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == f"intervals: partly calibrated, 165-170 scores per step, {METHOD}"
    assert lines[3] == f"note: {DETAIL}"
    table = [line.split() for line in lines[5:]]
    assert table[0] == ["STEP", "VALUE", "lo80", "hi80", "lo95", "hi95", "q90"]
    assert table[1:] == [["1", "10", "9", "11", "8", "12", "11"],
                         ["2", "11", "9.5", "12.5", "8", "14", "12.5"]]  # fmt: skip


def test_cli_predict_json_has_them_only_when_asked_for(
    fake: tuple[str, CannedGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = fake
    args = ["--target", target, "--json", "predict", "--model", "m", "--history", "1,2"]
    assert main(args) == 0
    assert not {"intervals", "quantiles", "uncertainty"} & set(json.loads(capsys.readouterr().out))
    assert main([*args, "--interval", "0.8"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["intervals"][1] == {"coverage": 0.95, "lower": [8.0, 8.0], "upper": [12.0, 14.0]}
    assert body["quantiles"] == [{"level": 0.9, "values": [11.0, 12.5]}]
    assert body["uncertainty"] == {
        "status": "UNCERTAINTY_STATUS_NOT_CALIBRATED",
        "method": METHOD,
        "calibrationScores": [165, 170],
        "detail": DETAIL,
    }


def test_cli_compare_columns_per_version(
    fake: tuple[str, CannedGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = fake
    args = ["--target", target, "compare", "--model", "m", "--history", "1,2", "--interval", "0.8"]
    assert main(args) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line.split() for line in lines if line.startswith("STEP"))
    assert header == ["STEP", "v1", "v1.lo80", "v1.hi80", "v1.lo95", "v1.hi95", "v2"]
    assert f"note: v1: {DETAIL}" in lines


def test_cli_rejects_a_level_that_is_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["predict", "--model", "m", "--history", "1,2", "--quantile", "high"]
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert "argument --quantile: 'high' is not a number" in capsys.readouterr().err


def test_experiment_coverage_and_pinball(
    fake: tuple[str, CannedGateway], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = fake
    with ForecastClient(target) as client:
        experiment = client.get_experiment("m")
    (version,) = experiment.versions
    assert version.interval_coverage[1] == IntervalCoverage(
        0.95, 420, 0.88, 0.85, 0.91, 5.02, 9.75, undercovering=True
    )
    assert version.quantile_losses == (QuantileLoss(0.1, 420, 0.213, 0.12),)

    assert main(["--target", target, "experiment", "--model", "m"]) == 0
    out = capsys.readouterr().out
    assert "version 2\n" in out
    assert "  80%: coverage 0.79 [0.75, 0.82] over 420 steps, width 3.10, Winkler 4.50\n" in out
    assert (
        "  95%: coverage 0.88 [0.85, 0.91] over 420 steps, width 5.02, Winkler 9.75  "
        "UNDERCOVERING\n"
    ) in out
    assert "  q10: pinball 0.213, 0.12 of actuals below (ideal 0.1) over 420 steps\n" in out

    body = experiment_json(experiment)["versions"]
    assert body[0]["intervalCoverage"][0] == {  # type: ignore[index]
        "nominal": 0.8, "steps": 420, "coverage": 0.79, "coverageLow": 0.75,
        "coverageHigh": 0.82, "meanWidth": 3.1, "winkler": 4.5, "undercovering": False,
    }  # fmt: skip
    assert body[0]["quantileLosses"] == [  # type: ignore[index]
        {"level": 0.1, "steps": 420, "pinball": 0.213, "below": 0.12}
    ]


def test_experiment_without_scored_intervals_prints_no_coverage_block() -> None:
    version = VersionExperiment(
        "1", 5, 0, 0, ErrorStats(0, math.nan, math.nan, math.nan), LatencyStats(5, 1, 2, 3)
    )
    text = experiment_text(Experiment("m", (version,), (), experiment="default", forecasts=5))
    assert "coverage" not in text and "pinball" not in text
    nan = IntervalCoverage(0.8, 0, math.nan, math.nan, math.nan, math.nan, math.nan, False)
    scored = VersionExperiment(**{**version.__dict__, "interval_coverage": (nan,)})
    text = experiment_text(Experiment("m", (scored,), ()))
    assert "  80%: coverage - [-, -] over 0 steps, width -, Winkler -\n" in text
    assert (
        experiment_json(Experiment("m", (scored,), ()))["versions"][0][  # type: ignore[index]
            "intervalCoverage"
        ][0]["coverage"]
        is None
    )
