"""ForecastBatch and StreamForecast through the real gateway and Triton."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import pytest

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc

Stub = forecast_service_pb2_grpc.ForecastServiceStub
RNG = np.random.default_rng(7)


def history(length: int = 60, level: float = 100.0) -> list[float]:
    values: list[float] = (level + RNG.normal(size=length).cumsum()).tolist()
    return values


def test_batch_answers_every_series_like_the_unary_call(stub: Stub) -> None:
    series = [pb.Series(id=f"s{i}", history=history(level=10.0 * i)) for i in range(40)]
    reply = stub.ForecastBatch(
        pb.ForecastBatchRequest(model="lstm_timeseries", version="2", horizon=6, series=series),
        timeout=20,
    )
    assert [r.id for r in reply.results] == [s.id for s in series]
    for request_series, result in zip(series, reply.results, strict=True):
        assert result.WhichOneof("outcome") == "forecast"
        single = stub.Forecast(
            pb.ForecastRequest(
                model="lstm_timeseries", version="2", horizon=6, history=request_series.history
            ),
            timeout=10,
        )
        # Batched rows and a lone row may differ in the last float32 bits.
        assert np.allclose(result.forecast.values, single.values, rtol=1e-5, atol=1e-4)
        assert result.forecast.version == "2" and result.forecast.horizon == 6


def test_one_bad_series_does_not_fail_the_others(stub: Stub) -> None:
    series = [
        pb.Series(id="good-1", history=history()),
        pb.Series(id="nan", history=[*history(), float("nan")]),  # missing in the window
        pb.Series(id="short", history=history(5)),
        pb.Series(id="good-2", history=history()),
    ]
    reply = stub.ForecastBatch(
        pb.ForecastBatchRequest(model="moving_average", version="1", series=series), timeout=20
    )
    outcomes = {r.id: r for r in reply.results}
    assert outcomes["good-1"].WhichOneof("outcome") == "forecast"
    assert outcomes["good-2"].WhichOneof("outcome") == "forecast"
    for bad in ("nan", "short"):
        error = outcomes[bad].error
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert [v.field for v in error.field_violations] == ["history"]


def test_batch_larger_than_max_batch_size_is_chunked(stub: Stub) -> None:
    # 600 series > the models' max_batch_size of 256: sent as several tensors.
    series = [pb.Series(id=str(i), history=history(12)) for i in range(600)]
    reply = stub.ForecastBatch(
        pb.ForecastBatchRequest(model="moving_average", version="1", horizon=2, series=series),
        timeout=30,
    )
    values = np.array([r.forecast.values for r in reply.results])
    expected = np.array([np.mean(s.history[-10:]) for s in series])
    assert values.shape == (600, 2)
    assert np.allclose(values[:, 0], expected, atol=1e-3)


@pytest.mark.parametrize(
    ("series", "field"),
    [
        ([], "series"),
        ([pb.Series(id="a", history=[1.0] * 20), pb.Series(id="a", history=[2.0] * 20)], "series"),
        ([pb.Series(id="", history=[1.0] * 20)], "series[0].id"),
    ],
)
def test_invalid_batch_is_rejected_as_a_whole(
    stub: Stub, series: list[pb.Series], field: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ForecastBatch(
            pb.ForecastBatchRequest(model="moving_average", series=series), timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field in (raised.value.details() or "")


def test_batch_over_the_series_limit_is_rejected(stub: Stub) -> None:
    series = [pb.Series(id=str(i), history=[1.0] * 10) for i in range(4097)]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ForecastBatch(
            pb.ForecastBatchRequest(model="moving_average", series=series), timeout=10
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "4097 series" in (raised.value.details() or "")


def stream_requests(items: list[pb.StreamForecastRequest]) -> Iterator[pb.StreamForecastRequest]:
    yield from items


def test_stream_matches_answers_to_requests(stub: Stub) -> None:
    items = [
        pb.StreamForecastRequest(
            request_id=f"r{i}",
            request=pb.ForecastRequest(
                model="moving_average", version="1", history=[float(i)] * 12, horizon=2
            ),
        )
        for i in range(200)
    ]
    answers = {a.request_id: a for a in stub.StreamForecast(stream_requests(items), timeout=30)}
    assert set(answers) == {f"r{i}" for i in range(200)}
    for i in range(200):
        assert answers[f"r{i}"].forecast.values == pytest.approx([float(i)] * 2)


def test_stream_answers_a_bad_request_in_band_and_goes_on(stub: Stub) -> None:
    good = pb.ForecastRequest(model="moving_average", history=[1.0] * 12)
    items = [
        pb.StreamForecastRequest(request_id="ok-1", request=good),
        pb.StreamForecastRequest(
            request_id="bad", request=pb.ForecastRequest(model="nope", history=[1.0])
        ),
        pb.StreamForecastRequest(request_id="ok-2", request=good),
    ]
    answers = {a.request_id: a for a in stub.StreamForecast(stream_requests(items), timeout=30)}
    assert answers["ok-1"].WhichOneof("outcome") == "forecast"
    assert answers["ok-2"].WhichOneof("outcome") == "forecast"
    assert answers["bad"].error.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert answers["bad"].error.reason == "MODEL_NOT_FOUND"


def test_stream_with_a_repeated_id_in_flight_ends_with_invalid_argument(stub: Stub) -> None:
    # A caller that never reads keeps the first request in flight.
    request = pb.ForecastRequest(model="lstm_timeseries", history=history())
    items = [pb.StreamForecastRequest(request_id="same", request=request)] * 50
    with pytest.raises(grpc.RpcError) as raised:
        for _ in stub.StreamForecast(stream_requests(items), timeout=30):
            pass
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in (raised.value.details() or "")
