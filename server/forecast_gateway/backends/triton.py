"""The Triton proxy: every call the gateway makes to Triton goes through here.

Inference goes through Triton's generated gRPC stub on one shared async
channel with raw tensor bytes (the hot path); readiness, the repository
index and model configs through `tritonclient.grpc.aio`. Every call has a
timeout, and Triton's errors become the gateway's own exceptions in one
place (`convert_error`). `forecast` sends the rows it is handed as one
request of shape [rows, window]; it does no grouping of its own. The rows
come from the coalescer (`coalescing.py`), which stacks concurrent calls for
the same (model, version, window, horizon) into one multi-row request of at
most the model's max_batch_size rows (a ForecastBatch group arrives already
stacked, and joins concurrent calls of its key the same way). Triton's
dynamic batcher, in C++, may then merge concurrent requests of equal shape
into one model execution.

With several Triton replicas (`triton_url` a list or a `dns:///` name, see
`triton_target`) the inference channel spreads calls over them one call at
a time (round_robin) and a call that finds its replica gone is retried on
another within the retry budget and the caller's deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import structlog
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from forecast_gateway.backends.base import VERSION_GONE, BackendModelConfig
from forecast_gateway.errors import (
    DeadlineExceeded,
    GatewayError,
    Internal,
    ResourceExhausted,
    Unavailable,
)
from forecast_gateway.triton_target import parse_target

log = structlog.get_logger(__name__)

HISTORY_INPUT = "HISTORY"
HORIZON_INPUT = "HORIZON"
FORECAST_OUTPUT = "FORECAST"
# Bound on the control-plane calls (catalog refresh, health).
CONTROL_TIMEOUT_S = 1.0
# Largest message to or from Triton (a batch of 256 long windows is ~1 MB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Reconnect quickly after Triton restarts (gRPC's default backoff grows to 120 s).
RECONNECT_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
# First retry backoff; doubled each attempt, jittered by +-50%.
RETRY_BACKOFF_S = 0.02


ControlCall = Callable[[triton_aio.InferenceServerClient], Awaitable[Any]]
"""A tritonclient call on one control client."""


class RetryBudget:
    """Retries allowed as a fraction of recent requests (a token bucket).

    Each request adds `ratio` tokens, each retry spends one: when Triton is
    down for everyone, retries stop instead of multiplying the load on its
    way back up. The bucket holds `cap` tokens plus one per request at the
    most requests ever in flight at Triton at once (filled as that peak
    rises): a replica that dies fails every request it holds at the same
    moment, and retrying each of those once, on another replica, adds no
    load beyond what Triton was already carrying.
    """

    def __init__(self, ratio: float, cap: float = 10.0) -> None:
        self.ratio = ratio
        self.base = cap
        self.cap = cap
        self.tokens = cap
        self.peak_in_flight = 0

    def on_request(self, in_flight: int = 0) -> None:
        """Credit one request; `in_flight` requests are at Triton now, this one included."""
        if in_flight > self.peak_in_flight:
            self.tokens += in_flight - self.peak_in_flight
            self.peak_in_flight = in_flight
            self.cap = self.base + in_flight
        self.tokens = min(self.cap, self.tokens + self.ratio)

    def try_spend(self) -> bool:
        """Take one retry if the budget allows it."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class TritonProxy:
    """Async client for the few Triton calls the gateway needs.

    `url` is `triton_url` in any form `parse_target` accepts. With several
    replicas, inference is balanced per call (round_robin); the control plane
    asks every known replica and merges, so one replica down changes nothing
    the catalog or health report while another serves the model.
    """

    def __init__(self, url: str, retries: int = 2, retry_budget_ratio: float = 0.1) -> None:
        self.url = url
        self.target = parse_target(url)
        self.retries = retries
        self.budget = RetryBudget(retry_budget_ratio)
        self._in_flight = 0
        balancing = self.target.channel_options()
        # Inference: Triton's generated stub on one shared channel (the hot path).
        self._channel = grpc.aio.insecure_channel(
            self.target.grpc_target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                *RECONNECT_OPTIONS,
                *balancing,
            ],
        )
        self._infer = service_pb2_grpc.GRPCInferenceServiceStub(self._channel).ModelInfer
        # Control plane (readiness, repository index, configs): tritonclient, one
        # client per known replica, or one balanced client for a name gRPC resolves.
        if self.target.replicas:
            self._clients = tuple(
                triton_aio.InferenceServerClient(url=address, channel_args=list(RECONNECT_OPTIONS))
                for address in self.target.replicas
            )
        else:
            self._clients = (
                triton_aio.InferenceServerClient(
                    url=self.target.grpc_target, channel_args=[*RECONNECT_OPTIONS, *balancing]
                ),
            )
        # A balanced control client may pick a replica that has just died: ask again.
        self._control_attempts = 1 if self.target.replicas else 2
        self._down: set[str] = set()
        self.replicas_ready: dict[tuple[str, str], int] = {}
        """(model, version) -> how many replicas reported it READY at the last refresh."""

    async def close(self) -> None:
        """Close every channel."""
        for client in self._clients:
            await client.close()
        await self._channel.close()

    async def forecast(
        self,
        model: str,
        version: str,
        windows: npt.NDArray[np.float32],
        horizon: int,
        timeout_s: float,
    ) -> npt.NDArray[np.float32]:
        """Run `model` `version` on normalized windows (rows x window); return rows x horizon.

        Built directly on Triton's ModelInfer proto with raw tensor bytes: the
        request path does no per-call object juggling beyond one message.
        """
        rows, window = windows.shape
        request = service_pb2.ModelInferRequest(
            model_name=model,
            model_version=version,
            inputs=[
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=HISTORY_INPUT, datatype="FP32", shape=[rows, window]
                ),
                service_pb2.ModelInferRequest.InferInputTensor(
                    name=HORIZON_INPUT, datatype="INT32", shape=[rows, 1]
                ),
            ],
            # Triton drops the request if still queued when this passes, where the
            # model's queue policy allows timeout override (the shipped models set
            # no policy; there the gRPC deadline's cancellation does it).
            parameters={"timeout": service_pb2.InferParameter(int64_param=int(timeout_s * 1e6))},
            raw_input_contents=[
                np.ascontiguousarray(windows, dtype=np.float32).tobytes(),
                np.full(rows, horizon, dtype=np.int32).tobytes(),
            ],
        )
        response = await self._call_with_retries(request, timeout_s, model, version)
        output = _output(response, rows, horizon)
        if output is None:
            raise Internal(
                "the model returned an unexpected output",
                reason="MODEL_OUTPUT_INVALID",
                metadata={"model": model, "version": version},
            )
        return output

    async def _call_with_retries(
        self, request: service_pb2.ModelInferRequest, timeout_s: float, model: str, version: str
    ) -> service_pb2.ModelInferResponse:
        """ModelInfer, retried on UNAVAILABLE only, within the deadline and the retry budget.

        Inference is a pure function of its input, so a retry cannot do harm
        twice; UNAVAILABLE means the request did not reach a working Triton.
        Backoff is jittered so that callers do not retry in lockstep.
        """
        deadline = time.monotonic() + timeout_s
        self.budget.on_request(self._in_flight + 1)
        for attempt in range(self.retries + 1):
            try:
                return await self._send(request, max(deadline - time.monotonic(), 0.0))
            except grpc.aio.AioRpcError as error:
                backoff = RETRY_BACKOFF_S * (2**attempt) * random.uniform(0.5, 1.5)
                if (
                    not _retryable(error, self.target.balanced)
                    or attempt == self.retries
                    or time.monotonic() + backoff >= deadline
                    or not self._spend_retry()
                ):
                    raise convert_error(
                        str(error.code()), error.details() or "", model=model, version=version
                    ) from error
                log.info(
                    "triton_retry",
                    attempt=attempt + 1,
                    backoff_ms=round(backoff * 1000, 1),
                    in_flight=self._in_flight,
                    budget_left=round(self.budget.tokens, 1),
                )
                await asyncio.sleep(backoff)
        raise AssertionError("unreachable")

    async def _send(
        self, request: service_pb2.ModelInferRequest, timeout_s: float
    ) -> service_pb2.ModelInferResponse:
        """One ModelInfer attempt, counted in flight while it is at Triton."""
        self._in_flight += 1
        try:
            return await self._infer(request, timeout=timeout_s)
        finally:
            self._in_flight -= 1

    def _spend_retry(self) -> bool:
        """Take a retry from the budget; log when it is empty (calls then fail at once)."""
        if self.budget.try_spend():
            return True
        log.warning("triton_retry_budget_empty", tokens=round(self.budget.tokens, 2))
        return False

    async def is_ready(self) -> bool:
        """Whether at least one replica answers and reports itself ready."""
        try:
            answers = await self._each(
                lambda client: client.is_server_ready(client_timeout=CONTROL_TIMEOUT_S)
            )
        except GatewayError:
            return False
        return any(bool(answer) for answer in answers.values())

    async def version_states(self) -> dict[str, dict[str, str]]:
        """Per model, per version: Triton's state string (READY, LOADING, UNAVAILABLE...).

        Merged over the replicas that answer: a version is READY while any
        replica serves it. Raises Unavailable only when no replica answers.
        """
        indexes = await self._each(
            lambda client: client.get_model_repository_index(
                as_json=True, client_timeout=CONTROL_TIMEOUT_S
            )
        )
        states, self.replicas_ready = merge_states(list(indexes.values()))
        return states

    async def model_config(self, model: str) -> BackendModelConfig:
        """The parts of a model's config.pbtxt the gateway uses.

        From the first replica that answers: every replica serves the same
        model repository, so any one's config will do.
        """
        config: dict[str, Any] = {}
        for index, client in enumerate(self._clients):
            try:
                config = await self._control(
                    lambda c: c.get_model_config(
                        model, as_json=True, client_timeout=CONTROL_TIMEOUT_S
                    ),
                    client,
                )
                break
            except Unavailable:
                if index == len(self._clients) - 1:
                    raise
        body: Mapping[str, Any] = config.get("config", {})
        raw: Mapping[str, Any] = body.get("parameters", {})
        return BackendModelConfig(
            parameters={key: str(value.get("string_value", "")) for key, value in raw.items()},
            max_batch_size=int(body.get("max_batch_size", 0)),
        )

    async def _each(self, call: ControlCall) -> dict[str, Any]:
        """`call` on every control client at once: {replica: answer} for those that answered.

        Raises the first replica's error only when none answered.
        """
        names = self.target.replicas or (self.target.grpc_target,)
        results = await asyncio.gather(
            *(self._control(call, client) for client in self._clients),
            return_exceptions=True,
        )
        answers: dict[str, Any] = {}
        for name, result in zip(names, results, strict=True):
            if isinstance(result, GatewayError):
                self._note_down(name, result)
            elif isinstance(result, BaseException):
                raise result
            else:
                self._note_up(name)
                answers[name] = result
        if not answers:
            first = results[0]
            assert isinstance(first, GatewayError)
            raise first
        return answers

    async def _control(self, call: ControlCall, client: triton_aio.InferenceServerClient) -> Any:
        """One control-plane call, asked again on a balanced channel; errors converted."""
        for attempt in range(self._control_attempts):
            try:
                return await call(client)
            except InferenceServerException as error:
                if attempt == self._control_attempts - 1:
                    status, message = str(error.status() or ""), str(error.message() or "")
                    if len(self._clients) > 1:  # logged once per outage by _note_down
                        raise _gateway_error(status, message) from error
                    raise convert_error(status, message) from error
        raise AssertionError("unreachable")

    def _note_down(self, replica: str, error: GatewayError) -> None:
        """Log a replica that stopped answering (once, while several are configured)."""
        if len(self._clients) > 1 and replica not in self._down:
            self._down.add(replica)
            log.warning("triton_replica_down", replica=replica, error=error.message)

    def _note_up(self, replica: str) -> None:
        if replica in self._down:
            self._down.discard(replica)
            log.info("triton_replica_up", replica=replica)


def merge_states(
    indexes: list[dict[str, Any]],
) -> tuple[dict[str, dict[str, str]], dict[tuple[str, str], int]]:
    """Merge repository indexes of several replicas: (states, READY replicas per version).

    A version is READY if any replica has it READY, else LOADING if any is
    loading, else the first state reported.
    """
    states: dict[str, dict[str, str]] = {}
    ready: dict[tuple[str, str], int] = {}
    for index in indexes:
        for entry in index.get("models", []):
            name, version = entry.get("name", ""), entry.get("version", "")
            if not version:
                continue
            state = entry.get("state", "")
            known = states.setdefault(name, {})
            if version not in known or _STATE_RANK.get(state, 0) > _STATE_RANK.get(
                known[version], 0
            ):
                known[version] = state
            if state == "READY":
                ready[(name, version)] = ready.get((name, version), 0) + 1
    return states, ready


_STATE_RANK = {"READY": 2, "LOADING": 1}
"""Which replica's state wins when they differ."""


def convert_error(status: str, message: str, **context: str) -> GatewayError:
    """Map a Triton error (gRPC status name and message) to the gateway's exception.

    The only place that interprets Triton's errors.
    """
    log.warning("triton_error", triton_status=status, triton_message=message, **context)
    return _gateway_error(status, message, **context)


def _gateway_error(status: str, message: str, **context: str) -> GatewayError:
    """`convert_error` without the log line."""
    if status.endswith("RESOURCE_EXHAUSTED") or _QUEUE_FULL in message:
        return ResourceExhausted(
            "Triton's queue for this model is full; retry later with backoff",
            reason="TRITON_OVERLOADED",
        )
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceeded("the deadline passed while Triton was computing the forecast")
    if status.endswith("NOT_FOUND") or _version_not_ready(message):
        return Unavailable(
            "the model version is not loaded in Triton right now; retry later",
            reason=VERSION_GONE,
            metadata=dict(context),
        )
    if status.endswith("UNAVAILABLE"):
        return Unavailable("Triton is unreachable; retry later", reason="TRITON_UNAVAILABLE")
    if status.endswith("CANCELLED"):
        return Unavailable("the call to Triton was cancelled", reason="TRITON_CANCELLED")
    return Internal("Triton failed to compute the forecast", reason="TRITON_ERROR")


_QUEUE_FULL = "Exceeds maximum queue size"


def _version_not_ready(message: str) -> bool:
    """Triton's words for a model or version it does not serve now (sent as UNAVAILABLE).

    e.g. "Request for unknown model: 'lstm_timeseries' version 1 is not at ready state".
    """
    # Not a bare "not ready": Triton says "Server not ready" when it is not
    # serving at all, which is TRITON_UNAVAILABLE and worth a retry.
    return "unknown model" in message or "is not at ready state" in message


def _retryable(error: grpc.aio.AioRpcError, balanced: bool = False) -> bool:
    """UNAVAILABLE from a Triton that is down, not one that answered "queue full" or "not ready".

    A full queue is shed on purpose, and a version being unloaded will not be
    back within a retry's backoff: the caller (or the router) should go elsewhere.
    With several replicas (`balanced`) the retry goes to the next replica,
    which may serve the version: the catalog counts a version ready while any
    replica serves it, so a call must be able to reach that replica.
    """
    details = error.details() or ""
    return (
        error.code() is grpc.StatusCode.UNAVAILABLE
        and _QUEUE_FULL not in details
        and (balanced or not _version_not_ready(details))
    )


def _output(
    response: service_pb2.ModelInferResponse, rows: int, horizon: int
) -> npt.NDArray[np.float32] | None:
    """The FORECAST tensor as rows x horizon, or None if Triton sent something else."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != FORECAST_OUTPUT or index >= len(response.raw_output_contents):
            continue
        if tensor.datatype != "FP32" or list(tensor.shape) != [rows, horizon]:
            return None
        raw = response.raw_output_contents[index]
        if len(raw) != rows * horizon * 4:  # also a length frombuffer cannot read (not 4k)
            return None
        return np.frombuffer(raw, dtype=np.float32).reshape(rows, horizon)
    return None
