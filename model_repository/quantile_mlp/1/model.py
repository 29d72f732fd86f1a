"""quantile_mlp version 1: an exported ONNX forecaster run by onnxruntime in the Python backend.

Self-contained on purpose (numpy, onnxruntime and triton_python_backend_utils
only): copy this directory, put your own ``model.onnx`` next to this file and
declare its tensors in config.pbtxt. The graph takes ``HISTORY`` FP32
``[rows, window]`` in the series' own units and returns ``FORECAST`` FP32
``[rows, horizon]`` and ``QUANTILES`` FP32 ``[rows, horizon, levels]``; the
names and sizes are read from config.pbtxt and checked against the graph at
load. ``execute`` stacks every valid request of a batch into one run; an
invalid request gets its own error and the others are answered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


def _parameter(config: dict[str, Any], name: str, default: str) -> str:
    value = (config.get("parameters") or {}).get(name, {}).get("string_value")
    return str(value) if value else default


def _providers(args: dict[str, str]) -> list[Any]:
    """CUDA on a GPU instance (its own device), else CPU; CPU stays as the fallback."""
    if args.get("model_instance_kind", "CPU").upper() == "GPU":
        device = int(args.get("model_instance_device_id", "0") or "0")
        return [("CUDAExecutionProvider", {"device_id": device}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class TritonPythonModel:
    """Runs ``<version>/model.onnx`` once per batch of requests."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        (history,) = config["input"]
        self.input_name = history["name"]
        self.window = int(history["dims"][-1])
        self.outputs = [(o["name"], [int(d) for d in o["dims"]]) for o in config["output"]]
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(_parameter(config, "onnx_intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        self.session = ort.InferenceSession(str(path), options, providers=_providers(args))
        self._check_graph(path)
        wanted = _providers(args)[0]
        if isinstance(wanted, tuple) and wanted[0] not in self.session.get_providers():
            pb_utils.Logger.log_warn(
                f"{args['model_name']}: CUDAExecutionProvider unavailable "
                f"(onnxruntime has {ort.get_available_providers()}); running on CPU"
            )

    def _check_graph(self, path: Path) -> None:
        """Fail the load when the graph's tensors are not the ones config.pbtxt declares."""
        inputs = {i.name: i.shape for i in self.session.get_inputs()}
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        if inputs.get(self.input_name, [None, None])[1:] != [self.window]:
            raise ValueError(
                f"{path}: input {self.input_name} is {inputs}, config says [rows, {self.window}]"
            )
        for name, dims in self.outputs:
            if name not in outputs or list(outputs[name][1:]) != dims:
                raise ValueError(
                    f"{path}: output {name} is {outputs.get(name)}, config says "
                    f"[rows, {', '.join(map(str, dims))}]"
                )

    def _invalid(self, history: np.ndarray) -> str | None:
        """Why one request's history cannot be forecast, or None."""
        if history.ndim != 2 or history.shape[0] == 0 or history.shape[1] != self.window:
            return (
                f"{self.input_name} must have shape [rows, {self.window}], "
                f"got {list(history.shape)}"
            )
        if not np.all(np.isfinite(history)):
            return f"{self.input_name} contains NaN or infinite values"
        return None

    def execute(self, requests: list[Any]) -> list[Any]:
        histories = [
            pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests
        ]
        errors = [self._invalid(h) for h in histories]
        valid = [i for i, error in enumerate(errors) if error is None]
        results: dict[int, list[np.ndarray]] = {}
        failure = None
        if valid:
            stacked = np.concatenate([histories[i] for i in valid]).astype(np.float32)
            try:
                names = [name for name, _ in self.outputs]
                arrays = self.session.run(names, {self.input_name: stacked})
            except Exception as exc:  # a failed run answers its own requests, not invalid ones
                failure = f"forecast failed: {type(exc).__name__}: {exc}"
                pb_utils.Logger.log_error(failure)
            else:
                bounds = np.cumsum([0] + [histories[i].shape[0] for i in valid])
                for i, start, stop in zip(valid, bounds[:-1], bounds[1:], strict=True):
                    results[i] = [np.ascontiguousarray(a[start:stop]) for a in arrays]
        responses = []
        for index, error in enumerate(errors):
            if index in results:
                tensors = [
                    pb_utils.Tensor(name, array)
                    for (name, _), array in zip(self.outputs, results[index], strict=True)
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
                continue
            code = pb_utils.TritonError.INVALID_ARG if error else pb_utils.TritonError.INTERNAL
            message = error or failure or "not run"
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(message, code)
                )
            )
        return responses

    def finalize(self) -> None:
        """Release the session."""
        self.session = None
