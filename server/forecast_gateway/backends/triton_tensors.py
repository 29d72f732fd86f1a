"""The ModelInfer wire format: windows in, forecasts out, as raw tensor bytes.

Built directly on Triton's ModelInfer proto: the request path does no
per-call object juggling beyond one message, and the answer is read from
its raw bytes without a copy. Tensor names and the output layout are the
version's `Signature` (its declared contract).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

from forecast_gateway.backends.base import DEFAULT_SIGNATURE, Layout, Signature

_Tensor = service_pb2.ModelInferRequest.InferInputTensor


class OutputError(ValueError):
    """Triton's answer does not have the tensors the contract declares."""


def infer_request(
    model: str,
    version: str,
    windows: npt.NDArray[np.float32],
    horizon: int,
    timeout_s: float,
    signature: Signature = DEFAULT_SIGNATURE,
    season: int = 1,
) -> service_pb2.ModelInferRequest:
    """One request of `windows` (rows x window); the horizon and season inputs if declared."""
    rows, window = windows.shape
    inputs = [_Tensor(name=signature.history, datatype="FP32", shape=[rows, window])]
    contents = [np.ascontiguousarray(windows, dtype=np.float32).tobytes()]
    if signature.horizon is not None:
        inputs.append(_Tensor(name=signature.horizon, datatype="INT32", shape=[rows, 1]))
        contents.append(np.full(rows, horizon, dtype=np.int32).tobytes())
    if signature.season is not None:
        inputs.append(_Tensor(name=signature.season, datatype="INT32", shape=[rows, 1]))
        contents.append(np.full(rows, season, dtype=np.int32).tobytes())
    return service_pb2.ModelInferRequest(
        model_name=model,
        model_version=version,
        inputs=inputs,
        # Triton drops the request if still queued when this passes, where the
        # model's queue policy allows timeout override (the shipped models set
        # no policy; there the gRPC deadline's cancellation does it).
        parameters={"timeout": service_pb2.InferParameter(int64_param=int(timeout_s * 1e6))},
        raw_input_contents=contents,
    )


def forecast_output(
    response: service_pb2.ModelInferResponse,
    rows: int,
    steps: int,
    signature: Signature = DEFAULT_SIGNATURE,
) -> npt.NDArray[np.float32]:
    """The answer in `Signature`'s layout: [rows, steps], or [rows, steps, 1 + levels].

    Raises OutputError naming the tensor that is missing or has the wrong shape.
    """
    point = None
    if signature.point is not None:
        point = _tensor(response, signature.point, [rows, steps])
    if signature.quantiles is None:
        assert point is not None
        return point
    levels = signature.levels
    if signature.layout is Layout.STEP_LEVEL:
        quantiles = _tensor(response, signature.quantiles, [rows, steps, levels])
    else:
        quantiles = _tensor(response, signature.quantiles, [rows, levels, steps]).transpose(0, 2, 1)
    if point is None:
        point = quantiles[:, :, signature.median]
    return np.concatenate([point[:, :, np.newaxis], quantiles], axis=2)


def _tensor(
    response: service_pb2.ModelInferResponse, name: str, shape: list[int]
) -> npt.NDArray[np.float32]:
    """One FP32 output of the expected shape, read from its raw bytes."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name or index >= len(response.raw_output_contents):
            continue
        if tensor.datatype != "FP32" or list(tensor.shape) != shape:
            raise OutputError(
                f"output {name} is {tensor.datatype} {list(tensor.shape)}, expected FP32 {shape}"
            )
        raw = response.raw_output_contents[index]
        if len(raw) != int(np.prod(shape)) * 4:  # also a length frombuffer cannot read
            raise OutputError(f"output {name} has {len(raw)} bytes for shape {shape}")
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)
    raise OutputError(f"no output named {name} (outputs: {[t.name for t in response.outputs]})")
