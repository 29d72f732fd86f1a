"""End to end through the real gateway process and a real Triton: forecasts and models."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from tests.conftest import served_models
from training.data import load_co2, train_test_split

Stub = forecast_service_pb2_grpc.ForecastServiceStub

MODELS = {"lstm_timeseries": {"1": 10, "2": 52}, "moving_average": {"1": 10, "2": 52}}
ALL_VERSIONS = [(m, v) for m, versions in MODELS.items() for v in versions]


def forecast(stub: Stub, **fields: Any) -> forecast_service_pb2.ForecastResponse:
    response: forecast_service_pb2.ForecastResponse = stub.Forecast(
        forecast_service_pb2.ForecastRequest(**fields), timeout=10
    )
    return response


@pytest.mark.parametrize(("model", "version"), ALL_VERSIONS)
def test_every_model_version_forecasts_in_the_units_of_the_history(
    stub: Stub, model: str, version: str
) -> None:
    series = load_co2()[-120:]
    response = forecast(stub, model=model, version=version, history=series.tolist(), horizon=8)
    values = np.asarray(response.values)
    assert (response.model, response.version) == (model, version)
    assert response.routing_decision == forecast_pb2.ROUTING_DECISION_PINNED
    assert response.horizon == 8 and values.shape == (8,)
    assert response.sequence_length == MODELS[model][version]
    assert np.isfinite(values).all()
    # co2 sits around 360 ppm here and moves a few ppm a year: a forecast in
    # z units or in another scale would be far outside this band.
    window = series[-response.sequence_length :]
    assert np.all(np.abs(values - window.mean()) < 4 * window.std() + 2.0)


def test_moving_average_continues_a_ramp_near_its_level(stub: Stub) -> None:
    ramp = np.linspace(1000.0, 1100.0, 101)
    response = forecast(stub, model="moving_average", version="1", history=ramp.tolist(), horizon=5)
    # The mean of the last 10 points of the ramp, flat: 1095.5.
    assert np.allclose(response.values, ramp[-10:].mean(), atol=1e-3)


def test_unpinned_request_gets_the_default_version(stub: Stub) -> None:
    response = forecast(stub, model="lstm_timeseries", history=load_co2()[-60:].tolist())
    assert response.version == "2"
    assert response.routing_decision == forecast_pb2.ROUTING_DECISION_DEFAULT
    model = stub.GetModel(forecast_service_pb2.GetModelRequest(name="lstm_timeseries")).model
    assert response.horizon == model.default_horizon


def test_forecast_ids_are_unique(stub: Stub) -> None:
    ids = {
        forecast(stub, model="moving_average", history=[1.0] * 12).forecast_id for _ in range(20)
    }
    assert len(ids) == 20


def test_constant_series_forecast_is_the_constant(stub: Stub) -> None:
    for model, version in ALL_VERSIONS:
        response = forecast(stub, model=model, version=version, history=[42.0] * 60, horizon=3)
        assert np.allclose(response.values, 42.0, atol=0.5), (model, version, response.values)


@pytest.mark.parametrize("version", ["1", "2"])
def test_lstm_beats_the_naive_forecast_on_held_out_co2(stub: Stub, version: str) -> None:
    """On held-out weeks the LSTM is closer to the truth than 'last value' on average."""
    train, test = train_test_split(load_co2())
    series = np.concatenate([train[-60:], test])
    horizon, errors_lstm, errors_naive = 5, [], []
    for origin in range(60, len(series) - horizon, 7):
        history, actual = series[:origin], series[origin : origin + horizon]
        response = forecast(
            stub,
            model="lstm_timeseries",
            version=version,
            history=history.tolist(),
            horizon=horizon,
        )
        errors_lstm.append(np.abs(np.asarray(response.values) - actual).mean())
        errors_naive.append(np.abs(history[-1] - actual).mean())
    assert len(errors_lstm) >= 50
    assert np.mean(errors_lstm) < np.mean(errors_naive)


def test_list_models_reports_versions_windows_and_readiness(stub: Stub) -> None:
    models = stub.ListModels(forecast_service_pb2.ListModelsRequest()).models
    assert [m.name for m in models] == served_models()  # discovered: no gateway config needed
    for model in models:
        assert model.max_horizon >= model.default_horizon > 0
        if model.name in MODELS:
            windows = {v.version: v.sequence_length for v in model.versions}
            assert windows == MODELS[model.name]
        assert all(v.state == forecast_pb2.MODEL_VERSION_STATE_READY for v in model.versions)
        assert all(v.unavailable_reason == "" for v in model.versions)
    lstm = next(m for m in models if m.name == "lstm_timeseries")
    assert lstm.default_version == "2"
    assert all(v.description for v in lstm.versions)


def test_sequence_length_selects_the_moving_average_window(stub: Stub) -> None:
    history = list(range(100))
    response = forecast(
        stub, model="moving_average", version="1", history=history, sequence_length=4
    )
    assert response.sequence_length == 4
    assert np.allclose(response.values, np.mean(history[-4:]), atol=1e-3)
