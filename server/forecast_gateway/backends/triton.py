"""The Triton proxy: every call the gateway makes to Triton goes through here.

Inference goes through Triton's generated gRPC stub on one shared async
channel with raw tensor bytes (the hot path; the tensors' wire format is
`triton_tensors.py`); readiness, the repository index and model configs
through `tritonclient.grpc.aio` (their answers read by
`triton_repository.py`). Every call has a timeout, and Triton's errors
become the gateway's own exceptions in one place
(`triton_errors.convert_error`). `forecast` sends the rows it is handed as
one request of shape [rows, window]; it does no grouping of its own. The
rows come from the coalescer (`coalescing.py`), which stacks concurrent
calls for the same (model, version, window, horizon) into one multi-row
request of at most the model's max_batch_size rows (a ForecastBatch group
arrives already stacked, and joins concurrent calls of its key the same
way). Triton's dynamic batcher, in C++, may then merge concurrent requests
of equal shape into one model execution.

With several Triton replicas (`triton_url` a list or a `dns:///` name, see
`triton_target`) the inference channel spreads calls over them one call at
a time (round_robin) and a call that finds its replica gone is retried on
another within the retry budget (`retry_budget.py`) and the caller's
deadline.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import structlog
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, BackendModelConfig, Signature
from forecast_gateway.backends.retry_budget import RetryBudget
from forecast_gateway.backends.triton_errors import convert_error, gateway_error, retryable
from forecast_gateway.backends.triton_repository import merge_states, model_config_from
from forecast_gateway.backends.triton_tensors import OutputError, forecast_output, infer_request
from forecast_gateway.errors import GatewayError, Internal, Unavailable
from forecast_gateway.triton_target import parse_target

log = structlog.get_logger(__name__)

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
        self.version_reasons: dict[tuple[str, str], str] = {}
        """(model, version) -> Triton's reason it is not ready, at the last refresh."""

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
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> npt.NDArray[np.float32]:
        """Run `model` `version` on windows (rows x window), answered in `Signature`'s layout."""
        request = infer_request(model, version, windows, horizon, timeout_s, signature, season)
        response = await self._call_with_retries(request, timeout_s, model, version)
        try:
            return forecast_output(response, windows.shape[0], horizon, signature)
        except OutputError as error:
            log.error("model_output_invalid", model=model, version=version, error=str(error))
            raise Internal(
                f"model {model!r} version {version} returned an output its contract does not "
                f"declare: {error} (docs/model-contract.md)",
                reason="MODEL_OUTPUT_INVALID",
                metadata={"model": model, "version": version},
            ) from None

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
                status, details = str(error.code()), error.details() or ""
                if (
                    not retryable(status, details, self.target.balanced)
                    or attempt == self.retries
                    or time.monotonic() + backoff >= deadline
                    or not self._spend_retry()
                ):
                    raise convert_error(status, details, model=model, version=version) from error
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
        merged = merge_states(list(indexes.values()))
        self.replicas_ready, self.version_reasons = merged.ready, merged.reasons
        return merged.states

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
        return model_config_from(config)

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
                        raise gateway_error(status, message) from error
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
