"""The Triton proxy: every call the gateway makes to Triton goes through here.

One shared async gRPC channel (`tritonclient.grpc.aio`), a timeout on every
call, and Triton's errors converted into the gateway's own exceptions in one
place. Each forecast is sent as its own request of batch size 1 (or a few
rows): Triton's dynamic batcher, in C++, groups concurrent requests of the
same window into one model execution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import structlog
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from forecast_gateway.errors import DeadlineExceeded, GatewayError, Internal, Unavailable

log = structlog.get_logger(__name__)

HISTORY_INPUT = "HISTORY"
HORIZON_INPUT = "HORIZON"
FORECAST_OUTPUT = "FORECAST"
# Bound on the control-plane calls (catalog refresh, health).
CONTROL_TIMEOUT_S = 2.0


class TritonProxy:
    """Async client for the few Triton calls the gateway needs."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._client = triton_aio.InferenceServerClient(url=url)

    async def close(self) -> None:
        """Close the shared channel."""
        await self._client.close()

    async def forecast(
        self,
        model: str,
        version: str,
        windows: npt.NDArray[np.float32],
        horizon: int,
        timeout_s: float,
    ) -> npt.NDArray[np.float32]:
        """Run `model` `version` on normalized windows (rows x window); return rows x horizon."""
        rows = windows.shape[0]
        history = InferInput(HISTORY_INPUT, list(windows.shape), "FP32")
        history.set_data_from_numpy(windows)
        horizons = InferInput(HORIZON_INPUT, [rows, 1], "INT32")
        horizons.set_data_from_numpy(np.full((rows, 1), horizon, dtype=np.int32))
        try:
            result = await self._client.infer(
                model_name=model,
                model_version=version,
                inputs=[history, horizons],
                outputs=[InferRequestedOutput(FORECAST_OUTPUT)],
                client_timeout=timeout_s,
            )
        except InferenceServerException as error:
            raise convert_error(error, model=model, version=version) from error
        output = result.as_numpy(FORECAST_OUTPUT)
        if output is None or output.shape != (rows, horizon):
            shape = None if output is None else output.shape
            raise Internal(
                "the model returned an unexpected output",
                reason="MODEL_OUTPUT_INVALID",
                metadata={"model": model, "version": version, "shape": str(shape)},
            )
        return np.asarray(output, dtype=np.float32)

    async def is_ready(self) -> bool:
        """Whether Triton answers and reports itself ready."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=CONTROL_TIMEOUT_S))
        except InferenceServerException:
            return False

    async def version_states(self) -> dict[str, dict[str, str]]:
        """Per model, per version: Triton's state string (READY, LOADING, UNAVAILABLE...)."""
        index = await self._control(
            self._client.get_model_repository_index(as_json=True, client_timeout=CONTROL_TIMEOUT_S)
        )
        states: dict[str, dict[str, str]] = {}
        for entry in index.get("models", []):
            if entry.get("version"):
                states.setdefault(entry["name"], {})[entry["version"]] = entry.get("state", "")
        return states

    async def model_parameters(self, model: str) -> dict[str, str]:
        """A model's config.pbtxt `parameters` as plain strings."""
        config = await self._control(
            self._client.get_model_config(model, as_json=True, client_timeout=CONTROL_TIMEOUT_S)
        )
        raw: Mapping[str, Any] = config.get("config", {}).get("parameters", {})
        return {key: str(value.get("string_value", "")) for key, value in raw.items()}

    @staticmethod
    async def _control(call: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await call
        except InferenceServerException as error:
            raise convert_error(error) from error
        return result


def convert_error(error: InferenceServerException, **context: str) -> GatewayError:
    """Map a Triton client error to the gateway's exception (the only place that does)."""
    status = str(error.status() or "")
    message = str(error.message() or "")
    log.warning("triton_error", triton_status=status, triton_message=message, **context)
    if status.endswith("DEADLINE_EXCEEDED"):
        return DeadlineExceeded("the deadline passed while Triton was computing the forecast")
    if status.endswith("UNAVAILABLE"):
        return Unavailable("Triton is unreachable; retry later", reason="TRITON_UNAVAILABLE")
    if status.endswith("NOT_FOUND") or "unknown model" in message or "not ready" in message:
        return Unavailable(
            "the model version is not loaded in Triton right now; retry later",
            reason="VERSION_UNAVAILABLE",
            metadata=dict(context),
        )
    if status.endswith("RESOURCE_EXHAUSTED"):
        return Unavailable("Triton is overloaded; retry later", reason="TRITON_OVERLOADED")
    return Internal("Triton failed to compute the forecast", reason="TRITON_ERROR")
