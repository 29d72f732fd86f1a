"""Every error class at the gRPC edge: its status code, google.rpc details and request id.

The whole gateway in process (tests/edge.py): each call goes over a real
loopback channel through the interceptor, the servicer, the core and the
fake backend.
"""

from __future__ import annotations

import asyncio
import math
import re
from pathlib import Path
from typing import Any, NoReturn

import grpc
import numpy as np
import pytest

from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.backends.base import Rows
from forecast_gateway.errors import Unavailable
from tests.edge import (
    HISTORY,
    LAST,
    LSTM,
    MA,
    MEAN_OF_10,
    captured_logs,
    details,
    failure,
    fake_backend,
    forecast_request,
    one_request_line,
    serving,
    trailer,
)

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


async def test_a_pinned_forecast_is_the_fakes_answer_in_the_units_of_the_history(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as edge:
        response = await edge.stub.Forecast(forecast_request(version="1", horizon=3))
        calls = list(edge.backend.calls)
    assert (response.model, response.version, response.horizon) == (LSTM, "1", 3)
    assert response.routing_decision == forecast_pb2.ROUTING_DECISION_PINNED
    assert response.sequence_length == 10
    assert list(response.values) == pytest.approx([LAST] * 3)
    assert len(response.forecast_id) == 36
    assert [(c.model, c.version, c.rows, c.window, c.horizon) for c in calls] == [
        (LSTM, "1", 1, 10, 3)
    ]


async def test_an_unpinned_forecast_gets_the_configured_default_and_its_window(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as edge:
        lstm = await edge.stub.Forecast(forecast_request())
        average = await edge.stub.Forecast(forecast_request(model=MA))
    assert (lstm.version, lstm.sequence_length, lstm.horizon) == ("2", 52, 5)
    assert lstm.routing_decision == forecast_pb2.ROUTING_DECISION_DEFAULT
    assert (average.version, average.sequence_length) == ("1", 10)
    assert list(average.values) == pytest.approx([MEAN_OF_10] * 5)


async def test_invalid_input_is_one_status_listing_every_violation(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(
            edge.stub.Forecast(
                forecast_request(version="1", horizon=3000, interval_coverages=[1.5]),
                metadata=(("x-request-id", "bad-input-1"),),
            )
        )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert (found.info.reason, found.info.domain) == ("INVALID_ARGUMENT", "forecast.v1")
    assert dict(found.info.metadata) == {"request_id": "bad-input-1"}
    assert found.violations == [
        (
            "interval_coverages[0]",
            "must be a probability strictly between 0 and 1 (e.g. 0.8), got 1.5",
        ),
        ("horizon", "horizon 3000 is over lstm_timeseries's maximum of 64"),
    ]
    assert error.details() == (
        "invalid request: interval_coverages[0]: must be a probability strictly between 0 "
        "and 1 (e.g. 0.8), got 1.5; horizon: horizon 3000 is over lstm_timeseries's maximum of 64"
    )


@pytest.mark.parametrize(
    ("fields", "violated"),
    [
        ({"history": []}, "history"),
        ({"history": [*HISTORY[:-1], math.nan]}, "history"),
        ({"history": [math.inf, *HISTORY]}, "history"),
        ({"history": [1e200, *HISTORY]}, "history"),
        ({"version": "2", "history": HISTORY[:30]}, "history"),
        ({"model": MA, "history": [1.0] * 10_001}, "history"),
        ({"horizon": -1}, "horizon"),
        ({"horizon": 65}, "horizon"),
        ({"sequence_length": 20}, "sequence_length"),
        ({"model": MA, "sequence_length": -3}, "sequence_length"),
        ({"model": ""}, "model"),
        ({"version": "latest"}, "version"),
        ({"version": "01"}, "version"),
        ({"quantile_levels": [0.5, 0.5]}, "quantile_levels"),
    ],
)
async def test_each_invalid_field_is_named(
    tmp_path: Path, fields: dict[str, Any], violated: str
) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.Forecast(forecast_request(**fields)))
        assert not edge.backend.calls  # rejected before inference
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    nan_in_window = any(v != v for v in fields.get("history", []))
    assert found.info.reason == ("MISSING_VALUES" if nan_in_window else "INVALID_ARGUMENT")
    assert found.fields == [violated]
    assert violated in (error.details() or "")


METHODS = ["Forecast", "ForecastBatch", "CompareVersions", "GetModel", "GetExperiment"]


@pytest.mark.parametrize("method", [*METHODS, "ReportActuals", "ListModels", "ListExperiments"])
async def test_unparseable_bytes_are_invalid_argument_malformed_request(
    tmp_path: Path, method: str
) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(edge.raw(method)(b"\xff\xff\xff not a protobuf"))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT  # not gRPC's bare UNKNOWN
    found = details(error)
    assert (found.info.reason, found.info.domain) == ("MALFORMED_REQUEST", "forecast.v1")
    assert found.violations == []
    assert "could not be parsed" in (error.details() or "")


async def test_an_unparseable_stream_message_ends_the_stream_as_malformed(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        stream: grpc.aio.StreamStreamMultiCallable[bytes, bytes] = edge.channel.stream_stream(
            "/forecast.v1.ForecastService/StreamForecast"
        )
        call = stream(iter([b"\xff\xff\xff"]), metadata=(("x-request-id", "stream-1"),))
        error = await failure(call.read())
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    found = details(error)
    assert (found.info.reason, found.info.metadata["request_id"]) == (
        "MALFORMED_REQUEST",
        "stream-1",
    )
    assert trailer(error.trailing_metadata(), "x-request-id") == ["stream-1"]


async def test_an_unknown_model_is_not_found_naming_the_served_ones(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.Forecast(forecast_request(model="nope")))
        by_name = await failure(edge.stub.GetModel(pb.GetModelRequest(name="nope")))
        batch = await failure(
            edge.stub.ForecastBatch(
                pb.ForecastBatchRequest(model="nope", series=[pb.Series(id="a", history=HISTORY)])
            )
        )
    for failed in (error, by_name, batch):
        assert failed.code() is grpc.StatusCode.NOT_FOUND
        found = details(failed)
        assert found.info.reason == "MODEL_NOT_FOUND"
        assert found.info.metadata["model"] == "nope"
    assert error.details() == (
        "model 'nope' is not served; served models: lstm_timeseries, moving_average (ListModels)"
    )


async def test_an_unknown_version_is_not_found_naming_the_known_ones(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(edge.stub.Forecast(forecast_request(version="9")))
        compared = await failure(
            edge.stub.CompareVersions(
                pb.CompareVersionsRequest(model=LSTM, versions=["1", "9"], history=HISTORY)
            )
        )
    assert error.code() is grpc.StatusCode.NOT_FOUND
    found = details(error)
    assert found.info.reason == "VERSION_NOT_FOUND"
    assert (found.info.metadata["model"], found.info.metadata["version"]) == (LSTM, "9")
    assert error.details() == "model 'lstm_timeseries' has no version '9'; versions: 1, 2"
    assert compared.code() is grpc.StatusCode.NOT_FOUND
    assert details(compared).info.reason == "VERSION_NOT_FOUND"


async def test_missing_names_and_unknown_forecasts(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        no_name = await failure(edge.stub.GetModel(pb.GetModelRequest()))
        no_model = await failure(edge.stub.GetExperiment(pb.GetExperimentRequest()))
        unknown = await failure(
            edge.stub.ReportActuals(
                pb.ReportActualsRequest(forecast_id="no-such-forecast", actuals=[1.0])
            )
        )
        empty = await failure(edge.stub.ReportActuals(pb.ReportActualsRequest()))
        unknown_models = [
            await failure(edge.stub.GetExperiment(pb.GetExperimentRequest(model="nope"))),
            await failure(edge.stub.ListExperiments(pb.ListExperimentsRequest(model="nope"))),
        ]
        no_compare_model = await failure(
            edge.stub.CompareVersions(pb.CompareVersionsRequest(history=HISTORY))
        )
    assert no_name.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(no_name).fields == ["name"]
    assert no_model.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(no_model).fields == ["model"]
    assert unknown.code() is grpc.StatusCode.NOT_FOUND
    assert details(unknown).info.reason == "FORECAST_NOT_FOUND"
    assert details(unknown).info.metadata["forecast_id"] == "no-such-forecast"
    assert empty.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(empty).fields == ["forecast_id", "actuals"]
    for error in unknown_models:
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert details(error).info.reason == "MODEL_NOT_FOUND"
    assert no_compare_model.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert details(no_compare_model).fields == ["model"]


async def test_a_backend_that_is_down_is_unavailable(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.up = False  # the catalog still says READY: the call reaches the fake
        at_the_backend = await failure(edge.stub.Forecast(forecast_request(version="1")))
        await edge.gateway.refresh()  # now the catalog knows
        pinned = await failure(edge.stub.Forecast(forecast_request(version="1")))
        unpinned = await failure(edge.stub.Forecast(forecast_request()))
    assert at_the_backend.code() is grpc.StatusCode.UNAVAILABLE
    assert details(at_the_backend).info.reason == "TRITON_UNAVAILABLE"
    assert pinned.code() is grpc.StatusCode.UNAVAILABLE
    assert details(pinned).info.reason == "VERSION_UNAVAILABLE"
    assert pinned.details() == "version '1' of model 'lstm_timeseries' is UNAVAILABLE"
    assert unpinned.code() is grpc.StatusCode.UNAVAILABLE
    assert details(unpinned).info.reason == "MODEL_UNAVAILABLE"


async def test_a_version_that_is_not_ready_is_unavailable(tmp_path: Path) -> None:
    backend = fake_backend(**{LSTM: {"1": "LOADING", "2": "READY"}})
    async with serving(tmp_path, backend) as edge:
        error = await failure(edge.stub.Forecast(forecast_request(version="1")))
        other = await edge.stub.Forecast(forecast_request(version="2"))
        models = await edge.stub.ListModels(pb.ListModelsRequest())
    assert error.code() is grpc.StatusCode.UNAVAILABLE
    found = details(error)
    assert found.info.reason == "VERSION_UNAVAILABLE"
    assert dict(found.info.metadata) == {
        "model": LSTM,
        "version": "1",
        "request_id": found.info.metadata["request_id"],
    }
    assert "LOADING" in (error.details() or "")
    assert other.version == "2"
    lstm = next(m for m in models.models if m.name == LSTM)
    states = {v.version: v.state for v in lstm.versions}
    assert states == {
        "1": forecast_pb2.MODEL_VERSION_STATE_LOADING,
        "2": forecast_pb2.MODEL_VERSION_STATE_READY,
    }


async def test_a_version_gone_at_the_backend_reroutes_unpinned_calls_and_fails_pins(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.models[LSTM].states["2"] = "UNAVAILABLE"  # the catalog has not seen it
        rerouted = await edge.stub.Forecast(forecast_request())
        tried = [c.version for c in edge.backend.calls]
        pinned = await failure(edge.stub.Forecast(forecast_request(version="2")))
    assert tried == ["2", "1"]  # the backend said v2 is gone: routed again, once
    assert rerouted.version == "1"
    assert list(rerouted.values) == pytest.approx([LAST] * 5)
    assert pinned.code() is grpc.StatusCode.UNAVAILABLE  # out of routing until the next refresh
    assert details(pinned).info.reason == "VERSION_UNAVAILABLE"


async def test_the_gateways_own_deadline_is_deadline_exceeded_with_details(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path, default_timeout_s=0.1) as edge:
        edge.backend.gate = asyncio.Event()  # the fake never answers
        error = await failure(edge.stub.Forecast(forecast_request(version="1"), timeout=10))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    found = details(error)
    assert (found.info.reason, found.info.domain) == ("DEADLINE_EXCEEDED", "forecast.v1")
    assert error.details() == "the deadline passed before Triton answered"


async def test_the_callers_deadline_is_deadline_exceeded(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.gate = asyncio.Event()
        error = await failure(edge.stub.Forecast(forecast_request(version="1"), timeout=0.1))
    assert error.code() is grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_model_that_raises_is_internal_without_its_text(tmp_path: Path) -> None:
    def broken(windows: Rows, horizon: int) -> Rows:
        raise RuntimeError("secret internals at /etc/passwd")

    async with serving(tmp_path) as edge:
        edge.backend.models[LSTM].forecasts["1"] = broken
        error = await failure(edge.stub.Forecast(forecast_request(version="1")))
        still = await edge.stub.Forecast(forecast_request(version="2"))
    assert error.code() is grpc.StatusCode.INTERNAL
    found = details(error)
    assert found.info.reason == "INTERNAL"
    assert error.details() == "the forecast failed"
    assert not leaks(error, "secret", "passwd", "RuntimeError")
    assert still.version == "2"


async def test_a_model_that_raises_leaves_its_traceback_in_the_log(tmp_path: Path) -> None:
    def broken(windows: Rows, horizon: int) -> Rows:
        raise RuntimeError("secret internals at /etc/passwd")

    async with serving(tmp_path) as edge:
        edge.backend.models[LSTM].forecasts["1"] = broken
        with captured_logs() as logs:
            await failure(edge.stub.Forecast(forecast_request(version="1")))
            await one_request_line(logs)
    errors = [e for e in logs if e["log_level"] == "error"]
    (logged,) = errors  # once: not again as the interceptor's unhandled_error
    assert logged["event"] == "backend_failed"
    assert isinstance(logged["exc_info"], RuntimeError)
    assert (logged["model"], logged["version"]) == (LSTM, "1")


async def test_a_non_finite_model_output_is_internal_naming_the_version(tmp_path: Path) -> None:
    def nan(windows: Rows, horizon: int) -> Rows:
        return np.full((windows.shape[0], horizon), np.nan, dtype=np.float32)

    async with serving(tmp_path) as edge:
        edge.backend.models[LSTM].forecasts["1"] = nan
        error = await failure(edge.stub.Forecast(forecast_request(version="1")))
    assert error.code() is grpc.StatusCode.INTERNAL
    found = details(error)
    assert found.info.reason == "MODEL_OUTPUT_INVALID"
    assert (found.info.metadata["model"], found.info.metadata["version"]) == (LSTM, "1")


async def test_an_unexpected_exception_is_a_generic_internal_quoting_the_request_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> NoReturn:
        raise KeyError("secret internals at /etc/passwd")

    async with serving(tmp_path) as edge:
        monkeypatch.setattr(edge.gateway.forecaster, "forecast", broken)
        with captured_logs() as logs:
            error = await failure(
                edge.stub.Forecast(forecast_request(), metadata=(("x-request-id", "oops-7"),))
            )
            line = await one_request_line(logs)
    assert error.code() is grpc.StatusCode.INTERNAL
    assert error.details() == "internal error; quote request id oops-7 when reporting it"
    found = details(error)
    assert (found.info.reason, dict(found.info.metadata)) == ("INTERNAL", {"request_id": "oops-7"})
    assert not leaks(error, "secret", "passwd", "KeyError")
    (logged,) = [e for e in logs if e["event"] == "unhandled_error"]
    assert isinstance(logged["exc_info"], KeyError)  # the traceback stays in the log
    assert (line["status"], line["request_id"]) == ("INTERNAL", "oops-7")


def leaks(error: grpc.aio.AioRpcError, *words: str) -> list[str]:
    """The words of `words` found anywhere the caller can read (message, trailers)."""
    texts = [error.details() or ""]
    for _, value in error.trailing_metadata() or ():
        texts.append(value.decode("latin-1") if isinstance(value, bytes) else value)
    return [w for w in words if any(w in text for text in texts)]


async def test_a_message_over_the_size_limit_is_resource_exhausted(tmp_path: Path) -> None:
    async with serving(tmp_path, max_message_bytes=4096) as edge:
        error = await failure(edge.stub.Forecast(forecast_request(history=[1.0] * 1000)))
        ok = await edge.stub.Forecast(forecast_request(model=MA, history=[1.0] * 100))
    assert error.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(ok.values) == 5


async def test_the_callers_request_id_comes_back_as_one_trailer(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        call = edge.stub.Forecast(
            forecast_request(version="1"), metadata=(("x-request-id", "edge-42"),)
        )
        await call
        ok_trailers = await call.trailing_metadata()
        error = await failure(
            edge.stub.Forecast(
                forecast_request(model="nope"), metadata=(("x-request-id", "edge-43"),)
            )
        )
    assert trailer(ok_trailers, "x-request-id") == ["edge-42"]
    assert details(error).info.metadata["request_id"] == "edge-43"
    assert "edge-43" in trailer(error.trailing_metadata(), "x-request-id")


async def test_a_failed_call_carries_its_request_id_trailer_once(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        error = await failure(
            edge.stub.Forecast(
                forecast_request(model="nope"), metadata=(("x-request-id", "edge-44"),)
            )
        )
    assert trailer(error.trailing_metadata(), "x-request-id") == ["edge-44"]


@pytest.mark.parametrize("sent", [None, "has spaces", "x" * 129, "semi;colon", "<tag>"], ids=repr)
async def test_a_missing_or_insane_request_id_is_replaced_by_a_fresh_one(
    tmp_path: Path, sent: str | None
) -> None:
    metadata = () if sent is None else (("x-request-id", sent),)
    async with serving(tmp_path) as edge:
        first = edge.stub.Forecast(forecast_request(), metadata=metadata)
        await first
        second = edge.stub.Forecast(forecast_request(), metadata=metadata)
        await second
        ids = [trailer(await c.trailing_metadata(), "x-request-id") for c in (first, second)]
    (one,), (other,) = ids
    assert isinstance(one, str) and HEX_ID.match(one), one
    assert isinstance(other, str) and HEX_ID.match(other) and one != other


async def test_the_gateway_keeps_serving_after_every_error_class(tmp_path: Path) -> None:
    async with serving(tmp_path) as edge:
        edge.backend.errors[(LSTM, "1")] = Unavailable("down", reason="TRITON_UNAVAILABLE")
        codes = []
        for request in (
            forecast_request(version="1"),
            forecast_request(model="nope"),
            forecast_request(history=[]),
        ):
            codes.append((await failure(edge.stub.Forecast(request))).code())
        ok = await edge.stub.Forecast(forecast_request(version="2"))
    assert codes == [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.INVALID_ARGUMENT,
    ]
    assert ok.version == "2"
