"""The Triton proxy's retry rule, with the ModelInfer call replaced by a scripted stand-in."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import service_pb2

from forecast_gateway.backends.retry_budget import RetryBudget
from forecast_gateway.backends.triton import TritonProxy
from forecast_gateway.backends.triton_repository import merge_states
from forecast_gateway.errors import GatewayError, ResourceExhausted, Unavailable


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


def answer(rows: int, horizon: int) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse()
    response.outputs.add(name="FORECAST", datatype="FP32", shape=[rows, horizon])
    response.raw_output_contents.append(np.ones((rows, horizon), dtype=np.float32).tobytes())
    return response


class Script:
    """Raises the scripted errors in turn, then answers."""

    def __init__(self, errors: list[grpc.aio.AioRpcError]) -> None:
        self.errors: Iterator[grpc.aio.AioRpcError] = iter(errors)
        self.calls = 0

    async def __call__(
        self,
        request: service_pb2.ModelInferRequest,
        timeout: float,  # noqa: ASYNC109 (the stub's signature)
    ) -> service_pb2.ModelInferResponse:
        self.calls += 1
        error = next(self.errors, None)
        if error is not None:
            raise error
        return answer(1, 2)


@pytest.fixture
async def proxy() -> TritonProxy:
    # Nothing listens there: every call goes through the script.
    return TritonProxy("127.0.0.1:9", retries=2, retry_budget_ratio=0.1)


async def run(proxy: TritonProxy, script: Script) -> npt.NDArray[np.float32]:
    proxy._infer = script
    return await proxy.forecast("m", "1", np.zeros((1, 4), dtype=np.float32), 2, timeout_s=5.0)


async def test_server_not_ready_is_triton_unavailable_and_retried(proxy: TritonProxy) -> None:
    script = Script([rpc_error(grpc.StatusCode.UNAVAILABLE, "Server not ready")] * 5)
    with pytest.raises(Unavailable) as raised:
        await run(proxy, script)
    assert raised.value.reason == "TRITON_UNAVAILABLE"
    assert script.calls == 3


async def test_unavailable_is_retried_then_answered(proxy: TritonProxy) -> None:
    script = Script([rpc_error(grpc.StatusCode.UNAVAILABLE)] * 2)
    assert (await run(proxy, script)).shape == (1, 2)
    assert script.calls == 3


async def test_retries_stop_after_the_limit(proxy: TritonProxy) -> None:
    script = Script([rpc_error(grpc.StatusCode.UNAVAILABLE)] * 5)
    with pytest.raises(Unavailable):
        await run(proxy, script)
    assert script.calls == 3


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (rpc_error(grpc.StatusCode.INVALID_ARGUMENT, "bad shape"), GatewayError),
        (rpc_error(grpc.StatusCode.UNAVAILABLE, "Exceeds maximum queue size"), ResourceExhausted),
        (
            rpc_error(
                grpc.StatusCode.UNAVAILABLE,
                "Request for unknown model: 'lstm_timeseries' version 1 is not at ready state",
            ),
            Unavailable,
        ),
    ],
)
async def test_errors_that_a_retry_cannot_fix_are_not_retried(
    proxy: TritonProxy, error: grpc.aio.AioRpcError, kind: type[GatewayError]
) -> None:
    script = Script([error])
    with pytest.raises(kind) as raised:
        await run(proxy, script)
    assert script.calls == 1
    if kind is Unavailable:  # Triton answered: the version is gone, Triton is not down
        assert raised.value.reason == "VERSION_UNAVAILABLE"


async def test_an_empty_budget_stops_retries(proxy: TritonProxy) -> None:
    proxy.budget = RetryBudget(ratio=0.0, cap=0.0)  # one token: one request in flight
    first = Script([rpc_error(grpc.StatusCode.UNAVAILABLE)])
    await run(proxy, first)  # spends the only token
    second = Script([rpc_error(grpc.StatusCode.UNAVAILABLE)])
    with pytest.raises(Unavailable):
        await run(proxy, second)
    assert (first.calls, second.calls) == (2, 1)


def test_budget_refills_with_requests() -> None:
    budget = RetryBudget(ratio=0.5, cap=1.0)
    assert budget.try_spend() and not budget.try_spend()
    budget.on_request()
    budget.on_request()
    assert budget.try_spend()


def test_budget_grows_by_the_most_requests_in_flight() -> None:
    # A replica that dies fails all it holds at once: each may be retried once.
    budget = RetryBudget(ratio=0.1, cap=10.0)
    budget.on_request(in_flight=30)
    assert sum(budget.try_spend() for _ in range(41)) == 40
    budget.on_request(in_flight=30)  # the same peak again grants nothing new
    assert budget.tokens == pytest.approx(0.1)


NOT_READY = "Request for unknown model: 'lstm_timeseries' version 1 is not at ready state"


async def test_a_version_missing_on_one_replica_is_retried_on_the_next() -> None:
    proxy = TritonProxy("127.0.0.1:9,127.0.0.1:10", retries=2, retry_budget_ratio=0.1)
    script = Script([rpc_error(grpc.StatusCode.UNAVAILABLE, NOT_READY)])
    assert (await run(proxy, script)).shape == (1, 2)
    assert script.calls == 2
    await proxy.close()


def test_replica_indexes_merge_ready_first_and_count_ready_replicas() -> None:
    def index(*entries: tuple[str, str, str]) -> dict[str, list[dict[str, str]]]:
        return {"models": [{"name": n, "version": v, "state": s} for n, v, s in entries]}

    merged = merge_states(
        [
            index(("m", "1", "READY"), ("m", "2", "UNAVAILABLE"), ("m", "", "")),
            index(("m", "1", "READY"), ("m", "2", "LOADING")),
            index(("m", "1", "UNAVAILABLE"), ("m", "2", "READY")),
        ]
    )
    assert merged.states == {"m": {"1": "READY", "2": "READY"}}
    assert merged.ready == {("m", "1"): 2, ("m", "2"): 1}
    assert merged.reasons == {}


def test_the_index_keeps_triton_s_reason_for_a_version_that_is_not_ready() -> None:
    merged = merge_states(
        [
            {
                "models": [
                    {"name": "ok", "version": "1", "state": "READY", "reason": ""},
                    {"name": "bad", "version": "1", "state": "UNAVAILABLE", "reason": "boom"},
                    {"name": "gone", "state": "UNAVAILABLE", "reason": "no version dirs"},
                ]
            }
        ]
    )
    assert merged.states == {"ok": {"1": "READY"}, "bad": {"1": "UNAVAILABLE"}}
    assert merged.reasons == {("bad", "1"): "boom", ("gone", ""): "no version dirs"}


@pytest.mark.parametrize("url", ["127.0.0.1:9", "127.0.0.1:9,127.0.0.1:11"])
async def test_nothing_listening_is_not_ready_and_the_catalog_read_fails(url: str) -> None:
    proxy = TritonProxy(url)
    assert not await proxy.is_ready()
    with pytest.raises(Unavailable):
        await proxy.version_states()
    await proxy.close()


@pytest.mark.parametrize("size", [7, 9, 12, 0])
async def test_an_output_of_the_wrong_byte_length_is_model_output_invalid(
    proxy: TritonProxy, size: int
) -> None:
    """A FORECAST tensor whose bytes do not hold rows x horizon FP32 values (7 is not even 4k)."""

    async def truncated(
        request: service_pb2.ModelInferRequest,
        timeout: float,  # noqa: ASYNC109 (the stub's signature)
    ) -> service_pb2.ModelInferResponse:
        response = service_pb2.ModelInferResponse()
        response.outputs.add(name="FORECAST", datatype="FP32", shape=[1, 2])
        response.raw_output_contents.append(b"\x00" * size)
        return response

    proxy._infer = truncated
    with pytest.raises(GatewayError) as raised:
        await proxy.forecast("m", "1", np.zeros((1, 4), dtype=np.float32), 2, timeout_s=5.0)
    assert raised.value.reason == "MODEL_OUTPUT_INVALID"
