"""A/B routing and version comparison through a real gateway process and Triton.

These tests start gateways of their own (on the session's Triton), each with
the routing file and experiment store the test needs.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from scipy.stats import chisquare

from forecast.v1 import forecast_pb2, forecast_service_pb2_grpc
from forecast.v1 import forecast_service_pb2 as pb
from tests.conftest import ROOT, GatewayProcess, start_gateway, stop_process
from tests.polling import eventually_sync
from tools.embedded_triton import TritonProcess
from training.data import load_co2, train_test_split

Stub = forecast_service_pb2_grpc.ForecastServiceStub

ROUTING = """
[models.moving_average]
split = { "1" = 70, "2" = 30 }

[models.lstm_timeseries]
split = { "1" = 50, "2" = 50 }
shadow = { version = "1", percent = 100 }
fallback = { model = "moving_average", version = "1" }
"""
FLAT = [float(v) for v in range(60)]


def decision_name(value: int) -> str:
    return forecast_pb2.RoutingDecision.Name(value)  # type: ignore[arg-type]  # any wire int


def open_stub(gateway: GatewayProcess) -> tuple[grpc.Channel, Stub]:
    channel = grpc.insecure_channel(gateway.target)
    return channel, forecast_service_pb2_grpc.ForecastServiceStub(channel)


@pytest.fixture(scope="module")
def routing_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("routing") / "routing.toml"
    path.write_text(ROUTING)
    return path


@pytest.fixture(scope="module")
def ab_gateway(
    triton: TritonProcess, routing_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    log_path = tmp_path_factory.mktemp("ab") / "gateway.log"
    process = start_gateway(triton.grpc_url, log_path, FORECAST_ROUTING_FILE=str(routing_file))
    yield process
    stop_process(process.process)


@pytest.fixture(scope="module")
def ab_stub(ab_gateway: GatewayProcess) -> Iterator[Stub]:
    channel, stub = open_stub(ab_gateway)
    yield stub
    channel.close()


async def many_forecasts(
    target: str, requests: list[pb.ForecastRequest], concurrency: int = 32
) -> list[pb.ForecastResponse]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        limit = asyncio.Semaphore(concurrency)

        async def one(request: pb.ForecastRequest) -> pb.ForecastResponse:
            async with limit:
                response: pb.ForecastResponse = await stub.Forecast(request, timeout=30)
                return response

        return list(await asyncio.gather(*(one(r) for r in requests)))


def test_weighted_split_matches_the_weights(ab_gateway: GatewayProcess) -> None:
    requests = [pb.ForecastRequest(model="moving_average", history=FLAT)] * 3000
    replies = asyncio.run(many_forecasts(ab_gateway.target, requests))
    counts = collections.Counter(r.version for r in replies)
    assert {decision_name(r.routing_decision) for r in replies} == {"ROUTING_DECISION_WEIGHTED"}
    result = chisquare([counts["1"], counts["2"]], [0.7 * 3000, 0.3 * 3000])
    assert result.pvalue > 0.001, (counts, result)


def test_routing_key_is_sticky_and_spread_by_the_weights(ab_stub: Stub) -> None:
    keys = [f"customer-{i}" for i in range(1000)]
    request = pb.ForecastBatchRequest(
        model="moving_average", horizon=1, series=[pb.Series(id=k, history=FLAT) for k in keys]
    )
    rounds = [ab_stub.ForecastBatch(request, timeout=30) for _ in range(3)]
    assignments = [{r.id: r.forecast.version for r in reply.results} for reply in rounds]
    assert assignments[0] == assignments[1] == assignments[2]
    decisions = {decision_name(r.forecast.routing_decision) for r in rounds[0].results}
    assert decisions == {"ROUTING_DECISION_STICKY"}
    counts = collections.Counter(assignments[0].values())
    assert chisquare([counts["1"], counts["2"]], [700, 300]).pvalue > 0.001, counts
    # A unary call with the same key lands on the same version as in the batch.
    for key in keys[:50]:
        reply = ab_stub.Forecast(
            pb.ForecastRequest(model="moving_average", routing_key=key, history=FLAT), timeout=10
        )
        assert reply.version == assignments[0][key]


def test_pinned_version_wins_over_the_split(ab_stub: Stub) -> None:
    for _ in range(50):
        reply = ab_stub.Forecast(
            pb.ForecastRequest(model="moving_average", version="2", history=FLAT), timeout=10
        )
        assert reply.version == "2"
        assert reply.routing_decision == forecast_pb2.ROUTING_DECISION_PINNED


def test_compare_versions_runs_both_lstm_versions(ab_stub: Stub) -> None:
    history = load_co2()[-100:].tolist()
    reply = ab_stub.CompareVersions(
        pb.CompareVersionsRequest(model="lstm_timeseries", history=history, horizon=8), timeout=20
    )
    by_version = {f.version: f for f in reply.forecasts}
    assert set(by_version) == {"1", "2"}
    assert (by_version["1"].sequence_length, by_version["2"].sequence_length) == (10, 52)
    for version, forecast in by_version.items():
        assert not forecast.HasField("error") and forecast.latency_ms > 0
        pinned = ab_stub.Forecast(
            pb.ForecastRequest(
                model="lstm_timeseries", version=version, history=history, horizon=8
            ),
            timeout=10,
        )
        assert np.allclose(forecast.values, pinned.values, rtol=1e-5, atol=1e-4)
    (difference,) = reply.differences
    gap = np.abs(np.asarray(by_version["1"].values) - np.asarray(by_version["2"].values))
    assert difference.mean_absolute_difference == pytest.approx(gap.mean())
    assert difference.max_absolute_difference == pytest.approx(gap.max())


def shadows_done(gateway: GatewayProcess) -> float:
    """lstm_timeseries shadow forecasts by version 1 that have ended, in any outcome."""
    return metric_total(
        gateway, "forecast_gateway_shadow_requests_total", model="lstm_timeseries", version="1"
    )


def test_shadow_is_scored_but_never_changes_the_answer(
    ab_stub: Stub, ab_gateway: GatewayProcess
) -> None:
    series = load_co2()
    _, test = train_test_split(series)
    start = len(series) - len(test)
    scored_shadow = 0
    # Version 1 shadows every lstm forecast served by version 2, pinned or not.
    shadowed = shadows_done(ab_gateway)
    for origin in range(start, start + 400, 5):
        history, actual = series[:origin], series[origin : origin + 6]
        reply = ab_stub.Forecast(
            pb.ForecastRequest(model="lstm_timeseries", history=history.tolist(), horizon=6),
            timeout=10,
        )
        pinned = ab_stub.Forecast(
            pb.ForecastRequest(
                model="lstm_timeseries", version=reply.version, history=history.tolist(), horizon=6
            ),
            timeout=10,
        )
        assert np.allclose(reply.values, pinned.values, rtol=1e-5, atol=1e-4)
        # The shadows run off the response path: wait until they have ended.
        shadowed += 2 * (reply.version == "2")
        eventually_sync(
            lambda: shadows_done(ab_gateway) >= shadowed,  # noqa: B023 (called at once)
            message=f"{shadowed:g} shadow forecasts ended",
        )
        report = ab_stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=actual.tolist()),
            timeout=10,
        )
        roles = {forecast_pb2.ScoreRole.Name(s.role): s for s in report.scores}
        assert roles["SCORE_ROLE_SERVED"].version == reply.version
        assert roles["SCORE_ROLE_SERVED"].steps_scored == 6
        assert roles["SCORE_ROLE_SERVED"].mae == pytest.approx(
            np.abs(np.asarray(reply.values) - actual).mean()
        )
        if reply.version == "2":
            scored_shadow += "SCORE_ROLE_SHADOW" in roles
    assert scored_shadow >= 20
    experiment = ab_stub.GetExperiment(pb.GetExperimentRequest(model="lstm_timeseries"), timeout=10)
    versions = {v.version: v for v in experiment.versions}
    assert versions["2"].requests_served > 0 and versions["1"].requests_shadowed > 0
    assert versions["2"].errors.count > 0 and versions["2"].latency.p50_ms > 0
    (comparison,) = experiment.comparisons
    assert comparison.test == "paired t-test" and comparison.metric == "mase"
    assert comparison.samples >= 20
    assert comparison.ci_low <= comparison.mean_difference <= comparison.ci_high
    # On held-out co2, the one-year window (v2) is clearly more accurate.
    a_is_v1 = comparison.version_a == "1"
    assert comparison.significant and (comparison.mean_difference > 0) == a_is_v1


def test_report_actuals_bad_input(ab_stub: Stub) -> None:
    reply = ab_stub.Forecast(
        pb.ForecastRequest(model="moving_average", history=FLAT, horizon=4), timeout=10
    )
    cases = [
        (
            pb.ReportActualsRequest(forecast_id="no-such-id", actuals=[1.0]),
            grpc.StatusCode.NOT_FOUND,
        ),
        (
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[1.0] * 5),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[float("nan")]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[1.0], offset=4),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[]),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.RpcError) as raised:
            ab_stub.ReportActuals(request, timeout=10)
        assert raised.value.code() is code, (request, raised.value.details())
    # A partial report, then the rest: scored over all four steps.
    first = ab_stub.ReportActuals(
        pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[50.0, 51.0]), timeout=10
    )
    assert first.steps_received == 2
    second = ab_stub.ReportActuals(
        pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[52.0, 53.0], offset=2),
        timeout=10,
    )
    assert second.steps_received == 4 and second.scores[0].steps_scored == 4


def metric_total(gateway: GatewayProcess, name: str, **labels: str) -> float:
    text = (
        urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5)
        .read()
        .decode()
    )
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_failing_shadow_never_fails_the_request(
    triton: TritonProcess, routing_file: Path, tmp_path: Path
) -> None:
    gateway = start_gateway(
        triton.grpc_url,
        tmp_path / "gateway.log",
        FORECAST_ROUTING_FILE=str(routing_file),
        FORECAST_SHADOW_TIMEOUT_S="0.000001",  # every shadow call misses its deadline
    )
    channel, stub = open_stub(gateway)
    try:
        history = load_co2()[-60:].tolist()
        served_by_2 = 0
        for _ in range(40):
            reply = stub.Forecast(
                pb.ForecastRequest(model="lstm_timeseries", history=history), timeout=10
            )
            assert len(reply.values) == reply.horizon
            served_by_2 += reply.version == "2"

        def failed_shadows() -> float:
            return metric_total(gateway, "forecast_gateway_shadow_requests_total", outcome="failed")

        # The shadows fail after the answers are sent.
        eventually_sync(lambda: failed_shadows() >= served_by_2, message="the shadows failed")
        failed = failed_shadows()
        assert served_by_2 > 0 and failed >= served_by_2
    finally:
        channel.close()
        stop_process(gateway.process)


CALLS_BETWEEN = 20
"""Calls the load makes between two steps of the reload test (before, after each reload)."""


def test_hot_reload_switches_versions_without_dropping_requests(
    triton: TritonProcess, tmp_path: Path
) -> None:
    routing = tmp_path / "routing.toml"
    routing.write_text('[models.moving_average]\nsplit = { "1" = 100, "2" = 0 }\n')
    gateway = start_gateway(
        triton.grpc_url, tmp_path / "gateway.log", FORECAST_ROUTING_FILE=str(routing)
    )
    channel, stub = open_stub(gateway)
    versions: list[str] = []
    errors: list[grpc.RpcError] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            try:
                versions.append(
                    stub.Forecast(
                        pb.ForecastRequest(model="moving_average", history=FLAT), timeout=10
                    ).version
                )
            except grpc.RpcError as error:
                errors.append(error)

    worker = threading.Thread(target=load)
    worker.start()
    try:
        eventually_sync(lambda: len(versions) >= CALLS_BETWEEN, message="calls on version 1")
        routing.write_text('[models.moving_average]\nsplit = { "1" = 0, "2" = 100 }\n')
        gateway.process.send_signal(signal.SIGHUP)
        eventually_sync(lambda: versions[-1] == "2", message="the reload switched to version 2")
        switched_at = len(versions)
        eventually_sync(
            lambda: len(versions) >= switched_at + CALLS_BETWEEN, message="calls after the switch"
        )
        # An invalid edit is rejected and the last good policy stays.
        routing.write_text('[models.moving_average]\nsplit = { "1" = 50, "2" = 40 }\n')
        gateway.process.send_signal(signal.SIGHUP)
        eventually_sync(
            lambda: "routing_reload_rejected" in gateway.log_text(), message="the edit rejected"
        )
        rejected_at = len(versions)
        eventually_sync(
            lambda: len(versions) >= rejected_at + CALLS_BETWEEN, message="calls after the edit"
        )
    finally:
        stop.set()
        worker.join()
        channel.close()
        stop_process(gateway.process)
    assert not errors, errors[:3]
    assert versions[0] == "1" and versions[switched_at - 1] == "2"
    assert set(versions[switched_at:]) == {"2"}
    log = gateway.log_text()
    assert "routing_reloaded" in log and "routing_reload_rejected" in log and "sum" in log


def test_restart_keeps_forecasts_waiting_for_actuals(triton: TritonProcess, tmp_path: Path) -> None:
    store = tmp_path / "store.sqlite3"
    env: dict[str, Any] = {"FORECAST_STORE_PATH": str(store), "FORECAST_ROUTING_FILE": ""}
    first = start_gateway(triton.grpc_url, tmp_path / "first.log", **env)
    channel, stub = open_stub(first)
    reply = stub.Forecast(
        pb.ForecastRequest(model="moving_average", history=FLAT, horizon=3), timeout=10
    )
    channel.close()
    assert stop_process(first.process) == 0
    second = start_gateway(triton.grpc_url, tmp_path / "second.log", **env)
    channel, stub = open_stub(second)
    try:
        report = stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=[1.0, 2.0, 3.0]),
            timeout=10,
        )
        assert report.steps_received == 3 and report.scores[0].version == reply.version
    finally:
        channel.close()
        stop_process(second.process)


@pytest.mark.parametrize(
    ("routing", "message"),
    [
        ('[models.moving_average]\nsplit = { "1" = 60, "2" = 30 }\n', "sum"),
        ('[models.moving_average]\nsplit = { "1" = 50, "7" = 50 }\n', "7"),
        ('[models.no_such_model]\nsplit = { "1" = 100 }\n', "no_such_model"),
    ],
)
def test_invalid_routing_file_stops_the_gateway_at_start(
    triton: TritonProcess, tmp_path: Path, routing: str, message: str
) -> None:
    path = tmp_path / "routing.toml"
    path.write_text(routing)
    result = subprocess.run(
        [sys.executable, "-m", "forecast_gateway"],
        cwd=ROOT,
        env={
            **os.environ,
            "FORECAST_ROUTING_FILE": str(path),
            "FORECAST_TRITON_URL": triton.grpc_url,
            "FORECAST_PORT": "0",
            "FORECAST_METRICS_PORT": "-1",
            "FORECAST_STORE_PATH": str(tmp_path / "store.sqlite3"),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "invalid routing file" in result.stderr and message in result.stderr


def test_short_histories_are_routed_to_the_versions_that_can_serve_them(ab_stub: Stub) -> None:
    """A 12-point history: v2 (window 52) cannot serve it, so every unpinned call goes to v1."""
    history = [float(v) for v in load_co2()[-12:]]
    for i in range(40):
        reply = ab_stub.Forecast(
            pb.ForecastRequest(model="lstm_timeseries", history=history, routing_key=f"k{i}"),
            timeout=10,
        )
        assert (reply.version, reply.routing_restricted) == ("1", True)
    full = ab_stub.Forecast(
        pb.ForecastRequest(model="lstm_timeseries", history=FLAT, routing_key="k0"), timeout=10
    )
    assert not full.routing_restricted
    with pytest.raises(grpc.RpcError) as caught:  # too short for every version
        ab_stub.Forecast(
            pb.ForecastRequest(model="lstm_timeseries", history=history[:5]), timeout=10
        )
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "needs at least 10" in (caught.value.details() or "")
