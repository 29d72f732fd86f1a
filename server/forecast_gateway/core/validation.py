"""Request validation: every check on a forecast request, with field-level messages.

Two stages, both pure: `check_query` needs only the gateway's limits (run
before any lookup), `resolve_shape` needs the model version's spec (window
and horizon ranges). Each collects every violation it finds, so a caller
fixes a request in one round trip.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from forecast_gateway.core.catalog import ModelSpec, VersionSpec
from forecast_gateway.errors import FieldViolation, InvalidArgument, shown
from forecast_gateway.names import VERSION_RULE, is_version
from forecast_gateway.numerics import NO_LEVELS, FloatArray, Levels

# Largest magnitude a history value may have. Beyond it the squares summed for
# a window's standard deviation overflow float64 and the forecast would come
# out non-finite; real series are nowhere near it (the models see z-scores).
MAX_ABS_VALUE = 1e150

MAX_INTERVALS = 8
"""Interval coverages one request may ask for."""
MAX_QUANTILES = 16
"""Quantile levels one request may ask for."""


@dataclass(frozen=True)
class ForecastQuery:
    """A forecast request as the core sees it (converted from the proto)."""

    model: str
    version: str
    routing_key: str
    history: FloatArray
    horizon: int
    sequence_length: int
    levels: Levels = NO_LEVELS


@dataclass(frozen=True)
class Shape:
    """The window and horizon a validated request will run with."""

    window: int
    horizon: int


def check_query(query: ForecastQuery, max_history_length: int) -> None:
    """Checks that need no model: required fields, finite values, sign of numbers."""
    violations = query_violations(query, max_history_length)
    if violations:
        raise InvalidArgument.of(violations)


def query_violations(query: ForecastQuery, max_history_length: int) -> list[FieldViolation]:
    """Every violation `check_query` finds (empty: the query is well-formed)."""
    violations: list[FieldViolation] = []
    if not query.model:
        violations.append(FieldViolation("model", "model is required (see ListModels)"))
    if query.version and not is_version(query.version):
        violations.append(
            FieldViolation("version", f"version must be {VERSION_RULE}, got {shown(query.version)}")
        )
    history = _history_violation(query.history, max_history_length)
    if history is not None:
        violations.append(history)
    if query.horizon < 0:
        violations.append(
            FieldViolation(
                "horizon", f"horizon must be >= 0 (0 = model default), got {query.horizon}"
            )
        )
    if query.sequence_length < 0:
        violations.append(
            FieldViolation(
                "sequence_length",
                f"sequence_length must be >= 0 (0 = model default), got {query.sequence_length}",
            )
        )
    if query.levels:
        violations += _level_violations("interval_coverages", query.levels.coverages, MAX_INTERVALS)
        violations += _level_violations("quantile_levels", query.levels.quantiles, MAX_QUANTILES)
    return violations


def _level_violations(field: str, values: tuple[float, ...], most: int) -> list[FieldViolation]:
    """Probabilities strictly between 0 and 1, distinct, at most `most` of them."""
    violations: list[FieldViolation] = []
    if len(values) > most:
        violations.append(
            FieldViolation(field, f"{len(values)} values, the maximum is {most} per request")
        )
    for index, value in enumerate(values):
        if not 0.0 < value < 1.0:  # False for NaN
            violations.append(
                FieldViolation(
                    f"{field}[{index}]",
                    f"must be a probability strictly between 0 and 1 (e.g. 0.8), got {value}",
                )
            )
    if len(set(values)) < len(values):
        repeated = sorted({v for v in values if values.count(v) > 1})
        violations.append(FieldViolation(field, f"values must be distinct; repeated: {repeated}"))
    return violations


def _history_violation(history: FloatArray, max_history_length: int) -> FieldViolation | None:
    """What is wrong with the history as a whole: length, non-finite or out-of-range values."""
    length = history.shape[0]
    if length == 0:
        return FieldViolation("history", "history is empty; send at least the window")
    if length > max_history_length:
        return FieldViolation(
            "history",
            f"history has {length} points, the maximum is {max_history_length}; "
            "send only the most recent points",
        )
    if np.maximum.reduce(np.abs(history)) <= MAX_ABS_VALUE:  # False for NaN and infinities
        return None
    bad = np.flatnonzero(~np.isfinite(history))
    if bad.size:
        first = int(bad[0])
        return FieldViolation(
            "history",
            f"history holds {bad.size} non-finite value(s) (NaN or infinity), "
            f"first at index {first}: {history[first]}; fill or drop gaps first",
        )
    huge = np.flatnonzero(np.abs(history) > MAX_ABS_VALUE)
    if huge.size:
        first = int(huge[0])
        return FieldViolation(
            "history",
            f"history holds {huge.size} value(s) beyond +-{MAX_ABS_VALUE:g}, "
            f"first at index {first}: {history[first]}; rescale the series first",
        )
    return None


def resolve_shape(query: ForecastQuery, model: ModelSpec, version: VersionSpec) -> Shape:
    """Window and horizon for this version, or INVALID_ARGUMENT naming what is out of range."""
    violations = shape_violations(query, model, version)
    if violations:
        raise InvalidArgument.of(violations)
    return Shape(
        window=query.sequence_length or version.sequence_length,
        horizon=query.horizon or model.default_horizon,
    )


def shape_violations(
    query: ForecastQuery, model: ModelSpec, version: VersionSpec | None
) -> list[FieldViolation]:
    """What `version` (None: the model alone, its horizon) cannot take of the query."""
    violations: list[FieldViolation] = []
    if version is None:
        return _horizon_violations(query, model)
    window = query.sequence_length or version.sequence_length
    low, high = version.min_sequence_length, version.max_sequence_length
    if not low <= window <= high:
        allowed = f"exactly {low}" if low == high else f"{low} to {high}"
        violations.append(
            FieldViolation(
                "sequence_length",
                f"{model.name} version {version.version} takes a window of {allowed}, got {window}",
            )
        )
    elif query.history.shape[0] < window:
        violations.append(
            FieldViolation(
                "history",
                f"history has {query.history.shape[0]} points; {model.name} version "
                f"{version.version} needs at least {window} (its window)",
            )
        )
    return violations + _horizon_violations(query, model)


def _horizon_violations(query: ForecastQuery, model: ModelSpec) -> list[FieldViolation]:
    horizon = query.horizon or model.default_horizon
    if horizon > model.max_horizon:
        return [
            FieldViolation(
                "horizon",
                f"horizon {horizon} is over {model.name}'s maximum of {model.max_horizon}",
            )
        ]
    return []


def batch_violations(ids: Sequence[str], max_series: int) -> list[FieldViolation]:
    """Checks on a batch as a whole: size and unique, non-empty ids."""
    violations: list[FieldViolation] = []
    if not ids:
        violations.append(FieldViolation("series", "series is empty; send at least one series"))
    elif len(ids) > max_series:
        violations.append(
            FieldViolation("series", f"{len(ids)} series, the maximum is {max_series} per call")
        )
    missing = [i for i, series_id in enumerate(ids) if not series_id]
    if missing:
        violations.append(FieldViolation(f"series[{missing[0]}].id", "every series needs an id"))
    duplicates = sorted(i for i, count in collections.Counter(ids).items() if i and count > 1)
    if duplicates:
        violations.append(
            FieldViolation("series", f"series ids must be unique; repeated: {duplicates[:5]}")
        )
    return violations
