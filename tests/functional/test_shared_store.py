"""Two gateway replicas on one Triton and one PostgreSQL store are interchangeable.

Forecasts served by one replica are reported to the other (at once, while
the first may still hold them in its write-behind queue), and both replicas
give the same GetExperiment, whose counts add up over both.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from tests.conftest import GatewayProcess, start_gateway, stop_process
from tests.polling import eventually_sync
from tools.embedded_triton import TritonProcess
from tools.local_postgres import LocalPostgres
from training.data import load_co2

ROUTING = """
[models.lstm_timeseries]
split = { "1" = 50, "2" = 50 }
shadow = { version = "1", percent = 100 }
experiment = "shared-first"
"""
HORIZON = 4
FORECASTS_PER_REPLICA = 40


@pytest.fixture(scope="module")
def routing_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("shared-routing") / "routing.toml"
    path.write_text(ROUTING)
    return path


@pytest.fixture(scope="module")
def replicas(
    triton: TritonProcess,
    postgres: LocalPostgres,
    routing_file: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    folder = tmp_path_factory.mktemp("shared-store")
    routing = routing_file
    store: dict[str, Any] = {  # FORECAST_* variables only
        "FORECAST_STORE_URL": postgres.create_database("shared_store"),
        "FORECAST_STORE_PASSWORD_FILE": str(postgres.password_file),
        "FORECAST_ROUTING_FILE": str(routing),
    }
    first = start_gateway(triton.grpc_url, folder / "a.log", **store)
    try:
        second = start_gateway(triton.grpc_url, folder / "b.log", **store)
    except BaseException:
        stop_process(first.process)
        raise
    yield first, second
    codes = [stop_process(first.process), stop_process(second.process)]
    assert codes == [0, 0]
    for gateway in (first, second):
        assert "postgresql://forecast@127.0.0.1" in gateway.log_text()
        assert postgres.password not in gateway.log_text()


async def forecasts(
    target: str, origins: list[int]
) -> list[tuple[pb.ForecastResponse, list[float]]]:
    series = load_co2()
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)

        async def one(origin: int) -> tuple[pb.ForecastResponse, list[float]]:
            request = pb.ForecastRequest(
                model="lstm_timeseries", history=series[:origin].tolist(), horizon=HORIZON
            )
            reply: pb.ForecastResponse = await stub.Forecast(request, timeout=30)
            return reply, series[origin : origin + HORIZON].tolist()

        return list(await asyncio.gather(*(one(origin) for origin in origins)))


async def report(target: str, served: list[tuple[pb.ForecastResponse, list[float]]]) -> list[int]:
    async with grpc.aio.insecure_channel(target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        replies = await asyncio.gather(
            *(
                stub.ReportActuals(
                    pb.ReportActualsRequest(forecast_id=reply.forecast_id, actuals=actuals),
                    timeout=30,
                )
                for reply, actuals in served
            )
        )
        return [len(r.scores) for r in replies]


def experiment(gateway: GatewayProcess, name: str = "") -> pb.GetExperimentResponse:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        reply: pb.GetExperimentResponse = stub.GetExperiment(
            pb.GetExperimentRequest(model="lstm_timeseries", experiment=name), timeout=10
        )
        return reply


def experiments(gateway: GatewayProcess) -> list[tuple[str, int, bool]]:
    with grpc.insecure_channel(gateway.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        reply = stub.ListExperiments(pb.ListExperimentsRequest(model="lstm_timeseries"), timeout=10)
        return [(e.experiment, e.forecasts, e.current) for e in reply.experiments]


def test_any_replica_scores_any_forecast_and_both_report_the_same(
    replicas: tuple[GatewayProcess, GatewayProcess],
) -> None:
    first, second = replicas
    start = len(load_co2()) - 400
    on_first = asyncio.run(forecasts(first.target, list(range(start, start + 200, 5))))
    on_second = asyncio.run(forecasts(second.target, list(range(start + 2, start + 202, 5))))
    # Actuals go to the other replica at once: no NOT_FOUND although the serving
    # replica writes its forecasts behind.
    scores = asyncio.run(report(second.target, on_first)) + asyncio.run(
        report(first.target, on_second)
    )
    assert len(scores) == 2 * FORECASTS_PER_REPLICA
    assert all(count >= 1 for count in scores)

    served = [reply.version for reply, _ in on_first + on_second]

    def all_shadows_recorded() -> pb.GetExperimentResponse | None:
        seen = experiment(first)
        shadowed = {v.version: v.requests_shadowed for v in seen.versions}
        return seen if shadowed.get("1", 0) >= served.count("2") else None

    # Shadows run after the answer is sent: wait until every one is recorded.
    seen_by_first = eventually_sync(
        all_shadows_recorded,
        timeout_s=15,
        interval_s=0.2,
        message=f"version 1 shadowed the {served.count('2')} requests version 2 served",
    )
    assert seen_by_first is not None
    seen_by_second = experiment(second)
    assert seen_by_first == seen_by_second
    versions = {v.version: v for v in seen_by_first.versions}
    assert sum(v.requests_served for v in versions.values()) == len(served)
    for version in ("1", "2"):
        assert versions[version].requests_served == served.count(version)
    # Version 1 shadows every request served by version 2 (after the answer is sent).
    assert versions["1"].requests_shadowed == served.count("2")
    assert versions["2"].actuals_received == served.count("2")
    [comparison] = seen_by_first.comparisons
    assert comparison.test == "paired t-test"
    assert comparison.samples == versions["1"].actuals_received - served.count("1")
    assert seen_by_first.experiment == "shared-first"
    assert seen_by_first.forecasts == len(served)
    assert comparison.verdict.startswith(("version ", "not conclusive yet"))
    assert comparison.sequential_test == "paired asymptotic confidence sequence"


def test_renaming_the_experiment_starts_a_fresh_one_and_keeps_the_old(
    replicas: tuple[GatewayProcess, GatewayProcess], routing_file: Path
) -> None:
    first, second = replicas
    before = experiment(first)
    assert before.experiment == "shared-first" and before.forecasts > 0
    routing_file.write_text(ROUTING.replace("shared-first", "shared-second"))

    def renamed(replica: GatewayProcess) -> bool:
        return experiment(replica).experiment == "shared-second"

    for replica in (second, first):  # both reload within ~1 s
        eventually_sync(
            partial(renamed, replica),
            timeout_s=15,
            interval_s=0.2,
            message="the routing file was not reloaded",
        )
    start = len(load_co2()) - 100
    asyncio.run(forecasts(first.target, list(range(start, start + 30, 10))))
    fresh = experiment(first)  # its own queue is written first; the other replica's a moment later
    assert fresh.forecasts == 3
    assert sum(v.requests_served for v in fresh.versions) == 3
    old = experiment(second, "shared-first")
    assert old.forecasts == before.forecasts and old.versions == before.versions
    assert experiments(first) == [
        ("shared-second", 3, True),
        ("shared-first", old.forecasts, False),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        experiment(first, "no-such-experiment")
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
