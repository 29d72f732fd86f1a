"""Request validation: every check on a forecast request, with field-level messages.

Two stages, both pure: `prepare_query` needs only the gateway's limits (run
before any lookup: it lays a series with time on its grid and counts its
missing points), `resolve_shape` needs the model version's spec (window and
horizon ranges, missing points in the window). Each collects every
violation it finds, so a caller fixes a request in one round trip.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from forecast_gateway.core.catalog import ModelSpec, VersionSpec
from forecast_gateway.core.eligibility import contract_violations
from forecast_gateway.core.filling import describe_missing, missing_in_window
from forecast_gateway.core.timeline import Axis, Fill, TimeInput, on_grid
from forecast_gateway.errors import MISSING_VALUES, FieldViolation, InvalidArgument, shown
from forecast_gateway.names import VERSION_RULE, is_version
from forecast_gateway.numerics import NO_LEVELS, FloatArray, Levels
from forecast_gateway.timegrid import TimeError

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
    time: TimeInput | None = None
    """The time fields as given; None for a request without time."""
    fill: Fill = Fill.NONE
    axis: Axis | None = None
    """The grid of the history, set by `prepare_query` when the request had time."""
    missing: int = 0
    """Missing points (NaN) of the history on its grid, set by `prepare_query`."""
    gaps: int = 0
    """Of those, the grid points absent from `timestamps` (not sent as NaN)."""

    @property
    def frequency(self) -> str:
        """The frequency as given or inferred ("" for a request without time)."""
        return self.axis.frequency if self.axis is not None else ""


@dataclass(frozen=True)
class Shape:
    """The window and horizon a validated request will run with."""

    window: int
    horizon: int


def check_query(query: ForecastQuery, max_history_length: int) -> ForecastQuery:
    """The prepared query, or InvalidArgument with every model-free violation."""
    prepared, violations = prepare_query(query, max_history_length)
    if violations:
        raise InvalidArgument.of(violations)
    return prepared


def prepare_query(
    query: ForecastQuery, max_history_length: int
) -> tuple[ForecastQuery, list[FieldViolation]]:
    """The query on its time grid with its missing points counted, and every violation.

    A request without time and without NaN costs one reduction over the
    history, as it did before time existed.
    """
    violations = _name_violations(query)
    if query.time is not None:
        try:
            history, axis = on_grid(query.history, query.time, max_history_length)
        except TimeError as error:
            violations.append(FieldViolation(error.field, error.message))
        else:
            gaps = history.shape[0] - query.history.shape[0]
            query = replace(query, history=history, axis=axis, gaps=gaps)
    history_violation, missing = _history_violation(query.history, max_history_length)
    if history_violation is not None:
        violations.append(history_violation)
    if missing:
        query = replace(query, missing=missing)
    return query, violations + _number_violations(query)


def query_violations(query: ForecastQuery) -> list[FieldViolation]:
    """What is wrong with the fields other than the history and time (empty: nothing)."""
    return _name_violations(query) + _number_violations(query)


def _name_violations(query: ForecastQuery) -> list[FieldViolation]:
    """What is wrong with the model and version names."""
    violations: list[FieldViolation] = []
    if not query.model:
        violations.append(FieldViolation("model", "model is required (see ListModels)"))
    if query.version and not is_version(query.version):
        violations.append(
            FieldViolation("version", f"version must be {VERSION_RULE}, got {shown(query.version)}")
        )
    return violations


def _number_violations(query: ForecastQuery) -> list[FieldViolation]:
    """What is wrong with horizon, sequence_length and the requested levels."""
    violations: list[FieldViolation] = []
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


def _history_violation(
    history: FloatArray, max_history_length: int
) -> tuple[FieldViolation | None, int]:
    """What is wrong with the whole history, and how many of its points are missing (NaN).

    Wrong: empty, too long, every point missing, infinite or huge values.
    """
    length = history.shape[0]
    if length == 0:
        return FieldViolation("history", "history is empty; send at least the window"), 0
    if length > max_history_length:
        return FieldViolation(
            "history",
            f"history has {length} points, the maximum is {max_history_length}; "
            "send only the most recent points",
        ), 0
    if np.maximum.reduce(np.abs(history)) <= MAX_ABS_VALUE:  # False for NaN and infinities
        return None, 0
    missing = int(np.count_nonzero(np.isnan(history)))
    if missing == length:
        return FieldViolation(
            "history", f"every one of the {length} points is missing (NaN); send observed values"
        ), missing
    infinite = np.flatnonzero(np.isinf(history))
    if infinite.size:
        first = int(infinite[0])
        return FieldViolation(
            "history",
            f"history holds {infinite.size} infinite value(s), first at index {first}: "
            f"{history[first]}; send NaN for a missing value",
        ), missing
    with np.errstate(invalid="ignore"):
        huge = np.flatnonzero(np.abs(history) > MAX_ABS_VALUE)
    if huge.size:
        first = int(huge[0])
        return FieldViolation(
            "history",
            f"history holds {huge.size} value(s) beyond +-{MAX_ABS_VALUE:g}, "
            f"first at index {first}: {history[first]}; rescale the series first",
        ), missing
    return None, missing


def resolve_shape(query: ForecastQuery, model: ModelSpec, version: VersionSpec) -> Shape:
    """Window and horizon for this version, or INVALID_ARGUMENT naming what is out of range."""
    violations = shape_violations(query, model, version)
    if violations:
        raise InvalidArgument.of(violations)
    return Shape(
        window=query.sequence_length or version.sequence_length,
        horizon=query.horizon or default_horizon(model, version),
    )


def default_horizon(model: ModelSpec, version: VersionSpec) -> int:
    """The horizon of a request that leaves it at 0: the model's, within the version's limit."""
    if version.contract is None:
        return model.default_horizon
    return min(model.default_horizon, version.contract.max_horizon)


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
    elif (
        query.missing
        and query.fill is Fill.NONE
        and not (version.contract is not None and version.contract.accepts_missing)
    ):
        missing = missing_in_window(query.history, window)
        if missing.size:
            violations.append(
                FieldViolation(
                    "timestamps" if query.gaps else "history",  # where the caller must look
                    f"{missing.size} missing point(s) in the {window}-point window "
                    f"{model.name} version {version.version} reads, "
                    f"{describe_missing(missing, query.axis)}; set fill "
                    "(FILL_METHOD_LINEAR, FILL_METHOD_PREVIOUS or FILL_METHOD_ZERO) "
                    "or send the values",
                    reason=MISSING_VALUES,
                )
            )
    horizon = query.horizon or default_horizon(model, version)
    return (
        violations
        + _horizon_violations(query, model)
        + contract_violations(model, version, query.frequency, horizon, query.levels)
    )


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
