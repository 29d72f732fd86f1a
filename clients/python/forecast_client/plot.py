"""Draw model versions' forecasts of one series as a chart (matplotlib, Agg, no display).

Pure functions: data in, a `Figure` or PNG bytes out; nothing here calls the
gateway or writes a file. `forecast plot` calls CompareVersions and writes
`forecast_png(...)` to its --output file:

    comparison = client.compare_versions(
        "lstm_timeseries", history, horizon=12, interval_coverages=[0.8, 0.95]
    )
    png = forecast_png("lstm_timeseries", history, comparison.forecasts, actuals=observed)

The x axis counts steps from the last point of the history (0): the history
is drawn at 0, -1, -2, ... and each version's forecast continues from it at
1, 2, ..., horizon, with the actuals (if any) at the same steps. A series
with time is drawn on dates instead (UTC): when the forecasts carry
timestamps and the history's times are known (`history_times`, or the
DatetimeIndex of a pandas Series history), the history at its own times
(gaps show as straight segments), the forecasts and the actuals at the
forecast's timestamps. A version's prediction intervals are shaded bands in
its color, fanning out from the last history point, lighter for wider; its
quantiles are thin dashed lines.

`forecast backtest --plot` draws a backtest's accuracy by horizon step
instead: `backtest_png(report, metric="mae")` (or "mase"), one line per
target over steps 1..horizon.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter, date2num
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from forecast_client.client import BacktestReport, Interval, VersionForecast
from forecast_client.times import datetime_index, from_timestamp, history_values, to_timestamps

__all__ = [
    "BACKTEST_METRICS",
    "DEFAULT_LAST",
    "DEFAULT_SIZE_PX",
    "backtest_figure",
    "backtest_png",
    "forecast_figure",
    "forecast_png",
]

DEFAULT_LAST = 104  # two years of weekly points
DEFAULT_SIZE_PX = (1200, 600)
DEFAULT_DPI = 100
# tab10 without its grey (the history and actuals are drawn in dark grey).
_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)
_OBSERVED = "#333333"
BACKTEST_METRICS = {"mae": "MAE (units of the series)", "mase": "MASE (scaled MAE)"}
"""The per-step scores `backtest_figure` can draw, and their axis labels."""
# Band opacity: the narrowest interval of a version is the darkest.
_BAND_ALPHA_NARROW = 0.35
_BAND_ALPHA_WIDE = 0.12


class _Axis:
    """Where the history, the last point and the forecast steps go on the x axis.

    Step numbers, or on a date axis matplotlib's date numbers (days since its epoch).
    """

    def __init__(
        self,
        shown: int,
        history_times: Sequence[datetime] | None,
        forecasts: Sequence[VersionForecast],
    ) -> None:
        timed = [f.timestamps for f in forecasts if f.error is None and f.timestamps]
        self.dated = history_times is not None and bool(timed)
        self.history: list[float]
        self.steps: list[float]
        if self.dated and history_times is not None:
            self.history = _date_numbers(history_times[-shown:])
            self.steps = _date_numbers(max(timed, key=len))
        else:
            self.history = [float(step) for step in range(1 - shown, 1)]
            self.steps = [
                float(s) for s in range(1, 1 + max([len(f.values) for f in forecasts] + [0]))
            ]
        self.end = self.history[-1]

    def forecast(self, forecast_steps: int) -> list[float]:
        """The last history point, then the first `forecast_steps` steps."""
        return [self.end, *self.steps[:forecast_steps]]

    def span_end(self, horizon: int) -> float:
        """Where the shaded forecast region ends: half a step after the last one, or its time."""
        if self.dated:
            return self.steps[min(horizon, len(self.steps)) - 1]
        return horizon + 0.5

    def extend_to(self, count: int) -> None:
        """Make room for `count` steps (actuals beyond every forecast) on a step axis."""
        if not self.dated and count > len(self.steps):
            self.steps = [float(step) for step in range(1, count + 1)]


def forecast_figure(
    model: str,
    history: Sequence[float],
    forecasts: Sequence[VersionForecast],
    *,
    actuals: Sequence[float] = (),
    last: int = DEFAULT_LAST,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
    history_times: Sequence[object] | None = None,
) -> Figure:
    """Return a figure of the last `last` history points, each version's forecast and the actuals.

    Each successful version is a line in its own color from the last history
    point on, labelled with its version and window (and its MAE over the
    steps that have actuals), with its intervals as bands (labelled with how
    many actuals fell inside) and its quantiles as dashed lines; a failed
    version is only named in the legend, and so is one whose requested
    intervals are not all calibrated. The figure is `size_px` pixels (width,
    height) at `dpi`. `history_times` (one time per history point, in any
    form `forecast()` takes; default: the DatetimeIndex of a pandas Series
    `history`) puts the chart on dates when the forecasts have timestamps.
    """
    times = _times(history, history_times)
    history = history_values(history)
    if not history:
        raise ValueError("history is empty")
    if last < 1:
        raise ValueError(f"last must be >= 1, got {last}")
    width, height = size_px
    if width < 1 or height < 1 or dpi < 1:
        raise ValueError(f"size_px and dpi must be positive, got {size_px} at {dpi}")
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display, no pyplot state
    axes = figure.add_subplot()

    shown = list(history[-last:])
    end = shown[-1]
    x = _Axis(len(shown), times, forecasts)
    x.extend_to(len(actuals))
    axes.plot(x.history, shown, color=_OBSERVED, linewidth=1.6, label="history")

    horizon = max([len(f.values) for f in forecasts] + [len(actuals)])
    if horizon:
        axes.axvspan(x.end, x.span_end(horizon), color="#f3f3f3", zorder=0)
    axes.axvline(x.end, color="#999999", linewidth=0.8, linestyle="--", zorder=1)

    for index, forecast in enumerate(forecasts):
        if forecast.error is not None or not forecast.values:
            reason = forecast.error.code.name if forecast.error is not None else "no values"
            axes.plot([], [], linestyle="none", label=f"v{forecast.version}: failed ({reason})")
            continue
        color = _COLORS[index % len(_COLORS)]
        axes.plot(
            x.forecast(len(forecast.values)),
            [end, *forecast.values],
            color=color,
            linewidth=2.0,
            marker="o",
            markersize=3.5,
            markevery=slice(1, None),
            label=_label(forecast, actuals),
        )
        _draw_bands(axes, x, forecast, end, color, actuals)  # under the lines (zorder 1 < 2)

    if actuals:
        steps = x.forecast(len(actuals))
        axes.plot(
            steps,
            [end, *actuals[: len(steps) - 1]],
            color=_OBSERVED,
            linewidth=1.2,
            linestyle=":",
            marker="o",
            markersize=4.5,
            markerfacecolor="white",
            markevery=slice(1, None),
            label=f"actuals ({len(actuals)})",
        )

    versions = ", ".join(f"v{f.version}" for f in forecasts) or "no versions"
    figure.suptitle(f"{model}: forecast by version ({versions})", fontsize=14, fontweight="bold")
    axes.set_title(
        f"history: last {len(shown)} of {len(history)} points; horizon {horizon}",
        fontsize=10,
        color="#555555",
    )
    _label_x(axes, x, horizon)
    axes.set_ylabel("value (units of the history)")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="upper left", fontsize=9, framealpha=0.9)
    return figure


def _times(history: Sequence[float], given: Sequence[object] | None) -> list[datetime] | None:
    """The history's times as UTC datetimes: `given`, else a pandas Series' DatetimeIndex."""
    if given is None:
        given, _ = datetime_index(history)
        if given is None:
            return None
    times = [from_timestamp(t) for t in to_timestamps(given, "history_times")]
    if len(times) != len(history):
        raise ValueError(f"history_times has {len(times)} times for {len(history)} points")
    return times


def _label_x(axes: Axes, x: _Axis, horizon: int) -> None:
    """Steps, or dates (UTC) with matplotlib's concise labels."""
    if not x.dated:
        axes.set_xlabel("step (0 = last point of the history, 1.. = forecast)")
        axes.set_xlim(x.history[0] - 0.5, max(horizon, 1) + 0.5)
        return
    locator = AutoDateLocator(tz=UTC)  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=UTC))  # type: ignore[no-untyped-call]
    axes.set_xlabel("time (UTC; the dashed line is the last point of the history)")
    axes.set_xlim(x.history[0], x.steps[-1] if x.steps else x.end)


def _date_numbers(times: Sequence[datetime]) -> list[float]:
    numbers: list[float] = date2num(list(times)).tolist()  # type: ignore[no-untyped-call]
    return numbers


def forecast_png(
    model: str,
    history: Sequence[float],
    forecasts: Sequence[VersionForecast],
    *,
    actuals: Sequence[float] = (),
    last: int = DEFAULT_LAST,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
    history_times: Sequence[object] | None = None,
) -> bytes:
    """Return `forecast_figure(...)` as PNG bytes, exactly `size_px` pixels."""
    figure = forecast_figure(
        model,
        history,
        forecasts,
        actuals=actuals,
        last=last,
        size_px=size_px,
        dpi=dpi,
        history_times=history_times,
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _draw_bands(
    axes: Axes,
    x: _Axis,
    forecast: VersionForecast,
    end: float,
    color: str,
    actuals: Sequence[float],
) -> None:
    """The version's intervals (widest first, lightest) and quantiles, from the last point on."""
    by_width = sorted(forecast.intervals, key=lambda i: i.coverage, reverse=True)
    for rank, interval in enumerate(by_width):
        steps = x.forecast(len(interval.lower))
        axes.fill_between(
            steps,
            [end, *interval.lower],
            [end, *interval.upper],
            color=color,
            alpha=_band_alpha(rank, len(by_width)),
            linewidth=0,
            label=_band_label(forecast.version, interval, actuals),
        )
    for index, quantile in enumerate(forecast.quantiles):
        levels = ", ".join(f"{q.level * 100:.6g}" for q in forecast.quantiles)
        axes.plot(
            x.forecast(len(quantile.values)),
            [end, *quantile.values],
            color=color,
            linewidth=0.9,
            linestyle="--",
            alpha=0.8,
            label=f"v{forecast.version} quantiles {levels}%" if index == 0 else "_nolegend_",
        )
    uncertainty = forecast.uncertainty
    if uncertainty is not None and not uncertainty.calibrated:
        axes.plot(
            [], [], linestyle="none", label=f"v{forecast.version}: some levels not calibrated"
        )


def _band_alpha(rank: int, count: int) -> float:
    """Opacity of the `rank`-th widest of `count` bands: the widest is the lightest."""
    if count == 1:
        return (_BAND_ALPHA_NARROW + _BAND_ALPHA_WIDE) / 2
    return _BAND_ALPHA_WIDE + (_BAND_ALPHA_NARROW - _BAND_ALPHA_WIDE) * rank / (count - 1)


def _band_label(version: str, interval: Interval, actuals: Sequence[float]) -> str:
    label = f"v{version} {interval.coverage * 100:.6g}% interval"
    steps = min(len(interval.lower), len(actuals))
    if steps:
        inside = sum(interval.lower[i] <= actuals[i] <= interval.upper[i] for i in range(steps))
        label += f" ({inside} of {steps} actuals inside)"
    return label


def _label(forecast: VersionForecast, actuals: Sequence[float]) -> str:
    label = f"v{forecast.version} (window {forecast.sequence_length})"
    steps = min(len(forecast.values), len(actuals))
    if steps:
        mae = sum(abs(forecast.values[i] - actuals[i]) for i in range(steps)) / steps
        if math.isfinite(mae):
            label += f", MAE {mae:.3g} over {steps} steps"
    return label


def backtest_figure(
    report: BacktestReport,
    *,
    metric: str = "mae",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Return a figure of each target's `metric` ("mae" or "mase") by horizon step.

    One line per target (in the report's order and the version colors of
    `forecast_figure`), labelled with its overall score and windows; a
    target without a finite score at any step (MASE without a scale) is only
    named in the legend. The subtitle has the layout and, for MASE, the scale.
    """
    if metric not in BACKTEST_METRICS:
        raise ValueError(f"metric must be one of {sorted(BACKTEST_METRICS)}, got {metric!r}")
    width, height = size_px
    if width < 1 or height < 1 or dpi < 1:
        raise ValueError(f"size_px and dpi must be positive, got {size_px} at {dpi}")
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)  # render with Agg: no display, no pyplot state
    axes = figure.add_subplot()
    name = metric.upper()
    for index, result in enumerate(report.results):
        steps = [s.step for s in result.steps]
        values = [getattr(s, metric) for s in result.steps]
        overall = float(getattr(result, metric))
        label = f"{result.target}: {name} {overall:#.3g} over {result.windows} windows"
        if not any(math.isfinite(v) for v in values):
            axes.plot([], [], linestyle="none", label=f"{result.target}: no {name}")
            continue
        axes.plot(
            steps,
            values,
            color=_COLORS[index % len(_COLORS)],
            linewidth=2.0,
            marker="o",
            markersize=4,
            label=label,
        )
    figure.suptitle(
        f"{report.model}: backtest, {name} by horizon step", fontsize=14, fontweight="bold"
    )
    subtitle = (
        f"{report.n_windows} windows per series, horizon {report.horizon}, step {report.step}"
    )
    if metric == "mase" and report.scale:
        subtitle += f"\nscale: {report.scale}"
    axes.set_title(subtitle, fontsize=10, color="#555555")
    axes.set_xlabel("horizon step (1 = the first point after each origin)")
    axes.set_ylabel(BACKTEST_METRICS[metric])
    horizon = max([report.horizon, *(len(r.steps) for r in report.results)])
    axes.set_xlim(0.5, max(horizon, 1) + 0.5)
    if horizon <= 24:
        axes.set_xticks(range(1, horizon + 1))
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(True, alpha=0.3)
    if report.results:
        axes.legend(loc="upper left", fontsize=9, framealpha=0.9)
    return figure


def backtest_png(
    report: BacktestReport,
    *,
    metric: str = "mae",
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
) -> bytes:
    """Return `backtest_figure(...)` as PNG bytes, exactly `size_px` pixels."""
    figure = backtest_figure(report, metric=metric, size_px=size_px, dpi=dpi)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()
