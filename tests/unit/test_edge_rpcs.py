"""The other RPCs through the edge: ForecastBatch and StreamForecast with in-band errors,
CompareVersions, ListModels/GetModel, and the A/B round trip on SQLite
(Forecast, ReportActuals, GetExperiment, ListExperiments).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import grpc
import pytest

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.errors import Unavailable
from tests.edge import (
    HISTORY,
    LAST,
    LSTM,
    MA,
    MEAN_OF_10,
    details,
    failure,
    forecast_request,
    key_routed_to,
    routing_file,
    serving,
    until_answers,
)

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE.value[0]


def ramp(points: int, last: float) -> list[float]:
    """`points` values rising by one to `last`."""
    return [last - points + 1 + i for i in range(points)]


async def test_a_batch_answers_each_series_in_band_in_request_order(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        response = await edge.stub.ForecastBatch(
            pb.ForecastBatchRequest(
                model=LSTM,
                version="1",
                horizon=3,
                series=[
                    pb.Series(id="short", history=HISTORY[:5]),
                    pb.Series(id="a", history=ramp(20, 100.0)),
                    pb.Series(id="nan", history=[*HISTORY[:-1], float("nan")]),
                    pb.Series(id="b", history=ramp(30, -7.0)),
                ],
            )
        )
        calls = [(c.version, c.rows, c.window, c.horizon) for c in edge.backend.calls]
    assert [r.id for r in response.results] == ["short", "a", "nan", "b"]
    by_id = {r.id: r for r in response.results}
    assert list(by_id["a"].forecast.values) == pytest.approx([100.0] * 3)
    assert list(by_id["b"].forecast.values) == pytest.approx([-7.0] * 3)
    assert by_id["a"].forecast.version == "1"
    assert by_id["a"].forecast.routing_decision == forecast_pb2.ROUTING_DECISION_PINNED
    for bad, reason in (("short", "INVALID_ARGUMENT"), ("nan", "MISSING_VALUES")):
        error = by_id[bad].error
        assert (error.code, error.reason) == (INVALID, reason)
        assert [v.field for v in error.field_violations] == ["history"]
    assert "needs at least 10" in by_id["short"].error.message
    assert calls == [("1", 2, 10, 3)]  # the good series in one tensor


async def test_a_batch_whose_version_fails_gives_each_series_the_error(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.errors[(LSTM, "1")] = Unavailable("down", reason="TRITON_UNAVAILABLE")
        response = await edge.stub.ForecastBatch(
            pb.ForecastBatchRequest(
                model=LSTM,
                series=[
                    pb.Series(id="v1", history=HISTORY[:20]),  # only v1's window fits
                    pb.Series(id="v2", history=HISTORY),
                ],
            )
        )
    by_id = {r.id: r for r in response.results}
    assert (by_id["v1"].error.code, by_id["v1"].error.reason) == (
        UNAVAILABLE,
        "TRITON_UNAVAILABLE",
    )
    assert by_id["v2"].forecast.version == "2"  # the other group is untouched


@pytest.mark.parametrize(
    ("request_fields", "fields"),
    [
        ({"model": MA}, ["series"]),
        ({"model": ""}, ["model", "series"]),
        ({"model": MA, "series": [pb.Series(id="", history=HISTORY)]}, ["series[0].id"]),
        (
            {"model": MA, "series": [pb.Series(id="x", history=HISTORY)] * 2},
            ["series"],
        ),
        ({"model": MA, "series": [pb.Series(id=str(i)) for i in range(5)]}, ["series"]),
    ],
    ids=["empty", "no-model", "no-id", "repeated-id", "too-many"],
)
async def test_a_batch_that_is_invalid_as_a_whole_is_one_status(
    tmp_path: Path, request_fields: dict[str, object], fields: list[str]
) -> None:
    async with serving(tmp_path, max_batch_series=4) as edge:
        error = await failure(edge.stub.ForecastBatch(pb.ForecastBatchRequest(**request_fields)))  # type: ignore[arg-type]
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error).fields == fields


async def test_a_stream_answers_each_request_with_its_forecast_or_error(tmp_path: Path) -> None:
    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        yield pb.StreamForecastRequest(request_id="ok", request=forecast_request(version="1"))
        yield pb.StreamForecastRequest(request_id="gone", request=forecast_request(model="nope"))
        yield pb.StreamForecastRequest(request_id="bad", request=forecast_request(horizon=-1))
        yield pb.StreamForecastRequest(
            request_id="avg", request=forecast_request(model=MA, horizon=2)
        )

    async with serving(tmp_path) as edge:
        call = edge.stub.StreamForecast(requests())
        answers = {a.request_id: a async for a in call}
        code = await call.code()
    assert code is grpc.StatusCode.OK
    assert set(answers) == {"ok", "gone", "bad", "avg"}
    assert list(answers["ok"].forecast.values) == pytest.approx([LAST] * 5)
    assert list(answers["avg"].forecast.values) == pytest.approx([MEAN_OF_10] * 2)
    assert (answers["gone"].error.code, answers["gone"].error.reason) == (
        NOT_FOUND,
        "MODEL_NOT_FOUND",
    )
    assert answers["bad"].error.code == INVALID
    assert [v.field for v in answers["bad"].error.field_violations] == ["horizon"]


@pytest.mark.parametrize("request_id", ["", "twice"])
async def test_a_stream_request_id_that_is_empty_or_in_flight_ends_the_stream(
    tmp_path: Path, request_id: str
) -> None:
    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        yield pb.StreamForecastRequest(request_id=request_id, request=forecast_request())
        yield pb.StreamForecastRequest(request_id=request_id, request=forecast_request())

    async with serving(tmp_path) as edge:
        edge.backend.gate = asyncio.Event()  # the first stays in flight
        call = edge.stub.StreamForecast(requests())
        error = await failure(_drain(call))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(error).fields == ["request_id"]


async def _drain(call: AsyncIterable[pb.StreamForecastResponse]) -> None:
    async for _ in call:
        pass


async def test_compare_versions_runs_each_version_with_its_own_window(tmp_path: Path) -> None:
    history = [*HISTORY[:-10], *([5.0] * 10)]  # v1 (window 10) sees a constant 5
    async with serving(tmp_path) as edge:
        compared = await edge.stub.CompareVersions(
            pb.CompareVersionsRequest(model=MA, versions=["1", "2"], history=history, horizon=2)
        )
        short = await edge.stub.CompareVersions(
            pb.CompareVersionsRequest(model=LSTM, history=HISTORY[:30], horizon=2)
        )
        recorded = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=MA))
    by_version = {f.version: f for f in compared.forecasts}
    assert (by_version["1"].sequence_length, by_version["2"].sequence_length) == (10, 52)
    assert list(by_version["1"].values) == pytest.approx([5.0, 5.0])  # the window's mean
    assert list(by_version["2"].values) == pytest.approx([5.0, 5.0])  # the last value
    (difference,) = compared.differences
    assert (difference.version_a, difference.version_b) == ("1", "2")
    assert difference.max_absolute_difference == pytest.approx(0.0, abs=1e-4)
    short_by_version = {f.version: f for f in short.forecasts}
    assert list(short_by_version["1"].values) == pytest.approx([HISTORY[29]] * 2)
    assert short_by_version["2"].error.code == INVALID  # 30 points: v2 needs 52
    assert short_by_version["2"].values == []
    assert short.differences == []
    assert sum(v.requests_served for v in recorded.versions) == 0  # comparisons are not recorded


async def test_list_and_get_models_describe_the_catalog(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        listed = await edge.stub.ListModels(pb.ListModelsRequest())
        lstm = (await edge.stub.GetModel(pb.GetModelRequest(name=LSTM))).model
    assert [m.name for m in listed.models] == [LSTM, MA]
    assert (lstm.default_version, lstm.default_horizon, lstm.max_horizon) == ("2", 5, 64)
    assert {v.version: v.sequence_length for v in lstm.versions} == {"1": 10, "2": 52}
    assert {v.state for v in lstm.versions} == {forecast_pb2.MODEL_VERSION_STATE_READY}


async def test_forecast_actuals_and_experiment_round_trip_on_sqlite(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        served = [
            await edge.stub.Forecast(forecast_request(version=v, horizon=2))
            for v in ("1", "1", "2")
        ]
        scored = await edge.stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=served[0].forecast_id, actuals=[4.0, 6.0])
        )
        partial = await edge.stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=served[2].forecast_id, actuals=[5.0], offset=1)
        )
        past = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id=served[1].forecast_id, actuals=[1.0] * 3)
            )
        )
        experiment = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
        listed = await edge.stub.ListExperiments(pb.ListExperimentsRequest())
    # The fake forecast LAST (3.0) at both steps: errors 1 and 3.
    assert (scored.model, scored.horizon, scored.steps_received) == (LSTM, 2, 2)
    (score,) = scored.scores
    assert (score.version, score.role, score.steps_scored) == (
        "1",
        forecast_pb2.SCORE_ROLE_SERVED,
        2,
    )
    assert score.mae == pytest.approx(2.0)
    assert partial.steps_received == 1 and partial.scores[0].mae == pytest.approx(2.0)
    assert past.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(past).fields == ["actuals"]
    assert (experiment.model, experiment.experiment, experiment.forecasts) == (LSTM, "default", 3)
    versions = {v.version: v for v in experiment.versions}
    assert {v: e.requests_served for v, e in versions.items()} == {"1": 2, "2": 1}
    assert {v: e.actuals_received for v, e in versions.items()} == {"1": 1, "2": 1}
    assert versions["1"].errors.mae_mean == pytest.approx(2.0)
    summaries = {(s.model, s.experiment): s for s in listed.experiments}
    assert summaries[(LSTM, "default")].forecasts == 3
    assert summaries[(LSTM, "default")].current
    assert summaries[(MA, "default")].forecasts == 0  # current, before its first forecast


async def test_an_experiment_named_by_the_routing_file_collects_served_and_shadow(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, routing_file=routing_file(tmp_path)) as edge:
        served = await edge.stub.Forecast(forecast_request(routing_key=key_routed_to("2")))

        async def shadowed() -> bool:  # the shadow runs after the response
            report = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
            return any(v.version == "1" and v.requests_shadowed for v in report.versions)

        await until_answers(shadowed, "the shadow recorded")
        current = await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
        unknown = await failure(
            edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM, experiment="never-run"))
        )
        malformed = await failure(
            edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM, experiment="no spaces!"))
        )
    assert served.version == "2"
    assert (current.experiment, current.forecasts) == ("edge-demo", 1)
    counts = {v.version: (v.requests_served, v.requests_shadowed) for v in current.versions}
    assert counts == {"1": (0, 1), "2": (1, 0)}
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert details(unknown).info.reason == "EXPERIMENT_NOT_FOUND"
    assert malformed.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(malformed).fields == ["experiment"]
