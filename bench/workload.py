"""The benchmark's workload: the same series for every path, in each path's own format.

The main workload is the original system's: ``lstm_timeseries`` version 1
(window 10), each request a 10-point history and a 5-step horizon. The gateway
and the baseline get the raw history; the direct Triton client gets the
window already z-scored by the gateway's own normalization, so the direct
path is exactly the tensor the gateway would send.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from forecast_gateway.core.normalization import normalize

MODEL = "lstm_timeseries"
VERSION = "1"
WINDOW = 10
HORIZON = 5
POOL_SIZE = 512
FREQUENCY = "W-SAT"
"""lstm_timeseries is declared weekly ("W"): the weekly co2 series, dated on Saturdays."""
INTERVAL_COVERAGES = (0.8, 0.95)
"""What the interval cell asks for on every call (the gateway's calibrated intervals)."""


@dataclass(frozen=True)
class Workload:
    """A pool of series, cycled through by the load generator."""

    model: str = MODEL
    version: str = VERSION
    window: int = WINDOW
    horizon: int = HORIZON
    pool_size: int = POOL_SIZE
    frequency: str = FREQUENCY
    """The time cells' frequency: one the model is declared for (`forecast.frequencies`)."""

    def histories(self) -> npt.NDArray[np.float64]:
        """Deterministic co2-like series (level, trend, yearly cycle, noise): pool x window."""
        rng = np.random.default_rng(0)
        steps = np.arange(self.window, dtype=np.float64)
        level = rng.uniform(300.0, 420.0, size=(self.pool_size, 1))
        trend = rng.uniform(0.01, 0.05, size=(self.pool_size, 1)) * steps
        phase = rng.uniform(0.0, 2 * np.pi, size=(self.pool_size, 1))
        season = 3.0 * np.sin(2 * np.pi * steps / 52.0 + phase)
        noise = rng.normal(0.0, 0.3, size=(self.pool_size, self.window))
        histories: npt.NDArray[np.float64] = level + trend + season + noise
        return histories

    def normalized(self) -> npt.NDArray[np.float32]:
        """The windows as the gateway sends them to Triton (z-scored float32): pool x window."""
        z, _ = normalize(self.histories())
        return z
