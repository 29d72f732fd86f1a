"""seasonal_naive version 1: each forecast step repeats the value one season before.

Self-contained: numpy and triton_python_backend_utils only, no shared module
and no ``sys.path`` change. The tensors (forecast contract 1, normalization
``none``):

- ``HISTORY`` FP32 ``[B, T]``: raw values, oldest first;
- ``HORIZON`` INT32 ``[B, 1]``: steps to forecast, the same in every row of a request;
- ``SEASON`` INT32 ``[B, 1]``: each row's season in points (at least 1);
- ``FORECAST`` FP32 ``[B, HORIZON]``: step h is ``y[T - m + ((h - 1) mod m)]``;
  a row whose window is shorter than its season m is forecast naively (m = 1,
  the last value).

Everything above ``TritonPythonModel`` is pure numpy, so unit tests import
this file without the backend stub; ``triton_python_backend_utils`` is
imported where a response is built.
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

import numpy as np

HISTORY = "HISTORY"
HORIZON = "HORIZON"
SEASON = "SEASON"
FORECAST = "FORECAST"


def seasonal_naive(windows: np.ndarray, horizon: int, seasons: np.ndarray) -> np.ndarray:
    """Forecast `horizon` steps for each row of `windows` ``[B, T]``: ``[B, horizon]`` FP32.

    `seasons` holds each row's season m (``[B]`` or ``[B, 1]``, every m >= 1).
    Step h (1-based) is the value one season before it, ``y[T - m + ((h - 1)
    mod m)]``: the last season repeated. A row with ``m > T`` uses m = 1.
    """
    windows = np.asarray(windows)
    length = windows.shape[1]
    m = np.asarray(seasons, dtype=np.int64).reshape(-1)
    m = np.where(m <= length, m, 1)
    steps = np.arange(horizon, dtype=np.int64)
    index = length - m[:, None] + steps[None, :] % m[:, None]
    return np.take_along_axis(windows, index, axis=1).astype(np.float32, copy=False)


class Limits(NamedTuple):
    """What a request may send this version, read from its config once."""

    min_window: int
    max_window: int
    max_horizon: int

    @classmethod
    def from_config(cls, config: dict[str, Any], version: int | str) -> Limits:
        """Read ``forecast.window`` (N or MIN:MAX) and ``forecast.max_horizon``.

        A key prefixed ``v<version>.`` beats the model-wide one. Raises
        ValueError naming the key that is missing or malformed.
        """
        parameters = {
            key: str(value.get("string_value", ""))
            for key, value in (config.get("parameters") or {}).items()
        }

        def parameter(name: str) -> str:
            value = parameters.get(f"v{version}.{name}", parameters.get(name))
            if value is None:
                raise ValueError(f"model config has no parameter {name!r} (version {version})")
            return value

        window = parameter("forecast.window")
        low, _, high = window.partition(":")
        high = high or low
        horizon = parameter("forecast.max_horizon")
        if not (low.isdigit() and high.isdigit() and horizon.isdigit()):
            raise ValueError(
                f"need forecast.window N or MIN:MAX and an integer forecast.max_horizon, "
                f"got {window!r} and {horizon!r}"
            )
        limits = cls(int(low), int(high), int(horizon))
        if not 1 <= limits.min_window <= limits.max_window or limits.max_horizon < 1:
            raise ValueError(f"need 1 <= window min <= max and max_horizon >= 1, got {limits}")
        return limits


def validate(
    history: np.ndarray, horizon: np.ndarray, season: np.ndarray, limits: Limits
) -> str | None:
    """Why one request is invalid, or None when it is valid."""
    if history.ndim != 2 or history.shape[0] == 0:
        return f"{HISTORY} must have shape [batch, length], got {list(history.shape)}"
    rows, length = history.shape
    if not limits.min_window <= length <= limits.max_window:
        return (
            f"{HISTORY} has {length} points; this model version needs between "
            f"{limits.min_window} and {limits.max_window}"
        )
    if not np.all(np.isfinite(history)):
        return f"{HISTORY} contains NaN or infinite values"
    steps, seasons = horizon.reshape(-1), season.reshape(-1)
    if steps.shape[0] != rows or seasons.shape[0] != rows:
        return f"{HORIZON} and {SEASON} need one value per {HISTORY} row"
    if np.any(steps != steps[0]):
        return f"all rows of one request must have the same {HORIZON}"
    if not 1 <= int(steps[0]) <= limits.max_horizon:
        return f"{HORIZON} must be between 1 and {limits.max_horizon}, got {int(steps[0])}"
    if np.any(seasons < 1):
        return f"{SEASON} must be at least 1, got {int(seasons.min())}"
    return None


def forecast_requests(
    histories: list[np.ndarray],
    horizons: list[np.ndarray],
    seasons: list[np.ndarray],
    limits: Limits,
) -> list[np.ndarray | str]:
    """One entry per request, in order: its forecast ``[B_r, horizon]`` or why it is invalid.

    The valid requests are grouped by window length; each group is stacked
    and forecast in one call with its largest horizon, then split back.
    """
    results: list[np.ndarray | str] = []
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(zip(histories, horizons, seasons, strict=True)):
        error = validate(*request, limits)
        results.append(error or "")
        if error is None:
            groups.setdefault(histories[index].shape[1], []).append(index)
    for members in groups.values():
        windows = np.concatenate([histories[i] for i in members])
        steps = [int(horizons[i].reshape(-1)[0]) for i in members]
        forecast = seasonal_naive(
            windows, max(steps), np.concatenate([seasons[i].reshape(-1) for i in members])
        )
        bounds = np.cumsum([0] + [histories[i].shape[0] for i in members])
        for i, start, stop, step in zip(members, bounds[:-1], bounds[1:], steps, strict=True):
            results[i] = np.ascontiguousarray(forecast[start:stop, :step])
    return results


class TritonPythonModel:
    """The Triton Python-backend model: parse the limits once, forecast each batch in one pass."""

    def initialize(self, args: dict[str, str]) -> None:
        self.name = args["model_name"]
        self.version = args["model_version"]
        self.limits = Limits.from_config(json.loads(args["model_config"]), self.version)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        def tensor(request: Any, name: str) -> np.ndarray:
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        results = forecast_requests(
            [tensor(r, HISTORY) for r in requests],
            [tensor(r, HORIZON) for r in requests],
            [tensor(r, SEASON) for r in requests],
            self.limits,
        )
        responses = []
        for result in results:
            if isinstance(result, str):
                error = pb_utils.TritonError(result, pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
            else:
                output = pb_utils.Tensor(FORECAST, result)
                responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses

    def finalize(self) -> None:
        """Nothing to release."""
