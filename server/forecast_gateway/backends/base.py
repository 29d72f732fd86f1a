"""What the forecasting core needs from an inference backend, and nothing more.

`core/execute.py` sends normalized windows through `forecast`; the catalog
reads versions and parameters through the control calls. `triton.TritonProxy`
implements it against a real Triton; `fake.FakeBackend` in process. A
backend raises the gateway's own errors (`errors.py`), never its client
library's: a version it does not serve now is `Unavailable` with reason
`VERSION_GONE`, which the core re-routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

Rows = npt.NDArray[np.float32]
"""Rows of a tensor sent to or read from a model: [rows, points]."""

VERSION_GONE = "VERSION_UNAVAILABLE"
"""The reason of the Unavailable a backend raises for a version it does not serve now."""


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
        self, model: str, version: str, windows: Rows, horizon: int, timeout_s: float
    ) -> Rows:
        """Run `model` `version` on normalized windows (rows x window); rows x horizon back."""
        ...

    async def is_ready(self) -> bool:
        """Whether the backend answers and serves."""
        ...

    async def version_states(self) -> dict[str, dict[str, str]]:
        """Per model, per version: its state (READY, LOADING, UNAVAILABLE...)."""
        ...

    async def model_config(self, model: str) -> BackendModelConfig:
        """The parameters and batch size a model declares."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
