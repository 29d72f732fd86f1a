"""The plain data a backtest takes and gives: its query, targets, windows and report.

`api.convert_backtest` builds the query from a BacktestRequest and the
BacktestResponse from the report; `runner` does the work in between.
"""

from __future__ import annotations

from dataclasses import dataclass

from forecast_gateway.backtest.comparison import DieboldMariano
from forecast_gateway.backtest.scores import TargetScores
from forecast_gateway.backtest.windows import Layout
from forecast_gateway.core.calibration import Status
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.numerics import NO_LEVELS, FloatArray, Levels


@dataclass(frozen=True)
class Target:
    """One model version under test."""

    model: str
    version: str

    @property
    def label(self) -> str:
        """How responses and verdicts name it: "model:version"."""
        return f"{self.model}:{self.version}"


@dataclass(frozen=True)
class BacktestSeries:
    """One history: its id and its values and time, as a ForecastQuery holds them."""

    id: str
    query: ForecastQuery


@dataclass(frozen=True)
class BacktestQuery:
    """A backtest request as the core sees it (converted from the proto)."""

    model: str
    series: tuple[BacktestSeries, ...]
    layout: Layout
    targets: tuple[Target, ...] = ()
    sequence_length: int = 0
    levels: Levels = NO_LEVELS
    per_window: bool = False


@dataclass(frozen=True)
class Window:
    """One window of one series: where it starts and what it holds out."""

    series: int
    index: int
    origin: int
    actuals: FloatArray
    scale: float
    origin_time: int | None


@dataclass(frozen=True)
class TargetResult:
    """One target's scores, and its intervals' calibration status per coverage."""

    target: Target
    scores: TargetScores
    statuses: tuple[Status, ...]


@dataclass(frozen=True)
class Comparison:
    """Two targets tested on the same windows."""

    a: Target
    b: Target
    mase_a: float
    mase_b: float
    test: DieboldMariano
    verdict: str


@dataclass(frozen=True)
class BacktestReport:
    """What a backtest found (api.convert makes the BacktestResponse of it)."""

    model: str
    layout: Layout
    scale: str
    windows: tuple[Window, ...]
    series_ids: tuple[str, ...]
    results: tuple[TargetResult, ...]
    comparisons: tuple[Comparison, ...]
