"""StartForecastBatch (bulk forecasts as an operation) and operation errors, in process.

The operation answers what ForecastBatch answers, series by series, in
chunks of max_batch_series with progress after each; its forecasts are
recorded (their ids take ReportActuals); a batch wrong as a whole is refused
before an operation exists; a series with an unknown FillMethod fails alone
(also in ForecastBatch); and an operation whose job failed carries the
error's google.rpc details, as a failed call does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
from google.longrunning import operations_pb2
from google.rpc import error_details_pb2

from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.errors import Unavailable
from tests.edge import MA, failure, serving, until_answers
from tests.unit.test_edge_backtest import request as backtest_request
from tests.unit.test_edge_operations import operations, wait

HISTORY = [float(10 + (i % 7)) for i in range(40)]


def batch(count: int, **fields: object) -> pb.ForecastBatchRequest:
    series = [pb.Series(id=f"s{i}", history=[v + i for v in HISTORY]) for i in range(count)]
    settings: dict[str, object] = {"model": MA, "horizon": 4, "series": series, **fields}
    return pb.ForecastBatchRequest(**settings)  # type: ignore[arg-type]


def unpacked(
    operation: operations_pb2.Operation,
) -> tuple[pb.ForecastBatchMetadata, pb.ForecastBatchResponse]:
    metadata, response = pb.ForecastBatchMetadata(), pb.ForecastBatchResponse()
    assert operation.metadata.Unpack(metadata)
    assert operation.response.Unpack(response)
    return metadata, response


async def test_the_operation_answers_what_forecast_batch_answers(tmp_path: Path) -> None:
    async with serving(tmp_path, max_batch_series=3) as edge:
        started = await edge.stub.StartForecastBatch(batch(7))
        finished = await wait(edge, started.name)
        direct = await edge.stub.ForecastBatch(batch(3))  # at most max_batch_series at once
        metadata, response = unpacked(finished)
        first = response.results[0].forecast
        report = await edge.stub.ReportActuals(
            pb.ReportActualsRequest(forecast_id=first.forecast_id, actuals=[1.0, 2.0])
        )
    assert [r.id for r in response.results] == [f"s{i}" for i in range(7)]
    assert [list(r.forecast.values) for r in response.results[:3]] == [
        list(r.forecast.values) for r in direct.results
    ]
    assert [r.forecast.version for r in response.results] == ["1"] * 7
    assert (metadata.series_total, metadata.series_done, metadata.attempt) == (7, 7, 1)
    assert report.steps_received == 2  # recorded as live forecasts are
    rows = [c.rows for c in edge.backend.calls]
    assert rows == [3, 3, 1, 3]  # chunks of max_batch_series, then the direct call
    assert len({r.forecast.forecast_id for r in response.results}) == 7


async def test_progress_is_reported_chunk_by_chunk(tmp_path: Path) -> None:
    async with serving(tmp_path, max_batch_series=2) as edge:
        edge.gateway.operations.lease_s = 0.3  # progress written at each renewal (0.1 s)
        gate = edge.backend.gate = asyncio.Event()
        started = await edge.stub.StartForecastBatch(batch(4))

        async def chunk_held() -> bool:
            return len(edge.backend.calls) == 1

        await until_answers(chunk_held, "the first chunk at the backend")
        gate.set()
        finished = await wait(edge, started.name)
    first = pb.ForecastBatchMetadata()
    assert started.metadata.Unpack(first)
    assert (first.series_total, first.series_done) == (4, 0)
    metadata, _ = unpacked(finished)
    assert metadata.series_done == 4
    assert [c.rows for c in edge.backend.calls] == [2, 2]


async def test_a_batch_wrong_as_a_whole_is_refused_before_an_operation_exists(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, max_operation_series=5) as edge:
        too_many = await failure(edge.stub.StartForecastBatch(batch(6)))
        empty = await failure(edge.stub.StartForecastBatch(batch(0)))
        unknown = await failure(edge.stub.StartForecastBatch(batch(2, model="nope")))
        listed = await operations(edge).ListOperations(operations_pb2.ListOperationsRequest())
    assert too_many.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "maximum is 5" in (too_many.details() or "")
    assert empty.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert list(listed.operations) == []


async def test_an_unknown_fill_method_fails_its_series_alone(tmp_path: Path) -> None:
    request = batch(3)
    request.series[1].fill = 99  # type: ignore[assignment]
    async with serving(tmp_path) as edge:
        direct = await edge.stub.ForecastBatch(request)
        started = await edge.stub.StartForecastBatch(request)
        _, response = unpacked(await wait(edge, started.name))
    for answer in (direct, response):
        outcomes = [r.WhichOneof("outcome") for r in answer.results]
        assert outcomes == ["forecast", "error", "forecast"]
        error = answer.results[1].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in error.field_violations] == ["series[1].fill"]


async def test_a_failed_operation_carries_the_errors_details(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.errors[(MA, "1")] = Unavailable(
            "Triton is unreachable; retry later",
            reason="TRITON_UNAVAILABLE",
            metadata={"model": MA},
        )
        started = await edge.stub.StartBacktest(backtest_request())
        failed = await wait(edge, started.name)
    assert failed.error.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert "unreachable" in failed.error.message
    (packed,) = failed.error.details
    info = error_details_pb2.ErrorInfo()
    assert packed.Unpack(info)
    assert info.reason == "TRITON_UNAVAILABLE" and info.domain == "forecast.v1"
    assert info.metadata["model"] == MA
