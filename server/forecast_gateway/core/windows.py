"""What one series sends a version and gets back: its window, its answer, its times.

The window a version reads (missing points filled as the request asked,
or left NaN for a version that accepts them), the split of a quantile
model's answer into its point forecast and its quantiles, and the instants
of the forecast steps.
"""

from __future__ import annotations

import numpy as np

from forecast_gateway.core.contract import Contract
from forecast_gateway.core.filling import window_of
from forecast_gateway.core.normalization import fit_window
from forecast_gateway.core.timeline import Fill
from forecast_gateway.core.validation import ForecastQuery
from forecast_gateway.numerics import FloatArray
from forecast_gateway.timegrid import Instants


def window_values(
    query: ForecastQuery, window: int, contract: Contract | None = None
) -> tuple[FloatArray, int]:
    """The window a version reads (missing points filled) and how many were filled.

    A version that accepts missing values gets NaN unfilled when the request
    asks for no fill.
    """
    if not query.missing:  # every request without NaN or gaps
        return fit_window(query.history, window), 0
    if query.fill is Fill.NONE and contract is not None and contract.accepts_missing:
        return fit_window(query.history, window), 0
    return window_of(query.history, window, query.fill)


def split_output(output: FloatArray) -> tuple[FloatArray, FloatArray | None]:
    """One series' answer: its point forecast, and its quantiles ([steps, levels]) if any."""
    if output.ndim == 1:
        return output, None
    return np.ascontiguousarray(output[:, 0]), output[:, 1:]


def forecast_times(query: ForecastQuery, horizon: int) -> Instants | None:
    """The instants of the forecast steps of a query with time (None without)."""
    if query.axis is None:
        return None
    return query.axis.forecast_times(query.history.shape[0], horizon)
