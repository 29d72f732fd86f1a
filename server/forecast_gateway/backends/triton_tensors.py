"""The ModelInfer wire format: normalized windows in, forecasts out, as raw tensor bytes.

Built directly on Triton's ModelInfer proto: the request path does no
per-call object juggling beyond one message, and the answer is read from
its raw bytes without a copy.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from tritonclient.grpc import service_pb2

HISTORY_INPUT = "HISTORY"
HORIZON_INPUT = "HORIZON"
FORECAST_OUTPUT = "FORECAST"


def infer_request(
    model: str, version: str, windows: npt.NDArray[np.float32], horizon: int, timeout_s: float
) -> service_pb2.ModelInferRequest:
    """One request of `windows` (rows x window) for `horizon` steps each."""
    rows, window = windows.shape
    return service_pb2.ModelInferRequest(
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


def forecast_output(
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
