"""What the forecasting core needs from an inference backend, and nothing more.

`core/execute.py` sends normalized windows through `forecast`; the catalog
reads versions and parameters through the control calls. `triton.TritonProxy`
implements it against a real Triton; `fake.FakeBackend` in process. A
backend raises the gateway's own errors (`errors.py`), never its client
library's: a version it does not serve now is `Unavailable` with reason
`VERSION_GONE`, which the core re-routes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.float32]
"""Rows of a tensor sent to or read from a model: [rows, points]."""

VERSION_GONE = "VERSION_UNAVAILABLE"
"""The reason of the Unavailable a backend raises for a version it does not serve now."""


class Layout(enum.Enum):
    """How a model lays out its quantile output."""

    STEP_LEVEL = "step_level"
    """[rows, steps, levels]"""
    LEVEL_STEP = "level_step"
    """[rows, levels, steps]"""


@dataclass(frozen=True)
class Signature:
    """The tensors of one model version, as its contract declares them (docs/model-contract.md).

    A backend answers in one layout whatever the model's: `[rows, steps]`
    for a point model, `[rows, steps, 1 + levels]` for a quantile model
    (the point forecast first, then each level, lowest first).
    """

    history: str = "HISTORY"
    horizon: str | None = "HORIZON"
    """None: the model takes no horizon input."""
    season: str | None = None
    """The season-length input (INT32 [rows, 1]), if the model takes one."""
    point: str | None = "FORECAST"
    """None: a quantile model whose point forecast is its `median` level."""
    quantiles: str | None = None
    levels: int = 0
    median: int = -1
    layout: Layout = Layout.STEP_LEVEL
    fixed_steps: int = 0
    """0: the model forecasts the horizon it is sent; else it always outputs this many steps."""

    def steps(self, horizon: int) -> int:
        """The steps the model outputs for a request of `horizon`."""
        return self.fixed_steps or horizon


DEFAULT_SIGNATURE = Signature()
"""HISTORY and HORIZON in, FORECAST out: the models written before the contract."""


@dataclass(frozen=True)
class BackendModelConfig:
    """A model's string parameters and the largest batch it accepts (0: no batching)."""

    parameters: dict[str, str]
    max_batch_size: int


class InferenceBackend(Protocol):
    """The inference calls of the gateway (Triton's, or the in-process fake's)."""

    @property
    def replicas_ready(self) -> Mapping[tuple[str, str], int]:
        """(model, version) -> how many replicas reported it READY at the last refresh."""
        ...

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
        """Run `model` `version` on windows (rows x window) in the layout `Signature` names.

        `horizon` is the number of steps the model outputs
        (`signature.steps(...)`); `season` is sent if the model takes it.
        """
        ...

    async def is_ready(self) -> bool:
        """Whether the backend answers and serves."""
        ...

    async def version_states(self) -> dict[str, dict[str, str]]:
        """Per model, per version: its state (READY, LOADING, UNAVAILABLE...)."""
        ...

    @property
    def version_reasons(self) -> Mapping[tuple[str, str], str]:
        """(model, version) -> why it is not ready, as the last `version_states` reported."""
        ...

    async def model_config(self, model: str) -> BackendModelConfig:
        """The parameters and batch size a model declares."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
