"""One request line per call and the request metrics, labelled by where the call went.

Read as an operator would: the structlog events the gateway emits (with the
bound request id and rpc) and the Prometheus samples of the default registry
(deltas: the registry lives as long as the test process).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

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
    captured_logs,
    failure,
    forecast_request,
    key_routed_to,
    one_request_line,
    request_lines,
    requests_counted,
    routing_file,
    sample,
    serving,
    until,
)


def duration_count(rpc: str, model: str, version: str) -> float:
    labels = {"rpc": rpc, "model": model, "version": version}
    return sample("forecast_gateway_request_duration_seconds_count", labels)


def series_counted(rpc: str, model: str, version: str, routing: str) -> float:
    labels = {"rpc": rpc, "model": model, "version": version, "routing": routing}
    return sample("forecast_gateway_series_total", labels)


async def test_a_forecast_writes_one_line_and_counts_once_by_its_route(tmp_path: Path) -> None:
    counted = requests_counted("Forecast", "OK", LSTM, "1", "pinned")
    timed = duration_count("Forecast", LSTM, "1")
    worker = sample("forecast_gateway_worker_requests_total", {"worker": "0"})
    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            await edge.stub.Forecast(
                forecast_request(version="1"), metadata=(("x-request-id", "line-1"),)
            )
            line = await one_request_line(logs)
    assert line["event"] == "request" and line["log_level"] == "info"
    assert (line["rpc"], line["request_id"]) == ("Forecast", "line-1")
    assert (line["model"], line["version"], line["routing"], line["status"]) == (
        LSTM,
        "1",
        "pinned",
        "OK",
    )
    assert line["routing_restricted"] is False
    assert isinstance(line["latency_ms"], float) and 0 <= line["latency_ms"] < 5000
    assert requests_counted("Forecast", "OK", LSTM, "1", "pinned") == counted + 1
    assert duration_count("Forecast", LSTM, "1") == timed + 1
    assert sample("forecast_gateway_worker_requests_total", {"worker": "0"}) == worker + 1


async def test_every_call_gets_its_own_line(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            for i in range(5):
                await edge.stub.Forecast(
                    forecast_request(), metadata=(("x-request-id", f"call-{i}"),)
                )
            await until(lambda: len(request_lines(logs)) == 5, "five request lines")
    lines = request_lines(logs)
    assert [line["request_id"] for line in lines] == [f"call-{i}" for i in range(5)]
    assert {(line["version"], line["routing"]) for line in lines} == {("2", "default")}


async def test_an_unknown_model_is_never_a_label(tmp_path: Path) -> None:
    counted = requests_counted("Forecast", "NOT_FOUND")
    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            await failure(edge.stub.Forecast(forecast_request(model="no-such-model")))
            line = await one_request_line(logs)
    assert (line["status"], line["log_level"], line["reason"]) == (
        "NOT_FOUND",
        "warning",
        "MODEL_NOT_FOUND",
    )
    assert "model" not in line and "version" not in line
    assert "no-such-model" in line["error"]
    assert requests_counted("Forecast", "NOT_FOUND") == counted + 1
    assert requests_counted("Forecast", "NOT_FOUND", "no-such-model") == 0


async def test_a_failure_after_routing_is_labelled_by_its_route(tmp_path: Path) -> None:
    counted = requests_counted("Forecast", "UNAVAILABLE", LSTM, "1", "pinned")
    async with serving(tmp_path) as edge:
        edge.backend.errors[(LSTM, "1")] = Unavailable("down", reason="TRITON_UNAVAILABLE")
        with captured_logs() as logs:
            await failure(edge.stub.Forecast(forecast_request(version="1")))
            line = await one_request_line(logs)
    assert (line["model"], line["version"], line["status"], line["reason"]) == (
        LSTM,
        "1",
        "UNAVAILABLE",
        "TRITON_UNAVAILABLE",
    )
    assert requests_counted("Forecast", "UNAVAILABLE", LSTM, "1", "pinned") == counted + 1


async def test_a_sticky_route_is_labelled_sticky_and_runs_its_shadow(tmp_path: Path) -> None:
    key = key_routed_to("2")
    counted = requests_counted("Forecast", "OK", LSTM, "2", "sticky")
    shadows = {"model": LSTM, "version": "1", "outcome": "ok"}
    shadowed = sample("forecast_gateway_shadow_requests_total", shadows)
    async with serving(tmp_path, routing_file=routing_file(tmp_path)) as edge:
        with captured_logs() as logs:
            response = await edge.stub.Forecast(forecast_request(routing_key=key))
            line = await one_request_line(logs)
        await until(
            lambda: sample("forecast_gateway_shadow_requests_total", shadows) == shadowed + 1,
            "the shadow forecast",
        )
        versions = [c.version for c in edge.backend.calls]
    assert (response.version, response.routing_decision) == (
        "2",
        forecast_pb2.ROUTING_DECISION_STICKY,
    )
    assert (line["version"], line["routing"]) == ("2", "sticky")
    assert requests_counted("Forecast", "OK", LSTM, "2", "sticky") == counted + 1
    assert versions == ["2", "1"]  # the served version, then its shadow


async def test_a_fallback_is_labelled_fallback_and_names_the_fallback_model(
    tmp_path: Path,
) -> None:
    key = key_routed_to("2")
    counted = requests_counted("Forecast", "OK", LSTM, "1", "fallback")
    fallbacks = {"model": LSTM, "failed_version": "2", "reason": "TRITON_UNAVAILABLE"}
    fell_back = sample("forecast_gateway_fallbacks_total", fallbacks)
    async with serving(tmp_path, routing_file=routing_file(tmp_path)) as edge:
        edge.backend.errors[(LSTM, "2")] = Unavailable("down", reason="TRITON_UNAVAILABLE")
        with captured_logs() as logs:
            response = await edge.stub.Forecast(forecast_request(routing_key=key))
            line = await one_request_line(logs)
    assert (response.model, response.version, response.primary_version) == (MA, "1", "2")
    assert response.routing_decision == forecast_pb2.ROUTING_DECISION_FALLBACK
    assert list(response.values) == pytest.approx([MEAN_OF_10] * 5)
    assert (line["model"], line["version"], line["routing"], line["fallback_model"]) == (
        LSTM,
        "1",
        "fallback",
        MA,
    )
    assert line["status"] == "OK"
    assert requests_counted("Forecast", "OK", LSTM, "1", "fallback") == counted + 1
    assert sample("forecast_gateway_fallbacks_total", fallbacks) == fell_back + 1


async def test_a_batch_line_counts_its_series(tmp_path: Path) -> None:
    counted = requests_counted("ForecastBatch", "OK", MA)
    series = series_counted("ForecastBatch", MA, "1", "default")
    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            await edge.stub.ForecastBatch(
                pb.ForecastBatchRequest(
                    model=MA,
                    series=[
                        pb.Series(id="a", history=HISTORY),
                        pb.Series(id="b", history=HISTORY[:20]),
                        pb.Series(id="bad", history=[]),
                    ],
                )
            )
            line = await one_request_line(logs)
    assert (line["rpc"], line["model"], line["series"], line["status"]) == (
        "ForecastBatch",
        MA,
        3,
        "OK",
    )
    assert requests_counted("ForecastBatch", "OK", MA) == counted + 1
    assert series_counted("ForecastBatch", MA, "1", "default") == series + 2


async def test_a_stream_writes_one_line_with_its_answer_count(tmp_path: Path) -> None:
    series = series_counted("StreamForecast", LSTM, "1", "pinned")
    counted = requests_counted("StreamForecast", "OK")

    async def requests() -> AsyncIterator[pb.StreamForecastRequest]:
        for i in range(3):
            yield pb.StreamForecastRequest(
                request_id=f"s{i}", request=forecast_request(version="1")
            )

    async with serving(tmp_path) as edge:
        with captured_logs() as logs:
            answers = [a async for a in edge.stub.StreamForecast(requests())]
            line = await one_request_line(logs)
    assert [list(a.forecast.values) for a in answers] == [pytest.approx([LAST] * 5)] * 3
    assert (line["rpc"], line["responses"], line["status"]) == ("StreamForecast", 3, "OK")
    assert series_counted("StreamForecast", LSTM, "1", "pinned") == series + 3
    assert requests_counted("StreamForecast", "OK") == counted + 1


async def test_actuals_and_experiments_are_labelled_by_their_model(tmp_path: Path) -> None:
    actuals = sample("forecast_gateway_actuals_received_total", {"model": LSTM})
    scored = {"model": LSTM, "version": "1", "role": "served"}
    mase = sample("forecast_gateway_forecast_mase_count", scored)
    async with serving(tmp_path) as edge:
        forecast = await edge.stub.Forecast(forecast_request(version="1", horizon=2))
        with captured_logs() as logs:
            await edge.stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id=forecast.forecast_id, actuals=[4.0, 5.0])
            )
            reported = await one_request_line(logs, "ReportActuals")
            await edge.stub.GetExperiment(pb.GetExperimentRequest(model=LSTM))
            experiment = await one_request_line(logs, "GetExperiment")
    assert (reported["model"], reported["status"]) == (LSTM, "OK")
    assert (experiment["model"], experiment["experiment"]) == (LSTM, "default")
    assert sample("forecast_gateway_actuals_received_total", {"model": LSTM}) == actuals + 1
    assert sample("forecast_gateway_forecast_mase_count", scored) == mase + 1
