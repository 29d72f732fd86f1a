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
1, 2, ..., horizon, with the actuals (if any) at the same steps. A version's
prediction intervals are shaded bands in its color, fanning out from the
last history point, lighter for wider; its quantiles are thin dashed lines.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from forecast_client.client import Interval, VersionForecast

__all__ = ["DEFAULT_LAST", "DEFAULT_SIZE_PX", "forecast_figure", "forecast_png"]

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
# Band opacity: the narrowest interval of a version is the darkest.
_BAND_ALPHA_NARROW = 0.35
_BAND_ALPHA_WIDE = 0.12


def forecast_figure(
    model: str,
    history: Sequence[float],
    forecasts: Sequence[VersionForecast],
    *,
    actuals: Sequence[float] = (),
    last: int = DEFAULT_LAST,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
) -> Figure:
    """Return a figure of the last `last` history points, each version's forecast and the actuals.

    Each successful version is a line in its own color from the last history
    point on, labelled with its version and window (and its MAE over the
    steps that have actuals), with its intervals as bands (labelled with how
    many actuals fell inside) and its quantiles as dashed lines; a failed
    version is only named in the legend, and so is one whose requested
    intervals are not all calibrated. The figure is `size_px` pixels (width,
    height) at `dpi`.
    """
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
    axes.plot(range(1 - len(shown), 1), shown, color=_OBSERVED, linewidth=1.6, label="history")

    horizon = max([len(f.values) for f in forecasts] + [len(actuals)])
    if horizon:
        axes.axvspan(0, horizon + 0.5, color="#f3f3f3", zorder=0)
    axes.axvline(0, color="#999999", linewidth=0.8, linestyle="--", zorder=1)

    for index, forecast in enumerate(forecasts):
        if forecast.error is not None or not forecast.values:
            reason = forecast.error.code.name if forecast.error is not None else "no values"
            axes.plot([], [], linestyle="none", label=f"v{forecast.version}: failed ({reason})")
            continue
        color = _COLORS[index % len(_COLORS)]
        axes.plot(
            range(len(forecast.values) + 1),
            [end, *forecast.values],
            color=color,
            linewidth=2.0,
            marker="o",
            markersize=3.5,
            markevery=slice(1, None),
            label=_label(forecast, actuals),
        )
        _draw_bands(axes, forecast, end, color, actuals)  # under the lines (zorder 1 < 2)

    if actuals:
        axes.plot(
            range(len(actuals) + 1),
            [end, *actuals],
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
    axes.set_xlabel("step (0 = last point of the history, 1.. = forecast)")
    axes.set_ylabel("value (units of the history)")
    axes.grid(True, alpha=0.3)
    axes.set_xlim(1 - len(shown) - 0.5, max(horizon, 1) + 0.5)
    axes.legend(loc="upper left", fontsize=9, framealpha=0.9)
    return figure


def forecast_png(
    model: str,
    history: Sequence[float],
    forecasts: Sequence[VersionForecast],
    *,
    actuals: Sequence[float] = (),
    last: int = DEFAULT_LAST,
    size_px: tuple[int, int] = DEFAULT_SIZE_PX,
    dpi: int = DEFAULT_DPI,
) -> bytes:
    """Return `forecast_figure(...)` as PNG bytes, exactly `size_px` pixels."""
    figure = forecast_figure(
        model, history, forecasts, actuals=actuals, last=last, size_px=size_px, dpi=dpi
    )
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _draw_bands(
    axes: Axes, forecast: VersionForecast, end: float, color: str, actuals: Sequence[float]
) -> None:
    """The version's intervals (widest first, lightest) and quantiles, from the last point on."""
    by_width = sorted(forecast.intervals, key=lambda i: i.coverage, reverse=True)
    for rank, interval in enumerate(by_width):
        steps = range(len(interval.lower) + 1)
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
            range(len(quantile.values) + 1),
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
