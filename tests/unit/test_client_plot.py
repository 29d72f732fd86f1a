"""forecast_client.plot: the PNG `forecast plot` writes, drawn from plain data (no gateway)."""

from __future__ import annotations

import dataclasses
import io
import math
import struct
from datetime import UTC, datetime, timedelta
from typing import cast

import grpc
import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PolyCollection
from matplotlib.dates import ConciseDateFormatter, date2num
from matplotlib.lines import Line2D
from PIL import Image

from forecast_client import (
    ForecastError,
    Interval,
    QuantileForecast,
    Uncertainty,
    VersionForecast,
)
from forecast_client.plot import DEFAULT_SIZE_PX, forecast_figure, forecast_png

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HISTORY = [round(350 + 3 * math.sin(2 * math.pi * i / 52) + 0.03 * i, 3) for i in range(150)]
ACTUALS = [HISTORY[-1] + 0.1 * step for step in range(1, 9)]
FORECASTS = (
    VersionForecast("1", [v + 0.4 for v in ACTUALS], 3.2, 10, None),
    VersionForecast("2", [v - 0.2 for v in ACTUALS], 4.1, 52, None),
)
BLUE, ORANGE = (0x1F, 0x77, 0xB4), (0xFF, 0x7F, 0x0E)  # the first two version colors


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which must come first."""
    assert png[:8] == PNG_SIGNATURE
    length, chunk = struct.unpack(">I4s", png[8:16])
    assert (length, chunk) == (13, b"IHDR")
    width, height = struct.unpack(">II", png[16:24])
    return width, height


def legend_labels(figure: object) -> list[str]:
    (axes,) = figure.axes  # type: ignore[attr-defined]
    return [text.get_text() for text in axes.get_legend().get_texts()]


def test_png_is_valid_and_has_the_default_size() -> None:
    png = forecast_png("lstm_timeseries", HISTORY, FORECASTS, actuals=ACTUALS)
    assert png_size(png) == DEFAULT_SIZE_PX == (1200, 600)
    with Image.open(io.BytesIO(png)) as image:
        image.verify()  # CRCs and structure
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (1200, 600)
        counted = image.convert("RGBA").getcolors(1 << 20) or []
        colors = {cast(tuple[int, ...], rgba)[:3] for _, rgba in counted}
    # Both versions' lines are drawn in their own colors (not a blank canvas).
    assert BLUE in colors and ORANGE in colors
    assert len(colors) > 50


@pytest.mark.parametrize(("size", "dpi"), [((800, 400), 100), ((640, 480), 80)])
def test_png_has_the_requested_size(size: tuple[int, int], dpi: int) -> None:
    png = forecast_png("moving_average", HISTORY, FORECASTS[:1], size_px=size, dpi=dpi)
    assert png_size(png) == size


def test_figure_draws_history_forecasts_and_actuals() -> None:
    figure = forecast_figure("lstm_timeseries", HISTORY, FORECASTS, actuals=ACTUALS, last=30)
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines() if isinstance(line, Line2D)}
    history = lines["history"]
    assert np.asarray(history.get_xdata()).tolist() == list(
        range(-29, 1)
    )  # the last 30 points, ending at 0
    assert np.asarray(history.get_ydata()).tolist() == HISTORY[-30:]
    v1 = lines["v1 (window 10), MAE 0.4 over 8 steps"]
    v2 = lines["v2 (window 52), MAE 0.2 over 8 steps"]
    for line, forecast in ((v1, FORECASTS[0]), (v2, FORECASTS[1])):
        # Each forecast continues from the last history point.
        assert np.asarray(line.get_xdata()).tolist() == list(range(9))
        assert np.asarray(line.get_ydata()).tolist() == [HISTORY[-1], *forecast.values]
    assert v1.get_color() != v2.get_color()
    assert np.asarray(lines["actuals (8)"].get_ydata()).tolist()[1:] == ACTUALS
    assert figure.get_suptitle() == "lstm_timeseries: forecast by version (v1, v2)"
    assert "last 30 of 150 points" in axes.get_title()


def test_failed_version_is_named_in_the_legend_and_short_history_is_shown_whole() -> None:
    failed = VersionForecast(
        "3", [], 0.0, 0, ForecastError(grpc.StatusCode.UNAVAILABLE, "version 3 is not ready")
    )
    figure = forecast_figure("lstm_timeseries", HISTORY[:20], [FORECASTS[0], failed])
    assert legend_labels(figure) == ["history", "v1 (window 10)", "v3: failed (UNAVAILABLE)"]
    assert "last 20 of 20 points" in figure.axes[0].get_title()
    assert png_size(forecast_png("lstm_timeseries", HISTORY[:20], [failed])) == (1200, 600)


@pytest.mark.parametrize(
    ("history", "last", "fragment"), [([], 104, "history is empty"), ([1.0], 0, "last")]
)
def test_invalid_arguments(history: list[float], last: int, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        forecast_png("m", history, FORECASTS, last=last)


def banded(forecast: VersionForecast, widths: dict[float, float]) -> VersionForecast:
    """The forecast with a symmetric interval of each coverage: half-width widths[coverage]."""
    intervals = tuple(
        Interval(c, [v - w for v in forecast.values], [v + w for v in forecast.values])
        for c, w in widths.items()
    )
    return dataclasses.replace(forecast, intervals=intervals)


def test_intervals_are_bands_lighter_for_wider_with_actuals_inside_counted() -> None:
    v1 = banded(FORECASTS[0], {0.8: 0.45, 0.95: 1.0})  # both hold every actual (v1 is +0.4 off)
    v2 = dataclasses.replace(
        banded(FORECASTS[1], {0.8: 0.1}),
        quantiles=(QuantileForecast(0.9, [v + 0.05 for v in FORECASTS[1].values]),),
    )
    figure = forecast_figure("lstm_timeseries", HISTORY, [v1, v2], actuals=ACTUALS)
    (axes,) = figure.axes
    bands = {c.get_label(): c for c in axes.collections if isinstance(c, PolyCollection)}
    assert set(bands) == {
        "v1 95% interval (8 of 8 actuals inside)",
        "v1 80% interval (8 of 8 actuals inside)",
        "v2 80% interval (0 of 8 actuals inside)",
    }
    wide, narrow = (
        bands["v1 95% interval (8 of 8 actuals inside)"],
        bands["v1 80% interval (8 of 8 actuals inside)"],
    )
    assert cast(float, wide.get_alpha()) < cast(float, narrow.get_alpha())  # lighter for wider
    # In the version's color, fanning out from the last history point over the horizon.
    assert tuple(np.asarray(wide.get_facecolor())[0][:3]) == pytest.approx(
        tuple(c / 255 for c in BLUE)
    )
    vertices = np.asarray(narrow.get_paths()[0].vertices)
    assert vertices[:, 0].min() == 0 and vertices[:, 0].max() == len(ACTUALS)
    lows = [ACTUALS[i] + 0.4 - 0.45 for i in range(len(ACTUALS))]
    assert vertices[:, 1].min() == pytest.approx(min([HISTORY[-1], *lows]))
    # The quantile is a dashed line; the legend names every band.
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert lines["v2 quantiles 90%"].get_linestyle() == "--"
    assert set(bands) <= set(legend_labels(figure))
    assert png_size(forecast_png("lstm_timeseries", HISTORY, [v1, v2], actuals=ACTUALS)) == (
        1200,
        600,
    )


def test_no_bands_without_intervals_and_a_note_when_not_calibrated() -> None:
    figure = forecast_figure("lstm_timeseries", HISTORY, FORECASTS)
    assert not [c for c in figure.axes[0].collections if isinstance(c, PolyCollection)]
    not_calibrated = dataclasses.replace(
        banded(FORECASTS[0], {0.8: 0.5}),
        uncertainty=Uncertainty("not_calibrated", "split conformal", [9] * 8, "too few"),
    )
    figure = forecast_figure("lstm_timeseries", HISTORY, [not_calibrated])
    assert legend_labels(figure) == [
        "history",
        "v1 (window 10)",
        "v1 80% interval",
        "v1: some levels not calibrated",
    ]


# --- series with time ---------------------------------------------------------------

START = datetime(2021, 1, 3, tzinfo=UTC)  # a Sunday: weekly points
WEEKS = [START + timedelta(weeks=i) for i in range(len(HISTORY))]
NEXT = tuple(WEEKS[-1] + timedelta(weeks=k) for k in range(1, len(ACTUALS) + 1))
DATED = tuple(dataclasses.replace(f, timestamps=NEXT, frequency="W-SUN") for f in FORECASTS)


def num(times: object) -> list[float]:
    """matplotlib's date numbers (days since its epoch) of one time or a list of them."""
    values: list[float] = np.atleast_1d(date2num(times)).tolist()  # type: ignore[no-untyped-call]
    return values


def x_of(line: Line2D) -> list[float]:
    return [float(v) for v in np.asarray(line.get_xdata())]


def test_dates_on_the_x_axis_when_the_forecasts_have_timestamps() -> None:
    figure = forecast_figure(
        "lstm_timeseries", HISTORY, DATED, actuals=ACTUALS, last=30, history_times=WEEKS
    )
    (axes,) = figure.axes
    lines = {line.get_label(): line for line in axes.get_lines()}
    assert x_of(lines["history"]) == num(WEEKS[-30:])
    forecast_x = [*num(WEEKS[-1]), *num(list(NEXT))]
    assert x_of(lines["v1 (window 10), MAE 0.4 over 8 steps"]) == forecast_x
    assert x_of(lines["actuals (8)"]) == forecast_x
    assert axes.get_xlabel().startswith("time (UTC")
    assert isinstance(axes.xaxis.get_major_formatter(), ConciseDateFormatter)
    assert axes.get_xlim() == pytest.approx((*num(WEEKS[-30]), *num(NEXT[-1])))
    banded_figure = forecast_figure(
        "m", HISTORY, [banded(DATED[0], {0.8: 0.5})], history_times=WEEKS
    )
    (band,) = [c for c in banded_figure.axes[0].collections if isinstance(c, PolyCollection)]
    vertices = np.asarray(band.get_paths()[0].vertices)
    assert vertices[:, 0].min() == pytest.approx(num(WEEKS[-1])[0])
    assert vertices[:, 0].max() == pytest.approx(num(NEXT[-1])[0])
    assert png_size(forecast_png("m", HISTORY, DATED, history_times=WEEKS)) == (1200, 600)


def test_a_gap_in_the_history_is_drawn_at_its_dates_and_a_pandas_index_is_used() -> None:
    kept = [i for i in range(len(HISTORY)) if i not in (140, 141)]
    series = pd.Series([HISTORY[i] for i in kept], index=pd.DatetimeIndex([WEEKS[i] for i in kept]))
    figure = forecast_figure("m", series, DATED, last=20)
    history = next(line for line in figure.axes[0].get_lines() if line.get_label() == "history")
    assert x_of(history) == num([WEEKS[i] for i in kept[-20:]])


def test_steps_when_the_history_times_or_the_forecast_timestamps_are_missing() -> None:
    for history_times, forecasts in ((None, DATED), (WEEKS, FORECASTS)):
        figure = forecast_figure("m", HISTORY, forecasts, last=10, history_times=history_times)
        assert figure.axes[0].get_xlabel().startswith("step (0 = last point")
        history = figure.axes[0].get_lines()[0]
        assert x_of(history) == list(range(-9, 1))
    with pytest.raises(ValueError, match="history_times has 3 times for 150 points"):
        forecast_figure("m", HISTORY, DATED, history_times=WEEKS[:3])
