"""Scoring one backtest target (one model version) over its rolling-origin windows.

Pure functions (numpy only), unit-tested without I/O. The definitions are the
field's (Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*,
3rd ed., ch. 5.8-5.9) and the live A/B scoring's (`ab.scoring`,
`ab.aggregates`), so a backtest and an experiment report read the same:

- MAE, RMSE and sMAPE (percent, 0-200, a step where forecast and actual are
  both 0 counting as 0, as `ab.scoring.score`) pooled over every scored
  (window, step) cell.
- MASE: each window's MAE over that window's own in-sample scale (the MAE of
  the seasonal naive on the history before its origin, `seasonal_naive_scale`),
  averaged over the windows. Each origin has its own history, hence its own
  scale, so the ratio is taken per window, not of pooled means.
- Intervals: observed coverage and the Winkler (interval) score, the width
  plus 2 / alpha times how far the actual fell outside, alpha = 1 - coverage.
- Quantiles: the pinball loss max(tau (y - q), (tau - 1) (y - q)); FPP3's
  "quantile score" is twice this (the house uses the loss itself, as the
  A/B report and sklearn's `mean_pinball_loss`).

Which cells count, and undefined values (NaN, never a made-up number):

- A (window, step) cell with a NaN actual (a missing held-out point) is
  skipped everywhere. Point forecasts are taken as given: a NaN forecast at
  a scored cell makes every mean it enters NaN, a model failure is not hidden.
- Interval and quantile cells count where the actual and the bounds (the
  quantile) are finite, as the A/B aggregates score them.
- A window's scale is defined when it is finite and positive; a window with
  an undefined scale or no scored cell has no MASE (its `window_losses` entry
  is NaN, so a comparison drops it) and is left out of the MASE mean (NaN
  when no window is left). MAE and sMAPE still count its cells.
- A mean over no cell (a step missing in every window, no windows): NaN.
- A value that overflows (actuals near the float limit): NaN, not inf.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from forecast_gateway.numerics import CONSTANT_RELATIVE_STD, FloatArray

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class TargetWindows:
    """One target's forecasts on every backtest window, with the held-out actuals.

    `actuals` and `point` are [windows, horizon]; `scales` is [windows], each
    window's in-sample scale (0 or NaN: undefined); `intervals` maps a
    nominal coverage (0.8) to its (lower, upper) bounds and `quantiles` a
    level (0.1) to its values, each [windows, horizon].
    """

    actuals: FloatArray
    point: FloatArray
    scales: FloatArray
    intervals: dict[float, tuple[FloatArray, FloatArray]] = field(default_factory=dict)
    quantiles: dict[float, FloatArray] = field(default_factory=dict)


@dataclass(frozen=True)
class IntervalScore:
    """Coverage and Winkler score of one nominal coverage, overall and per horizon step.

    `observed` is the fraction of scored cells with lower <= actual <= upper;
    `winkler` is in the units of the series.
    """

    coverage: float
    observed: float
    winkler: float
    per_step_observed: tuple[float, ...]
    per_step_winkler: tuple[float, ...]


@dataclass(frozen=True)
class QuantileScore:
    """Mean pinball loss of one quantile level (series units), overall and per step."""

    level: float
    pinball: float
    per_step: tuple[float, ...]


@dataclass(frozen=True)
class StepScore:
    """Errors at one horizon step (1-based) over the windows; MASE as the mean of |e| / scale."""

    step: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class WindowScore:
    """Errors of one window (its index on the windows axis); MASE is its MAE over its scale."""

    window: int
    mae: float
    smape: float
    mase: float


@dataclass(frozen=True)
class TargetScores:
    """Everything a backtest reports about one target; see the module for the definitions."""

    windows: int
    mae: float
    smape: float
    mase: float
    rmse: float
    per_step: tuple[StepScore, ...]
    per_window: tuple[WindowScore, ...]
    intervals: tuple[IntervalScore, ...]
    quantiles: tuple[QuantileScore, ...]


@dataclass(frozen=True)
class _Cells:
    """The validated arrays of a `TargetWindows` and which of their cells count."""

    actuals: FloatArray
    point: FloatArray
    errors: FloatArray  # |point - actual|, 0 where not scored
    scored: BoolArray  # finite actual
    scales: FloatArray
    scaled: BoolArray  # the window's scale is defined

    @classmethod
    def of(cls, windows: TargetWindows) -> _Cells:
        actuals = _matrix(windows.actuals, "actuals")
        point = _matrix(windows.point, "point", actuals.shape)
        scales = np.asarray(windows.scales, dtype=np.float64)
        if scales.shape != actuals.shape[:1]:
            raise ValueError(f"scales has shape {scales.shape}, expected ({actuals.shape[0]},)")
        scored = np.isfinite(actuals)
        with np.errstate(over="ignore", invalid="ignore"):
            errors = np.where(scored, np.abs(point - actuals), 0.0)
            scaled = np.isfinite(scales) & (scales > 0)
        return cls(actuals, point, errors, scored, scales, scaled)

    @property
    def divisors(self) -> FloatArray:
        """Each window's scale where defined, else 1 (its scaled errors are masked out)."""
        divisors: FloatArray = np.where(self.scaled, self.scales, 1.0)
        return divisors


def score_target(windows: TargetWindows) -> TargetScores:
    """Score one target's forecasts on all its windows (see the module for the rules)."""
    cells = _Cells.of(windows)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ratios = _smape_ratios(cells)
        window_mae = _mean(cells.errors, cells.scored, axis=1)
        window_mase = _window_mase(window_mae, cells)
        scaled_errors = cells.errors / cells.divisors[:, np.newaxis]
        step_mask = cells.scored & cells.scaled[:, np.newaxis]
        per_step = tuple(
            StepScore(step + 1, *values)
            for step, values in enumerate(
                zip(
                    _floats(_mean(cells.errors, cells.scored, axis=0)),
                    _floats(100.0 * _mean(ratios, cells.scored, axis=0)),
                    _floats(_mean(scaled_errors, step_mask, axis=0)),
                    strict=True,
                )
            )
        )
        per_window = tuple(
            WindowScore(window, *values)
            for window, values in enumerate(
                zip(
                    _floats(window_mae),
                    _floats(100.0 * _mean(ratios, cells.scored, axis=1)),
                    _floats(window_mase),
                    strict=True,
                )
            )
        )
        # A window with a scale and a scored cell has a MASE: NaN if its forecast is.
        defined = cells.scaled & cells.scored.any(axis=1)
        return TargetScores(
            windows=cells.actuals.shape[0],
            mae=_finite(_mean(cells.errors, cells.scored)),
            smape=_finite(100.0 * _mean(ratios, cells.scored)),
            mase=_finite(_mean(window_mase, defined)),
            rmse=_rmse(cells),
            per_step=per_step,
            per_window=per_window,
            intervals=tuple(
                _interval_score(coverage, bounds, cells)
                for coverage, bounds in windows.intervals.items()
            ),
            quantiles=tuple(
                _quantile_score(level, values, cells) for level, values in windows.quantiles.items()
            ),
        )


def window_losses(windows: TargetWindows) -> FloatArray:
    """Each window's scaled absolute error (window MAE / scale; [windows]): what comparisons test.

    NaN for a window whose scale is undefined (0 or NaN) or that has no
    scored cell, and where the MAE is NaN (a NaN forecast) or overflows; the
    comparison then drops the pair. Falling back to the unscaled MAE would mix
    series units with scale-free ratios in one test, and a floor on the scale
    would let one flat history dominate it.
    """
    cells = _Cells.of(windows)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return _window_mase(_mean(cells.errors, cells.scored, axis=1), cells)


def seasonal_naive_scale(history: npt.ArrayLike, season: int) -> float:
    """In-sample MAE of the seasonal naive (lag `season`; 1 = naive): mean |x[t] - x[t-season]|.

    A history of at most `season` points has no seasonal difference, so it
    falls back to season 1 (the naive scale, as `numerics.naive_scale`) rather
    than leaving the window without a scale. 0.0 (undefined) for a history of
    fewer than 2 points, one with a NaN, or one that is constant within
    `numerics.CONSTANT_RELATIVE_STD` (the tolerance of `naive_scale`: rounding
    noise in a flat series must not become a tiny scale and a huge MASE).
    With `season` 1 the result is exactly `naive_scale`'s.
    """
    if isinstance(season, bool) or not isinstance(season, int | np.integer) or season < 1:
        raise ValueError(f"season must be a positive integer, got {season!r}")
    points = np.asarray(history, dtype=np.float64).ravel()
    width = points.size
    lag = int(season) if width > season else 1
    if width < 2:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        steps = np.abs(np.subtract(points[lag:], points[:-lag]))
        total = float(np.add.reduce(steps))
        magnitude = float(np.add.reduce(np.abs(points)))
    scale = total / (width - lag)
    floor = CONSTANT_RELATIVE_STD * max(1.0, magnitude / width)
    return scale if floor < scale < math.inf else 0.0  # NaN fails both


def _matrix(values: npt.ArrayLike, name: str, shape: tuple[int, ...] | None = None) -> FloatArray:
    """`values` as a float64 [windows, horizon] array (of `shape` when given), else ValueError."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be [windows, horizon], got shape {array.shape}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} has shape {array.shape}, expected {shape}")
    return array


def _mean(values: FloatArray, mask: BoolArray, axis: int | None = None) -> FloatArray:
    """The mean of `values` where `mask` (NaN where nothing is), along `axis` or over all.

    `values` must hold only what counts where `mask` is true; what it holds
    elsewhere is ignored (a NaN there does not leak into the mean).
    """
    totals = np.sum(np.where(mask, values, 0.0), axis=axis)
    counts = np.sum(mask, axis=axis)
    result: FloatArray = np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)
    return result


def _smape_ratios(cells: _Cells) -> FloatArray:
    """2 |f - a| / (|f| + |a|) per cell, 0 where both are 0 (or the cell is not scored)."""
    denominator = np.where(cells.scored, np.abs(cells.point) + np.abs(cells.actuals), 0.0)
    ratios: FloatArray = np.divide(
        2.0 * cells.errors,
        denominator,
        out=np.zeros_like(cells.errors),
        where=denominator > 0,
    )
    # A NaN forecast has a NaN denominator, which `where` skips: keep it NaN.
    ratios[np.isnan(denominator)] = np.nan
    return ratios


def _window_mase(window_mae: FloatArray, cells: _Cells) -> FloatArray:
    """Each window's MAE over its scale; NaN where the scale is undefined or it overflows."""
    ratio = window_mae / cells.divisors
    result: FloatArray = np.where(cells.scaled & np.isfinite(ratio), ratio, np.nan)
    return result


def _rmse(cells: _Cells) -> float:
    """The root mean squared error, scaled by the largest error so the squares do not overflow."""
    count = int(cells.scored.sum())
    if count == 0:
        return math.nan
    largest = float(np.max(cells.errors))  # NaN if any error is
    if not 0.0 < largest < math.inf:
        return 0.0 if largest == 0.0 else math.nan
    relative = cells.errors / largest
    return _finite(largest * math.sqrt(float(np.sum(relative * relative)) / count))


def _interval_score(
    coverage: float, bounds: tuple[FloatArray, FloatArray], cells: _Cells
) -> IntervalScore:
    """Observed coverage and mean Winkler score of one nominal coverage."""
    _check_level(coverage, "interval coverage")
    shape = cells.actuals.shape
    lower = _matrix(bounds[0], f"lower bound of the {coverage} interval", shape)
    upper = _matrix(bounds[1], f"upper bound of the {coverage} interval", shape)
    y = cells.actuals
    with np.errstate(over="ignore", invalid="ignore"):
        counted = cells.scored & np.isfinite(lower) & np.isfinite(upper)
        inside = np.where(counted & (lower <= y) & (y <= upper), 1.0, 0.0)
        outside = np.maximum(lower - y, 0.0) + np.maximum(y - upper, 0.0)
        winkler = (upper - lower) + (2.0 / (1.0 - coverage)) * outside
        return IntervalScore(
            coverage=coverage,
            observed=_finite(_mean(inside, counted)),
            winkler=_finite(_mean(winkler, counted)),
            per_step_observed=_floats(_mean(inside, counted, axis=0)),
            per_step_winkler=_floats(_mean(winkler, counted, axis=0)),
        )


def _quantile_score(level: float, values: FloatArray, cells: _Cells) -> QuantileScore:
    """Mean pinball loss of one quantile level."""
    _check_level(level, "quantile level")
    q = _matrix(values, f"quantile {level}", cells.actuals.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        counted = cells.scored & np.isfinite(q)
        difference = cells.actuals - q
        loss = np.maximum(level * difference, (level - 1.0) * difference)
        return QuantileScore(
            level=level,
            pinball=_finite(_mean(loss, counted)),
            per_step=_floats(_mean(loss, counted, axis=0)),
        )


def _check_level(level: float, name: str) -> None:
    """A coverage or quantile level lies strictly between 0 and 1, else ValueError."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"{name} must lie strictly between 0 and 1, got {level}")


def _finite(value: FloatArray | float) -> float:
    """A scalar result as a float, NaN when it overflowed (inf) or is undefined."""
    number = float(value)
    return number if math.isfinite(number) else math.nan


def _floats(values: FloatArray) -> tuple[float, ...]:
    """A per-step or per-window result as floats, inf (overflow) as NaN."""
    return tuple(v if math.isfinite(v) else math.nan for v in values.tolist())
