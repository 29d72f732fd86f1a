"""Experiments across models through the gRPC edge: "moving_average:1" in lstm_timeseries's policy.

The fake serves lstm_timeseries (last value) and moving_average (v1: the
window's mean), so which model served a forecast shows in its values too.
A split arm of another model answers with that model's name, is recorded
in lstm_timeseries's experiment under its label, reported and compared
like a version; its calibration scores go to moving_average/1's pools. A
shadow of another model is recorded and scored the same way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from forecast_gateway.core.routing import sticky_version
from forecast_gateway.errors import Unavailable
from tests.edge import (
    HISTORY,
    LAST,
    LSTM,
    LSTM_PARAMETERS,
    MA,
    MA_PARAMETERS,
    MEAN_OF_10,
    forecast_request,
    routing_file,
    serving,
    window_mean,
)

ARM = "moving_average:1"
SPLIT = """
[models.lstm_timeseries]
split = { "2" = 50, "moving_average:1" = 50 }
fallback = "moving_average:2"
experiment = "edge-cross"
"""
WEIGHTS = [("2", 50.0), (ARM, 50.0)]
HORIZON = 3


def keys_routed_to(label: str, count: int) -> list[str]:
    keys = (f"series-{i}" for i in range(10_000))
    return [k for k in keys if sticky_version(LSTM, k, WEIGHTS) == label][:count]


def actuals(rng: np.random.Generator) -> list[float]:
    return [LAST + float(x) for x in rng.normal(0.0, 1.0, HORIZON)]


async def test_a_split_arm_of_another_model_serves_is_recorded_and_compared(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(3)
    served: dict[str, list[pb.ForecastResponse]] = {"2": [], ARM: []}
    scores: list[pb.ReportActualsResponse] = []
    async with serving(tmp_path, routing_file=routing_file(tmp_path, SPLIT)) as edge:
        for label in ("2", ARM):
            for key in keys_routed_to(label, 6):
                for _ in range(2):
                    response = await edge.stub.Forecast(
                        forecast_request(routing_key=key, horizon=HORIZON)
                    )
                    served[label].append(response)
                    scores.append(
                        await edge.stub.ReportActuals(
                            pb.ReportActualsRequest(
                                forecast_id=response.forecast_id, actuals=actuals(rng)
                            )
                        )
                    )
        report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
        pools = await edge.gateway.store.calibration_pools({})
        calls = [(c.model, c.version) for c in edge.backend.calls]

    for response in served[ARM]:
        assert (response.model, response.version) == (MA, "1"), response
        assert response.routing_decision == forecast_pb2.ROUTING_DECISION_STICKY
        assert list(response.values) == pytest.approx([MEAN_OF_10] * HORIZON, rel=1e-5)
        assert response.horizon == HORIZON and response.sequence_length == 10
    for response in served["2"]:
        assert (response.model, response.version) == (LSTM, "2"), response
        assert list(response.values) == pytest.approx([LAST] * HORIZON, rel=1e-5)
    assert calls.count((MA, "1")) == 12 and calls.count((LSTM, "2")) == 12
    assert {s.scores[0].version for s in scores} == {"2", ARM}

    assert report.experiment == "edge-cross" and report.forecasts == 24
    rows = {v.version: v for v in report.versions}
    assert list(rows) == ["2", ARM]
    assert (rows[ARM].model, rows["2"].model) == (MA, LSTM)
    for row in rows.values():
        assert (row.requests_served, row.requests_shadowed, row.actuals_received) == (12, 0, 12)
        assert row.errors.count == 12 and row.latency.count == 12
    (comparison,) = report.comparisons
    assert (comparison.version_a, comparison.model_a) == ("2", LSTM)
    assert (comparison.version_b, comparison.model_b) == (ARM, MA)
    assert comparison.test == "Welch two-sample t-test"
    assert comparison.samples == 6  # keys: a sticky split is compared per key
    assert ARM in comparison.verdict or "version 2" in comparison.verdict, comparison.verdict

    # calibration pools are the real versions': moving_average/1 got the arm's scores
    assert set(pools) == {(MA, "1"), (LSTM, "2")}
    assert all(pools[(MA, "1")].steps[step].size == 12 for step in range(HORIZON))
    assert all(pools[(LSTM, "2")].steps[step].size == 12 for step in range(HORIZON))


async def test_a_shadow_of_another_model_is_recorded_scored_and_paired(tmp_path: Path) -> None:
    text = f"""
[models.lstm_timeseries]
shadow = {{ version = "{ARM}", percent = 100 }}
experiment = "edge-cross-shadow"
"""
    rng = np.random.default_rng(4)
    reports: list[pb.ReportActualsResponse] = []
    async with serving(tmp_path, routing_file=routing_file(tmp_path, text)) as edge:
        for _ in range(8):
            response = await edge.stub.Forecast(forecast_request(horizon=HORIZON))
            assert (response.model, response.version) == (LSTM, "2")
            await edge.gateway.forecaster.drain_shadows()
            reports.append(
                await edge.stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id=response.forecast_id, actuals=actuals(rng))
                )
            )
        report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
        pools = await edge.gateway.store.calibration_pools({})
        shadow_calls = [c for c in edge.backend.calls if c.model == MA]

    assert len(shadow_calls) == 8
    assert all((c.version, c.window, c.horizon) == ("1", 10, HORIZON) for c in shadow_calls)
    for scored in reports:
        assert [(s.version, s.role) for s in scored.scores] == [
            ("2", forecast_pb2.SCORE_ROLE_SERVED),
            (ARM, forecast_pb2.SCORE_ROLE_SHADOW),
        ]
        # the shadow's values are moving_average's (the window's mean), scored on its own window
        assert scored.scores[1].steps_scored == HORIZON
    rows = {v.version: v for v in report.versions}
    assert (rows[ARM].model, rows[ARM].requests_served, rows[ARM].requests_shadowed) == (MA, 0, 8)
    assert rows[ARM].actuals_received == 8 and rows["2"].requests_served == 8
    (comparison,) = report.comparisons
    assert comparison.test == "paired t-test" and comparison.samples == 8
    assert (comparison.model_a, comparison.model_b) == (LSTM, MA)
    assert {(MA, "1"), (LSTM, "2")} <= set(pools) and (LSTM, ARM) not in pools
    assert pools[(MA, "1")].steps[0].size == 8


def backend_with_daily_ma() -> FakeBackend:
    """moving_average v1 declared for daily series only."""
    return FakeBackend(
        {
            LSTM: FakeModel(dict(LSTM_PARAMETERS), {"1": "READY", "2": "READY"}),
            MA: FakeModel(
                {**MA_PARAMETERS, "v1.forecast.frequencies": "D"},
                {"1": "READY", "2": "READY"},
                forecasts={"1": window_mean},
            ),
        }
    )


async def test_an_arm_that_cannot_serve_the_request_is_left_out(tmp_path: Path) -> None:
    text = """
[models.lstm_timeseries]
split = { "1" = 50, "moving_average:1" = 25, "moving_average:2" = 25 }
"""
    start = timestamp_pb2.Timestamp()
    start.FromJsonString("2024-01-07T00:00:00Z")  # a Sunday: on the W-SUN and D grids
    async with serving(
        tmp_path, backend_with_daily_ma(), routing_file=routing_file(tmp_path, text)
    ) as edge:
        # 20 points: moving_average v2 (window 52) cannot serve; weekly: nor can v1 (daily only)
        weekly = [
            await edge.stub.Forecast(
                forecast_request(history=HISTORY[:20], start=start, frequency="W-SUN")
            )
            for _ in range(20)
        ]
        daily = [
            await edge.stub.Forecast(
                forecast_request(history=HISTORY[:20], start=start, frequency="D")
            )
            for _ in range(40)
        ]
    assert {(r.model, r.version) for r in weekly} == {(LSTM, "1")}
    assert all(r.routing_restricted for r in weekly + daily)
    assert {(r.model, r.version) for r in daily} == {(LSTM, "1"), (MA, "1")}


async def test_a_failing_arm_falls_back_and_a_gone_arm_is_routed_again(tmp_path: Path) -> None:
    key = keys_routed_to(ARM, 1)[0]
    async with serving(tmp_path, routing_file=routing_file(tmp_path, SPLIT)) as edge:
        edge.backend.errors[(MA, "1")] = Unavailable("the arm is down", reason="TRITON_UNAVAILABLE")
        fallen = await edge.stub.Forecast(forecast_request(routing_key=key))
        del edge.backend.errors[(MA, "1")]
        edge.backend.models[MA].states["1"] = "UNAVAILABLE"  # Triton unloaded it: VERSION_GONE
        rerouted = await edge.stub.Forecast(forecast_request(routing_key=key))
        await edge.gateway.forecaster.drain_shadows()
        report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
    assert (fallen.model, fallen.version) == (MA, "2")
    assert fallen.routing_decision == forecast_pb2.ROUTING_DECISION_FALLBACK
    assert fallen.primary_version == ARM
    assert (rerouted.model, rerouted.version) == (LSTM, "2")
    assert rerouted.routing_decision == forecast_pb2.ROUTING_DECISION_STICKY
    # the fallback belongs to moving_average's experiment; the re-routed one to lstm's
    assert [(v.version, v.requests_served) for v in report.versions] == [("2", 1)]
