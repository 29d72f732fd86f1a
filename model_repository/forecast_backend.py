"""Shared base for the batched forecasters served by Triton's Python backend.

This file sits at the repository root, where Triton does not look for models;
each version's ``model.py`` puts this directory on ``sys.path`` and imports it.

The tensor interface every model implements:

- ``HISTORY`` FP32 ``[B, T]``: windows already z-scored by the gateway, oldest first;
- ``HORIZON`` INT32 ``[B, 1]``: steps to forecast, the same for every row of a request;
- ``FORECAST`` FP32 ``[B, HORIZON]``: the forecast in the same z units.

Everything above the ``BatchForecaster`` class is pure (numpy only) so unit
tests import it without ``triton_python_backend_utils``, which only exists
inside the backend stub and is imported lazily by the methods that need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
Predict = Callable[[FloatArray, int], npt.NDArray[Any]]

INPUT_HISTORY = "HISTORY"
INPUT_HORIZON = "HORIZON"
OUTPUT_FORECAST = "FORECAST"


def resolve_parameter(
    parameters: Mapping[str, str], name: str, version: int | str, default: str | None = None
) -> str | None:
    """Return parameter `name` for model `version`: ``v<version>.<name>`` first, then `name`."""
    specific = f"v{version}.{name}"
    if specific in parameters:
        return parameters[specific]
    return parameters.get(name, default)


def string_parameters(model_config: Mapping[str, Any]) -> dict[str, str]:
    """Flatten a model config's ``parameters`` (``{key: {"string_value": v}}``) to ``{key: v}``."""
    raw = model_config.get("parameters") or {}
    return {key: str(value.get("string_value", "")) for key, value in raw.items()}


@dataclass(frozen=True)
class RequestError:
    """Why one request failed: invalid input (the client's fault) or an internal failure."""

    message: str
    internal: bool = False


@dataclass(frozen=True)
class ForecastLimits:
    """The per-version request limits and description, read once from the config.

    ``sequence_length`` is the default window, ``min_sequence_length`` ..
    ``max_sequence_length`` the windows a request may send.
    """

    description: str
    default_horizon: int
    max_horizon: int
    sequence_length: int
    min_sequence_length: int
    max_sequence_length: int

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str], version: int | str) -> ForecastLimits:
        """Build the limits of `version`; raise ValueError naming a missing or bad parameter.

        The contract's keys (docs/model-contract.md) come first, the legacy
        keys are their defaults, as the gateway reads them: ``forecast.window``
        (``N`` or ``MIN:MAX``; else ``min_sequence_length`` ..
        ``max_sequence_length``, each defaulting to the default window),
        ``forecast.default_window`` (else ``sequence_length``, else the
        window's MAX), ``forecast.max_horizon`` (else ``max_horizon``) and
        ``forecast.default_horizon`` (else ``default_horizon``, else the max
        horizon). Every key may be overridden per version (``v<N>.``).
        """
        read = _ParameterReader(parameters, version)
        max_horizon = read.integer("forecast.max_horizon", "max_horizon")
        default_horizon = read.integer(
            "forecast.default_horizon", "default_horizon", fallback=max_horizon
        )
        low, high, default_window = read.window()
        if not 1 <= low <= default_window <= high:
            raise ValueError(
                f"window limits need 1 <= min {low} <= default {default_window} <= max {high} "
                "(forecast.window and forecast.default_window, or min_sequence_length, "
                "sequence_length and max_sequence_length)"
            )
        if not 1 <= default_horizon <= max_horizon:
            raise ValueError(
                f"need 1 <= default_horizon {default_horizon} <= max_horizon {max_horizon}"
            )
        return cls(
            description=read.get("description") or "",
            default_horizon=default_horizon,
            max_horizon=max_horizon,
            sequence_length=default_window,
            min_sequence_length=low,
            max_sequence_length=high,
        )


class _ParameterReader:
    """One version's parameters: ``v<N>.<key>`` first, a contract key before its legacy key."""

    def __init__(self, parameters: Mapping[str, str], version: int | str) -> None:
        self.parameters = parameters
        self.version = version

    def get(self, name: str) -> str | None:
        value = resolve_parameter(self.parameters, name, self.version)
        return None if value is None else value.strip()

    def integer(self, *names: str, fallback: int | None = None) -> int:
        """The first of `names` that is set, as an integer; `fallback` when none is."""
        for name in names:
            value = self.get(name)
            if value is None:
                continue
            try:
                return int(value)
            except ValueError:
                raise ValueError(f"parameter {name!r} must be an integer, got {value!r}") from None
        if fallback is None:
            wanted = " or ".join(repr(name) for name in names)
            raise ValueError(f"model config has no parameter {wanted} (version {self.version})")
        return fallback

    def window(self) -> tuple[int, int, int]:
        """(min, max, default) window: ``forecast.window`` N or MIN:MAX, else the legacy keys."""
        declared = self.get("forecast.window")
        if declared is None:
            default = self.integer("forecast.default_window", "sequence_length")
            low = self.integer("min_sequence_length", fallback=default)
            high = self.integer("max_sequence_length", fallback=default)
            return low, high, default
        low_text, _, high_text = declared.partition(":")
        high_text = high_text or low_text
        if not (low_text.strip().isdigit() and high_text.strip().isdigit()):
            raise ValueError(f"parameter 'forecast.window' must be N or MIN:MAX, got {declared!r}")
        low, high = int(low_text), int(high_text)
        default = self.integer("forecast.default_window", "sequence_length", fallback=high)
        return low, high, default


def validate_request(
    history: np.ndarray, horizon: np.ndarray, limits: ForecastLimits
) -> str | None:
    """Return why a request (HISTORY [B,T], HORIZON [B,1]) is invalid, or None when it is valid."""
    if history.ndim != 2 or history.shape[0] == 0:
        return f"{INPUT_HISTORY} must have shape [batch, length], got {list(history.shape)}"
    length = history.shape[1]
    if not limits.min_sequence_length <= length <= limits.max_sequence_length:
        if limits.min_sequence_length == limits.max_sequence_length:
            allowed = f"exactly {limits.min_sequence_length}"
        else:
            allowed = f"between {limits.min_sequence_length} and {limits.max_sequence_length}"
        return f"{INPUT_HISTORY} has {length} points; this model version needs {allowed}"
    if not np.all(np.isfinite(history)):
        return f"{INPUT_HISTORY} contains NaN or infinite values"
    steps = horizon.reshape(-1)
    if steps.shape[0] != history.shape[0]:
        return f"{INPUT_HORIZON} needs one value per {INPUT_HISTORY} row"
    if np.any(steps != steps[0]):
        return f"all rows of one request must have the same {INPUT_HORIZON}"
    if not 1 <= int(steps[0]) <= limits.max_horizon:
        return f"{INPUT_HORIZON} must be between 1 and {limits.max_horizon}, got {int(steps[0])}"
    return None


def forecast_batch(
    histories: Sequence[np.ndarray],
    horizons: Sequence[np.ndarray],
    limits: ForecastLimits,
    predict: Predict,
) -> list[FloatArray | RequestError]:
    """Validate the requests of one execute call and forecast the valid ones in few passes.

    Valid requests are grouped by window length; each group is stacked into one
    ``[B, T]`` array and `predict` runs once per group with the group's largest
    horizon; each request gets its own rows and horizon back. The result has one
    entry per request, in order: its forecast ``[B_r, horizon]`` or a RequestError.
    """
    results: list[FloatArray | RequestError] = []
    groups: dict[int, list[int]] = {}
    for index, (history, horizon) in enumerate(zip(histories, horizons, strict=True)):
        error = validate_request(history, horizon, limits)
        if error is None:
            groups.setdefault(history.shape[1], []).append(index)
        results.append(RequestError(error or "not run"))
    for members in groups.values():
        steps = [int(horizons[i].reshape(-1)[0]) for i in members]
        outputs = _forecast_group([histories[i] for i in members], steps, predict)
        for i, output in zip(members, outputs, strict=True):
            results[i] = output
    return results


def _forecast_group(
    histories: list[np.ndarray], steps: list[int], predict: Predict
) -> list[FloatArray] | list[RequestError]:
    """Run `predict` once on the stacked histories of equal length; split the rows back."""
    windows = np.concatenate(histories).astype(np.float32, copy=False)
    horizon = max(steps)
    try:
        forecast = np.asarray(predict(windows, horizon), dtype=np.float32)
        if forecast.shape != (windows.shape[0], horizon):
            raise ValueError(f"predict returned shape {forecast.shape} for {windows.shape}")
    except Exception as exc:  # a failed pass answers its own requests, not the others
        failure = RequestError(f"forecast failed: {type(exc).__name__}: {exc}", internal=True)
        return [failure] * len(histories)
    bounds = np.cumsum([0] + [history.shape[0] for history in histories])
    return [
        np.ascontiguousarray(forecast[start:stop, :step])
        for start, stop, step in zip(bounds[:-1], bounds[1:], steps, strict=True)
    ]


def select_device(instance_kind: str, device_id: str | int) -> str:
    """Map Triton's instance kind and device id to a torch device string."""
    return f"cuda:{int(device_id)}" if instance_kind.upper() == "GPU" else "cpu"


class BatchForecaster:
    """Base ``TritonPythonModel``: subclasses implement `setup` and `predict`."""

    model_name: str
    version: int
    parameters: dict[str, str]
    limits: ForecastLimits
    device: str

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.model_name = args["model_name"]
        self.version = int(args["model_version"])
        self.parameters = string_parameters(config)
        self.limits = ForecastLimits.from_parameters(self.parameters, self.version)
        self.device = select_device(
            args.get("model_instance_kind", "CPU"), args.get("model_instance_device_id", "0")
        )
        self.setup(args)

    def parameter(self, name: str, default: str | None = None) -> str | None:
        """Return config parameter `name` as resolved for this version."""
        return resolve_parameter(self.parameters, name, self.version, default)

    def setup(self, args: dict[str, str]) -> None:
        """Load weights or read extra parameters (after the config is parsed)."""

    def predict(self, windows: FloatArray, horizon: int) -> npt.NDArray[Any]:
        """Forecast `horizon` steps for each row of `windows` ``[B, T]``: ``[B, horizon]``."""
        raise NotImplementedError

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        histories = [
            pb_utils.get_input_tensor_by_name(r, INPUT_HISTORY).as_numpy() for r in requests
        ]
        horizons = [
            pb_utils.get_input_tensor_by_name(r, INPUT_HORIZON).as_numpy() for r in requests
        ]
        responses = []
        for result in forecast_batch(histories, horizons, self.limits, self.predict):
            if isinstance(result, RequestError):
                if result.internal:
                    pb_utils.Logger.log_error(
                        f"{self.model_name} v{self.version}: {result.message}"
                    )
                code = (
                    pb_utils.TritonError.INTERNAL
                    if result.internal
                    else pb_utils.TritonError.INVALID_ARG
                )
                error = pb_utils.TritonError(result.message, code)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                output = pb_utils.Tensor(OUTPUT_FORECAST, result)
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses

    def finalize(self) -> None:
        """Nothing to release by default."""
