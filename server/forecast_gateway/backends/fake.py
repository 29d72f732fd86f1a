"""An inference backend in process: the gRPC edge and the hot path without Triton.

Shipped with the gateway (not hidden in tests) so that edge tests, core
tests, a team's own tests and `bench/hotpath.py` share one stand-in that
follows `InferenceBackend` exactly (mypy checks it). Each version forecasts
with a plain function of its normalized window (default: the window's last
value repeated), and tests script what a real Triton can do: versions that
are not ready, errors raised for a version, a delay, or calls held until
the test lets them go (`gate`). Inference and batching are only ever judged
against a real Triton; this fake answers, it does not model.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from forecast_gateway.backends.base import (
    DEFAULT_SIGNATURE,
    VERSION_GONE,
    BackendModelConfig,
    Rows,
    Signature,
)
from forecast_gateway.errors import GatewayError, Unavailable

Forecast = Callable[[Rows, int], Rows]
"""(windows, steps) -> the answer in `Signature`'s layout: rows x steps for a point
model, rows x steps x (1 + levels) for a quantile model."""


def last_value(windows: Rows, horizon: int) -> Rows:
    """Each row's last point, repeated for every step."""
    return np.repeat(windows[:, -1:], horizon, axis=1).astype(np.float32)


@dataclass
class FakeModel:
    """One model as the fake serves it."""

    parameters: dict[str, str]
    states: dict[str, str]
    """version -> state (READY, LOADING, UNAVAILABLE)."""
    max_batch_size: int = 256
    forecasts: dict[str, Forecast] = field(default_factory=dict)
    """version -> its forecast function (default `last_value`)."""


@dataclass
class FakeCall:
    """One forecast call the fake received."""

    model: str
    version: str
    rows: int
    window: int
    horizon: int
    season: int = 1
    windows: Rows | None = None
    """The rows as sent (z-scored or raw, as the version's contract says)."""


class FakeBackend:
    """`InferenceBackend` in process; `calls` records every forecast it answered or refused."""

    def __init__(self, models: Mapping[str, FakeModel], *, delay_s: float = 0.0) -> None:
        self.models = dict(models)
        self.delay_s = delay_s
        self.up = True
        """False: every call raises Unavailable, as an unreachable Triton does."""
        self.errors: dict[tuple[str, str], GatewayError] = {}
        """(model, version) -> the error its forecasts raise."""
        self.gate: asyncio.Event | None = None
        """When set to an Event, every forecast waits for it (after `delay_s`): calls held
        at the backend until the test sets it, without timing."""
        self.calls: list[FakeCall] = []
        self.closed = False
        self.version_reasons: dict[tuple[str, str], str] = {}
        """(model, version) -> why it is not ready, as a test scripts it."""

    @property
    def replicas_ready(self) -> Mapping[tuple[str, str], int]:
        """One replica per READY version."""
        return {
            (name, version): 1
            for name, model in self.models.items()
            for version, state in model.states.items()
            if state == "READY"
        }

    async def forecast(
        self,
        model: str,
        version: str,
        windows: Rows,
        horizon: int,
        timeout_s: float,
        signature: Signature = DEFAULT_SIGNATURE,
        season: int = 1,
    ) -> Rows:
        """After `delay_s` and `gate`: the scripted error, else the version's function."""
        self._check_up()
        self.calls.append(
            FakeCall(model, version, windows.shape[0], windows.shape[1], horizon, season, windows)
        )
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.gate is not None:
            await self.gate.wait()
        error = self.errors.get((model, version))
        if error is not None:
            raise error
        served = self.models.get(model)
        if served is None or served.states.get(version) != "READY":
            raise Unavailable(
                "the model version is not loaded in Triton right now; retry later",
                reason=VERSION_GONE,
                metadata={"model": model, "version": version},
            )
        function = served.forecasts.get(version, last_value)
        return np.asarray(function(windows, horizon), dtype=np.float32)

    async def is_ready(self) -> bool:
        """`up`."""
        return self.up

    async def version_states(self) -> dict[str, dict[str, str]]:
        """Every model's versions and states."""
        self._check_up()
        return {name: dict(model.states) for name, model in self.models.items()}

    async def model_config(self, model: str) -> BackendModelConfig:
        """The model's parameters and max_batch_size."""
        self._check_up()
        served = self.models[model]
        return BackendModelConfig(dict(served.parameters), served.max_batch_size)

    async def close(self) -> None:
        """Nothing to release."""
        self.closed = True

    def _check_up(self) -> None:
        if not self.up:
            raise Unavailable("Triton is unreachable; retry later", reason="TRITON_UNAVAILABLE")
