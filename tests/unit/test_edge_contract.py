"""Models that declare the contract, through the whole gateway in process (fake backend).

Discovery without gateway config, what ListModels reports, a fixed-horizon
quantile model with its own scaling, the season input, eligibility by
frequency, and a broken declaration that costs only its own version.
Inference itself is judged against real Triton in tests/functional.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.base import Rows
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from tests.edge import HISTORY, LSTM, details, failure, fake_backend, serving

LEVELS = (0.025, 0.1, 0.5, 0.9, 0.975)
QUANTILE_MODEL = {
    "forecast.contract": "1",
    "description": "a team's quantile model",
    "forecast.normalization": "none",
    "forecast.window": "28",
    "forecast.horizon": "fixed",
    "forecast.max_horizon": "14",
    "forecast.horizon_input": "none",
    "forecast.output_kind": "quantiles",
    "forecast.quantile_levels": ",".join(str(q) for q in LEVELS),
    "forecast.output": "none",
    "forecast.frequencies": "D",
}
SEASONAL = {
    "forecast.contract": "1",
    "forecast.normalization": "none",
    "forecast.window": "1:1024",
    "forecast.default_window": "28",
    "forecast.max_horizon": "64",
    "forecast.season_input": "SEASON",
}
DAILY = timestamp_pb2.Timestamp()
DAILY.FromDatetime(datetime(2024, 1, 1, tzinfo=UTC))


def spread_quantiles(windows: Rows, steps: int) -> Rows:
    """Point = the window's last value; quantiles last +- 1, 2 (raw units), steps long."""
    last = windows[:, -1][:, None, None]
    offsets = np.array([0.0, -2.0, -1.0, 0.0, 1.0, 2.0], dtype=np.float32)
    return np.broadcast_to(last + offsets, (windows.shape[0], steps, 6)).astype(np.float32)


def with_models(**extra: FakeModel) -> FakeBackend:
    backend = fake_backend()
    backend.models.update(extra)
    return backend


async def test_a_model_that_declares_the_contract_is_served_without_gateway_config(
    tmp_path: Path,
) -> None:
    backend = with_models(
        team_q=FakeModel(QUANTILE_MODEL, {"1": "READY"}, forecasts={"1": spread_quantiles}),
        not_a_forecaster=FakeModel({"sequence_length": "3", "max_horizon": "2"}, {"1": "READY"}),
    )
    async with serving(tmp_path, backend) as edge:
        listed = await edge.stub.ListModels(pb.ListModelsRequest())
        assert [m.name for m in listed.models] == [LSTM, "moving_average", "team_q"]
        (version,) = next(m for m in listed.models if m.name == "team_q").versions
        assert version.output_kind == "quantiles" and version.horizon_mode == "fixed"
        assert list(version.quantile_levels) == list(LEVELS)
        assert list(version.frequencies) == ["D"] and version.normalization == "none"
        assert (version.sequence_length, version.max_horizon) == (28, 14)
        error = await failure(
            edge.stub.Forecast(pb.ForecastRequest(model="not_a_forecaster", history=HISTORY))
        )
        assert error.code() is grpc.StatusCode.NOT_FOUND


async def test_allowed_models_restricts_what_is_served(tmp_path: Path) -> None:
    backend = with_models(team_q=FakeModel(QUANTILE_MODEL, {"1": "READY"}))
    async with serving(tmp_path, backend, allowed_models="team_q, moving_average") as edge:
        listed = await edge.stub.ListModels(pb.ListModelsRequest())
        assert [m.name for m in listed.models] == ["moving_average", "team_q"]


async def test_a_fixed_horizon_quantile_model_gets_raw_windows_and_serves_its_own_quantiles(
    tmp_path: Path,
) -> None:
    backend = with_models(
        team_q=FakeModel(QUANTILE_MODEL, {"1": "READY"}, forecasts={"1": spread_quantiles})
    )
    history = [300.0 + (i % 7) * 10 for i in range(40)]
    async with serving(tmp_path, backend) as edge:
        answer = await edge.stub.Forecast(
            pb.ForecastRequest(
                model="team_q",
                history=history,
                horizon=3,
                start=DAILY,
                frequency="D",
                interval_coverages=[0.8, 0.95],
                quantile_levels=[0.5, 0.3],
            )
        )
    call = backend.calls[-1]
    assert call.horizon == 14 and call.window == 28  # the model's fixed output, its window
    assert call.windows is not None and call.windows[0].tolist() == history[-28:]  # raw values
    last = history[-1]
    assert list(answer.values) == [last] * 3
    bands = {i.coverage: list(i.lower) + list(i.upper) for i in answer.intervals}
    assert bands[0.8] == pytest.approx([last - 1] * 3 + [last + 1] * 3)
    assert bands[0.95] == pytest.approx([last - 2] * 3 + [last + 2] * 3)
    quantiles = {q.level: list(q.values) for q in answer.quantiles}
    assert quantiles[0.5] == [last] * 3
    assert quantiles[0.3] == pytest.approx([last - 0.5] * 3)
    assert "model quantiles" in answer.uncertainty.method
    assert len(answer.timestamps) == 3


async def test_a_coverage_beyond_the_declared_levels_is_invalid(tmp_path: Path) -> None:
    backend = with_models(team_q=FakeModel(QUANTILE_MODEL, {"1": "READY"}))
    async with serving(tmp_path, backend) as edge:
        error = await failure(
            edge.stub.Forecast(
                pb.ForecastRequest(model="team_q", history=HISTORY, interval_coverages=[0.99])
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    ((field, says),) = details(error).violations
    assert field == "interval_coverages[0]" and "0.005 and 0.995" in says


async def test_a_seasonal_model_is_sent_the_season_of_the_request_s_frequency(
    tmp_path: Path,
) -> None:
    backend = with_models(seasonal=FakeModel(SEASONAL, {"1": "READY"}))
    async with serving(tmp_path, backend) as edge:
        for frequency, season in (("D", 7), ("h", 24), ("", 1)):
            request = pb.ForecastRequest(model="seasonal", history=HISTORY, frequency=frequency)
            if frequency:
                request.start.CopyFrom(DAILY)
            await edge.stub.Forecast(request)
            assert backend.calls[-1].season == season


async def test_routing_only_draws_versions_declared_for_the_request_s_frequency(
    tmp_path: Path,
) -> None:
    backend = fake_backend()
    backend.models[LSTM].parameters["v2.forecast.frequencies"] = "W"
    async with serving(tmp_path, backend) as edge:
        daily = await edge.stub.Forecast(
            pb.ForecastRequest(model=LSTM, history=HISTORY, start=DAILY, frequency="D")
        )
        assert daily.version == "1" and daily.routing_restricted  # v2 is the default
        bare = await edge.stub.Forecast(pb.ForecastRequest(model=LSTM, history=HISTORY))
        assert bare.version == "2"
        error = await failure(
            edge.stub.Forecast(
                pb.ForecastRequest(
                    model=LSTM, version="2", history=HISTORY, start=DAILY, frequency="D"
                )
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert found.fields == ["frequency"]
    assert "declared for frequencies W, not 'D'" in found.violations[0][1]
    assert found.info.reason == "FREQUENCY_NOT_SUPPORTED"


async def test_a_bad_declaration_costs_only_its_version_and_says_why(tmp_path: Path) -> None:
    backend = fake_backend()
    backend.models[LSTM].parameters["v1.forecast.normalization"] = "minmax"
    backend.version_reasons[(LSTM, "2")] = "ignored while READY"
    backend.models["moving_average"].states["2"] = "UNAVAILABLE"
    backend.version_reasons[("moving_average", "2")] = "failed to load: ModuleNotFoundError"
    async with serving(tmp_path, backend) as edge:
        listed = await edge.stub.ListModels(pb.ListModelsRequest())
        versions = {(m.name, v.version): v for m in listed.models for v in m.versions}
        bad = versions[(LSTM, "1")]
        assert bad.state == forecast_pb2.MODEL_VERSION_STATE_UNAVAILABLE
        assert bad.unavailable_reason == (
            "config.pbtxt: forecast.normalization: expected one of zscore, none, got 'minmax'"
        )
        assert versions[(LSTM, "2")].unavailable_reason == ""
        assert versions[("moving_average", "2")].unavailable_reason == (
            "failed to load: ModuleNotFoundError"
        )
        served = await edge.stub.Forecast(pb.ForecastRequest(model=LSTM, history=HISTORY))
        assert served.version == "2"
