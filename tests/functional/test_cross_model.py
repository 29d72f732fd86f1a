"""An experiment across models against the real Triton: seasonal_naive:1 in lstm_timeseries's split.

A gateway of its own (on the session's Triton) splits lstm_timeseries's
weekly traffic 50/50 between its version 2 and seasonal_naive version 1,
and shadows every forecast with seasonal_naive:1. Sticky keys land where
`sticky_version` over the arm labels says; seasonal_naive's forecasts are
its own (the value one season before: 52 weeks for W-SAT) and so are their
scores; GetExperiment reports the arm as a row of its own, paired with
version 2 through the shadows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import grpc
import numpy as np
import pandas as pd
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2, forecast_service_pb2_grpc
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.core.routing import sticky_version
from tests.conftest import GatewayProcess, start_gateway, stop_process
from tools.embedded_triton import TritonProcess
from training.data import load_co2, load_co2_dates

LSTM = "lstm_timeseries"
SN = "seasonal_naive"
ARM = "seasonal_naive:1"
ROUTING = f"""
[models.lstm_timeseries]
split = {{ "2" = 50, "{ARM}" = 50 }}
shadow = {{ version = "{ARM}", percent = 100 }}
experiment = "functional-cross-model"
"""
WEIGHTS = [("2", 50.0), (ARM, 50.0)]
WINDOW = 400
"""Weekly points per request: seasonal_naive's default window (364) and lstm v2's (52) fit."""
HORIZON = 12
KEYS = [f"co2-{i}" for i in range(24)]


@pytest.fixture(scope="module")
def cross_gateway(
    triton: TritonProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    directory = tmp_path_factory.mktemp("cross")
    routing = directory / "routing.toml"
    routing.write_text(ROUTING)
    process = start_gateway(
        triton.grpc_url,
        directory / "gateway.log",
        FORECAST_ROUTING_FILE=str(routing),
        FORECAST_STORE_PATH=str(directory / "experiments.sqlite3"),
    )
    yield process
    stop_process(process.process)


def stamp(day: np.datetime64) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromNanoseconds(int(pd.Timestamp(day, tz="UTC").value))
    return out


def test_seasonal_naive_in_lstms_split_serves_is_scored_and_compared(
    cross_gateway: GatewayProcess,
) -> None:
    values, dates = load_co2(), load_co2_dates()
    channel = grpc.insecure_channel(cross_gateway.target)
    stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
    served: dict[str, int] = {"2": 0, ARM: 0}
    sn_maes: list[float] = []
    try:
        for i, key in enumerate(KEYS):
            start = 40 * i
            history = values[start : start + WINDOW]
            actuals = values[start + WINDOW : start + WINDOW + HORIZON]
            response = stub.Forecast(
                pb.ForecastRequest(
                    model=LSTM,
                    history=history.tolist(),
                    horizon=HORIZON,
                    routing_key=key,
                    start=stamp(dates[start]),
                    frequency="W-SAT",
                ),
                timeout=30,
            )
            label = sticky_version(LSTM, key, WEIGHTS)
            assert response.routing_decision == forecast_pb2.ROUTING_DECISION_STICKY
            if label == ARM:
                assert (response.model, response.version) == (SN, "1"), response
                # each step repeats the value one season (52 weeks) before
                expected = history[-52 : -52 + HORIZON]
                assert list(response.values) == pytest.approx(expected.tolist(), rel=1e-5)
            else:
                assert (response.model, response.version) == (LSTM, "2"), response
            served[label] += 1
            scored = stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id=response.forecast_id, actuals=actuals.tolist()),
                timeout=10,
            )
            sn_mae = float(np.mean(np.abs(history[-52 : -52 + HORIZON] - actuals)))
            sn_maes.append(sn_mae)
            if label == ARM:  # its own score now; a shadow's comes when it is written
                (score,) = scored.scores
                assert score.version == ARM and score.mae == pytest.approx(sn_mae, rel=1e-4)
        # a shadow is recorded after the response (and scored when written, after the
        # actuals): wait until every one is in
        for _ in range(100):
            report = stub.GetExperiment(pb.GetExperimentRequest(model=LSTM), timeout=10)
            rows = {v.version: v for v in report.versions}
            if ARM in rows and rows[ARM].actuals_received == len(KEYS):
                break
            time.sleep(0.1)
        # a daily series: no lstm version is declared for it, seasonal_naive (any) is
        daily = stub.Forecast(
            pb.ForecastRequest(
                model=LSTM,
                history=values[:WINDOW].tolist(),
                horizon=7,
                start=stamp(np.datetime64("2024-01-01")),
                frequency="D",
            ),
            timeout=30,
        )
    finally:
        channel.close()

    assert min(served.values()) >= 5, served
    assert report.experiment == "functional-cross-model"
    rows = {v.version: v for v in report.versions}
    assert list(rows) == ["2", ARM]
    assert (rows["2"].model, rows[ARM].model) == (LSTM, SN)
    assert (rows["2"].requests_served, rows["2"].requests_shadowed) == (served["2"], 0)
    assert (rows[ARM].requests_served, rows[ARM].requests_shadowed) == (served[ARM], served["2"])
    assert rows[ARM].actuals_received == len(KEYS) and rows["2"].actuals_received == served["2"]
    # every key's seasonal_naive forecast (served or shadow) scored as computed here
    assert rows[ARM].errors.mae_mean == pytest.approx(float(np.mean(sn_maes)), rel=1e-4)
    assert math.isfinite(rows[ARM].errors.mase_mean)
    (comparison,) = report.comparisons
    assert (comparison.model_a, comparison.version_b, comparison.model_b) == (LSTM, ARM, SN)
    assert comparison.test == "paired t-test" and comparison.samples == served["2"]
    assert (daily.model, daily.version, daily.routing_restricted) == (SN, "1", True)
