"""Series with time through the client and the `forecast` command (a canned gateway).

A daily in-process ForecastService on port 0 answers with timestamps one day
apart after the last history point and counts the missing points it would
fill, so the requests the client builds (start, frequency, timestamps, fill),
the forecasts it returns, the CSV reader and the table, JSON and plot of the
command are checked without Triton. tests/functional/test_cli_time.py runs
the real gateway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pandas as pd
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from forecast.v1 import forecast_pb2, forecast_service_pb2, forecast_service_pb2_grpc
from forecast_client import ForecastClient, SeriesInput
from forecast_client.cli import main
from forecast_client.series_input import InputError, parse_csv, read_csv

DAY = 86_400
JAN_1 = 1_704_067_200  # 2024-01-01T00:00:00Z
HORIZON = 3


def day(n: int) -> datetime:
    """2024-01-01 + n days, UTC."""
    return datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=n)


def filled(request: Any) -> int:
    """NaN in the history plus the days missing from its timestamps."""
    missing = sum(math.isnan(v) for v in request.history)
    if request.timestamps:
        first, last = request.timestamps[0].seconds, request.timestamps[-1].seconds
        missing += (last - first) // DAY + 1 - len(request.timestamps)
    return missing


def time_fields(request: Any) -> dict[str, Any]:
    """What the real gateway answers for a daily series: the next days, the fill count."""
    if request.timestamps:
        last = request.timestamps[-1].seconds
    elif request.HasField("start"):
        last = request.start.seconds + (len(request.history) - 1) * DAY
    else:
        return {}
    steps = [Timestamp(seconds=last + (k + 1) * DAY) for k in range(HORIZON)]
    return {
        "timestamps": steps,
        "frequency": request.frequency or "D",
        "filled_points": filled(request),
    }


class DailyGateway(forecast_service_pb2_grpc.ForecastServiceServicer):
    """Forecasts 1, 2, 3 for every series; records the requests."""

    def __init__(self) -> None:
        self.requests: list[Any] = []

    def Forecast(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return forecast_service_pb2.ForecastResponse(
            forecast_id="f-1", model=request.model, version="2", values=[1.0, 2.0, 3.0],
            routing_decision=forecast_pb2.ROUTING_DECISION_DEFAULT, horizon=HORIZON,
            sequence_length=10, **time_fields(request),
        )  # fmt: skip

    def ForecastBatch(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return forecast_service_pb2.ForecastBatchResponse(
            results=[
                forecast_service_pb2.SeriesResult(
                    id=s.id,
                    forecast=forecast_pb2.Forecast(
                        model=request.model,
                        values=[1.0, 2.0, 3.0],
                        horizon=HORIZON,
                        **time_fields(s),
                    ),
                )
                for s in request.series
            ]
        )

    def CompareVersions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return forecast_service_pb2.CompareVersionsResponse(
            model=request.model,
            forecasts=[
                forecast_service_pb2.VersionForecast(
                    version=v,
                    values=[1.0 + i, 2.0 + i, 3.0 + i],
                    latency_ms=1.0,
                    sequence_length=10,
                    **time_fields(request),
                )
                for i, v in enumerate(("1", "2"))
            ],
        )

    def ReportActuals(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.requests.append(request)
        return forecast_service_pb2.ReportActualsResponse(
            forecast_id=request.forecast_id, model="m", horizon=HORIZON, steps_received=1
        )


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[DailyGateway, str]]:
    servicer = DailyGateway()  # type: ignore[abstract]  # plays only the RPCs its tests call
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    forecast_service_pb2_grpc.add_ForecastServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(None)


def last_request(gateway: tuple[DailyGateway, str]) -> Any:
    return gateway[0].requests[-1]


# --- the client ---------------------------------------------------------------------


def test_without_time_the_request_and_forecast_are_as_before(
    gateway: tuple[DailyGateway, str],
) -> None:
    with ForecastClient(gateway[1]) as client:
        forecast = client.forecast("m", [1.0, 2.0])
    request = last_request(gateway)
    assert not request.HasField("start") and not request.timestamps
    assert request.frequency == "" and request.fill == forecast_pb2.FILL_METHOD_UNSPECIFIED
    assert (forecast.timestamps, forecast.frequency, forecast.filled_points) == ((), "", 0)


def test_start_and_frequency_give_dated_forecasts(gateway: tuple[DailyGateway, str]) -> None:
    with ForecastClient(gateway[1]) as client:
        forecast = client.forecast(
            "m", [1.0, None, 3.0], start=datetime(2024, 1, 1), frequency="D", fill="linear"
        )
    request = last_request(gateway)
    assert request.start == Timestamp(seconds=JAN_1)
    assert request.frequency == "D" and request.fill == forecast_pb2.FILL_METHOD_LINEAR
    assert math.isnan(request.history[1])  # None is sent as a missing value
    assert forecast.timestamps == (day(3), day(4), day(5))
    assert all(t.tzinfo is UTC for t in forecast.timestamps)
    assert (forecast.frequency, forecast.filled_points) == ("D", 1)


def test_a_pandas_series_sends_its_index(gateway: tuple[DailyGateway, str]) -> None:
    index = pd.DatetimeIndex(["2024-01-01", "2024-01-02", "2024-01-04"])
    with ForecastClient(gateway[1]) as client:
        forecast = client.forecast("m", pd.Series([1.0, 2.0, 4.0], index=index), fill="zero")
    request = last_request(gateway)
    assert [t.seconds for t in request.timestamps] == [JAN_1, JAN_1 + DAY, JAN_1 + 3 * DAY]
    assert request.frequency == ""  # a gappy index has none: the gateway infers it
    assert forecast.timestamps[0] == day(4) and forecast.filled_points == 1


def test_batch_series_take_the_batch_time_unless_they_carry_their_own(
    gateway: tuple[DailyGateway, str],
) -> None:
    own = pd.Series([5.0, 6.0], index=pd.date_range("2024-02-01", periods=2, freq="D"))
    with ForecastClient(gateway[1]) as client:
        outcomes = client.forecast_batch(
            "m",
            {
                "plain": [1.0, 2.0],
                "indexed": own,
                "explicit": SeriesInput([1.0], start="2024-03-01", routing_key="k"),
            },
            start="2024-01-01",
            frequency="D",
            fill="previous",
        )
    plain, indexed, explicit = last_request(gateway).series
    assert plain.start.seconds == JAN_1 and plain.fill == forecast_pb2.FILL_METHOD_PREVIOUS
    assert not indexed.HasField("start") and len(indexed.timestamps) == 2  # its index wins
    assert indexed.frequency == "D"
    assert explicit.start.seconds == JAN_1 + 60 * DAY and explicit.routing_key == "k"
    assert explicit.frequency == "D"  # the batch's
    assert [o.forecast.timestamps[0] for o in outcomes if o.forecast] == [
        day(2),
        datetime(2024, 2, 3, tzinfo=UTC),
        datetime(2024, 3, 2, tzinfo=UTC),
    ]


def test_compare_and_report_by_start(gateway: tuple[DailyGateway, str]) -> None:
    with ForecastClient(gateway[1]) as client:
        comparison = client.compare_versions(
            "m", [1.0, 2.0], timestamps=["2024-01-01", "2024-01-02"], frequency="D"
        )
        client.report_actuals("f-1", [1.5], start=comparison.forecasts[0].timestamps[0])
    assert [f.timestamps[0] for f in comparison.forecasts] == [day(2), day(2)]
    assert comparison.forecasts[1].frequency == "D"
    report = last_request(gateway)
    assert report.start == Timestamp(seconds=JAN_1 + 2 * DAY) and report.offset == 0


def test_a_time_the_client_cannot_read_fails_before_sending(
    gateway: tuple[DailyGateway, str],
) -> None:
    with ForecastClient(gateway[1]) as client:
        sent = len(gateway[0].requests)
        with pytest.raises(TypeError, match="start: expected a datetime"):
            client.forecast("m", [1.0], start=1_704_067_200, frequency="D")
        with pytest.raises(ValueError, match="fill: 'spline'"):
            client.forecast("m", [1.0], fill="spline")
    assert len(gateway[0].requests) == sent


# --- the CSV reader -----------------------------------------------------------------

SALES = "day,units,note\n2024-01-01,10,\n2024-01-02,,closed\n2024-01-04,12,\n2024-01-05,NA,\n"


def test_empty_cells_are_missing_values() -> None:
    # A blank line is skipped (a one-column file marks a missing value NA or nan).
    assert parse_csv("units\n1\n\n2\nNA\n") == pytest.approx([1.0, 2.0, math.nan], nan_ok=True)
    assert parse_csv("a,b\n1,\n2,5\n", "b") == pytest.approx([math.nan, 5.0], nan_ok=True)
    assert parse_csv("a,b\n1,\n2,5\n") == pytest.approx([math.nan, 5.0], nan_ok=True)
    assert parse_csv("y\n1\nN/A\nnull\n") == pytest.approx([1.0, math.nan, math.nan], nan_ok=True)


def test_a_headerless_first_row_with_an_empty_cell_is_data() -> None:
    assert parse_csv("1,\n2,3\n") == pytest.approx([math.nan, 3.0], nan_ok=True)


def test_a_column_with_no_number_is_not_picked() -> None:
    assert parse_csv("a,b\n1,\n2,\n") == [1.0, 2.0]


def test_the_date_column_gives_utc_times() -> None:
    series = read_csv(SALES, "units", "day")
    assert series.values == pytest.approx([10.0, math.nan, 12.0, math.nan], nan_ok=True)
    assert series.times == [day(0), day(1), day(3), day(4)]
    # Without --column the value column is found as before, never the date column.
    assert read_csv("day,units\n20240101,1\n20240102,2\n", None, "day").values == [1.0, 2.0]
    assert read_csv("t,y\n2024-01-01T01:00+01:00,1\n", "y", "t").times == [day(0)]


@pytest.mark.parametrize(
    ("text", "field", "fragment"),
    [
        ("day,units\n2024-01-01,1\n,2\n", "--date-column", "line 3: the date is empty"),
        ("day,units\n01/02/2024,1\n", "--date-column", "line 2: '01/02/2024' is not an ISO"),
        ("date,units\n2024-01-01,1\n", "--date-column", "'day' is not in the header"),
        ("1,2\n3,4\n", "--date-column", "no header row"),
        ("day,units\n2024-01-01,oops\n", "--csv", "line 2, units: 'oops' is not a number"),
    ],
)
def test_date_column_errors(text: str, field: str, fragment: str) -> None:
    with pytest.raises(InputError) as raised:
        read_csv(text, "units" if "units" in text else None, "day")
    assert raised.value.field == field
    assert fragment in raised.value.description


# --- the command --------------------------------------------------------------------


@pytest.fixture
def sales(tmp_path: Path) -> Path:
    path = tmp_path / "sales.csv"
    path.write_text(SALES)
    return path


def test_predict_sends_the_dates_and_shows_the_forecast_times(
    gateway: tuple[DailyGateway, str], sales: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--target", gateway[1], "--model", "m", "--csv", str(sales)]
    code = main([*args, "--date-column", "day", "--column", "units", "--fill", "linear"])
    out = capsys.readouterr().out
    assert code == 0
    request = last_request(gateway)
    assert [t.seconds for t in request.timestamps] == [JAN_1 + d * DAY for d in (0, 1, 3, 4)]
    assert math.isnan(request.history[1]) and math.isnan(request.history[3])
    assert request.fill == forecast_pb2.FILL_METHOD_LINEAR and request.frequency == ""
    assert "frequency D, 3 points filled\n" in out
    assert out.endswith(
        "STEP  TIME        VALUE\n1     2024-01-06  1\n2     2024-01-07  2\n3     2024-01-08  3\n"
    )


def test_predict_json_has_the_timestamps(
    gateway: tuple[DailyGateway, str], sales: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--json", "predict", "--target", gateway[1], "--model", "m", "--csv", str(sales)]
    assert main([*args, "--date-column", "day", "--frequency", "D"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["timestamps"] == [
        "2024-01-06T00:00:00Z",
        "2024-01-07T00:00:00Z",
        "2024-01-08T00:00:00Z",
    ]
    assert (body["frequency"], body["filledPoints"]) == ("D", 3)
    assert last_request(gateway).frequency == "D"


def test_predict_without_time_prints_as_before(
    gateway: tuple[DailyGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--target", gateway[1], "--model", "m", "--history", "1,2"]
    assert main(["--json", *args]) == 0
    body = json.loads(capsys.readouterr().out)
    assert not {"timestamps", "frequency", "filledPoints"} & set(body)
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "TIME" not in out and "filled" not in out and "STEP  VALUE\n" in out


def test_predict_with_start_and_hourly_times(
    gateway: tuple[DailyGateway, str], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--target", gateway[1], "--model", "m", "--history", "1,2"]
    assert main([*args, "--start", "2024-01-01T06:00", "--frequency", "h"]) == 0
    request = last_request(gateway)
    assert request.start.seconds == JAN_1 + 6 * 3600 and request.frequency == "h"
    assert "2024-01-03T06:00:00Z" in capsys.readouterr().out  # not midnight: full times


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--history", "1,2", "--date-column", "day"], "--date-column"),
        (["--history", "1,2", "--start", "soon"], "--start"),
    ],
)
def test_time_options_that_cannot_be_used(
    gateway: tuple[DailyGateway, str],
    extra: list[str],
    field: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main(["--json", "predict", "--target", gateway[1], "--model", "m", *extra])
    assert code == 2
    error = json.loads(capsys.readouterr().err)["error"]
    assert error["fieldViolations"][0]["field"] == field


def test_start_with_a_date_column_is_refused(
    gateway: tuple[DailyGateway, str], sales: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["predict", "--target", gateway[1], "--model", "m", "--csv", str(sales)]
    assert main([*args, "--date-column", "day", "--start", "2024-01-01"]) == 2
    assert "field --start: cannot be combined with --date-column" in capsys.readouterr().err


def test_compare_shows_times_and_report_takes_start(
    gateway: tuple[DailyGateway, str], sales: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["compare", "--target", gateway[1], "--model", "m", "--csv", str(sales)]
    assert main([*args, "--date-column", "day", "--fill", "zero"]) == 0
    out = capsys.readouterr().out
    assert "v1: frequency D, 3 points filled\n" in out
    assert "STEP  TIME        v1  v2\n1     2024-01-06  1   2\n" in out
    report = ["report", "--target", gateway[1], "--forecast-id", "f-1", "--actuals", "4"]
    assert main([*report, "--start", "2024-01-06"]) == 0
    assert last_request(gateway).start.seconds == JAN_1 + 5 * DAY


def test_plot_puts_dates_on_the_x_axis(
    gateway: tuple[DailyGateway, str], sales: Path, tmp_path: Path
) -> None:
    output = tmp_path / "plot.png"
    args = ["plot", "--target", gateway[1], "--model", "m", "--csv", str(sales)]
    assert main([*args, "--date-column", "day", "--fill", "linear", "--output", str(output)]) == 0
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
