"""ReportActuals by time through the gRPC edge: `start` names a step of a forecast with time."""

from __future__ import annotations

from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2

from forecast.v1 import forecast_service_pb2 as pb
from tests.edge import details, failure, forecast_request, serving


def stamp(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


DAY = 86_400
START = 1_767_225_600  # 2026-01-01T00:00:00Z: the history's first point


async def test_actuals_reported_at_a_step_time(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        timed = await edge.stub.Forecast(
            forecast_request(start=stamp(START), frequency="D", horizon=3)
        )
        untimed = await edge.stub.Forecast(forecast_request(horizon=3))
        second_step = timed.timestamps[1]
        by_time = await edge.stub.ReportActuals(
            pb.ReportActualsRequest(
                forecast_id=timed.forecast_id, actuals=[4.0, 6.0], start=second_step
            )
        )
        assert by_time.steps_received == 2
        served = list(timed.values)
        expected_mae = (abs(served[1] - 4.0) + abs(served[2] - 6.0)) / 2
        assert abs(by_time.scores[0].mae - expected_mae) < 1e-9

        off_grid = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(
                    forecast_id=timed.forecast_id,
                    actuals=[1.0],
                    start=stamp(second_step.seconds + 3600),
                )
            )
        )
        both = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(
                    forecast_id=timed.forecast_id, actuals=[1.0], offset=1, start=second_step
                )
            )
        )
        no_time = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(
                    forecast_id=untimed.forecast_id, actuals=[1.0], start=second_step
                )
            )
        )
    for error in (off_grid, both, no_time):
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(error).fields == ["start"], details(error)
    assert "not one of the forecast's step times" in details(off_grid).violations[0][1]
    assert "the forecast had no time" in details(no_time).violations[0][1]
