"""Request validation: every check on a forecast request, with field-level messages.

Two stages, both pure: `check_query` needs only the gateway's limits (run
before any lookup), `resolve_shape` needs the model version's spec (window
and horizon ranges). Each collects every violation it finds, so a caller
fixes a request in one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from forecast_gateway.catalog import ModelSpec, VersionSpec
from forecast_gateway.errors import FieldViolation, InvalidArgument
from forecast_gateway.normalization import FloatArray


@dataclass(frozen=True)
class ForecastQuery:
    """A forecast request as the core sees it (converted from the proto)."""

    model: str
    version: str
    routing_key: str
    history: FloatArray
    horizon: int
    sequence_length: int


@dataclass(frozen=True)
class Shape:
    """The window and horizon a validated request will run with."""

    window: int
    horizon: int


def check_query(query: ForecastQuery, max_history_length: int) -> None:
    """Checks that need no model: required fields, finite values, sign of numbers."""
    violations: list[FieldViolation] = []
    if not query.model:
        violations.append(FieldViolation("model", "model is required (see ListModels)"))
    if query.version and not query.version.isdigit():
        violations.append(
            FieldViolation("version", f'version must be a number like "2", got {query.version!r}')
        )
    length = query.history.shape[0]
    if length == 0:
        violations.append(FieldViolation("history", "history is empty; send at least the window"))
    elif length > max_history_length:
        violations.append(
            FieldViolation(
                "history",
                f"history has {length} points, the maximum is {max_history_length}; "
                "send only the most recent points",
            )
        )
    else:
        bad = np.flatnonzero(~np.isfinite(query.history))
        if bad.size:
            first = int(bad[0])
            violations.append(
                FieldViolation(
                    "history",
                    f"history holds {bad.size} non-finite value(s) (NaN or infinity), "
                    f"first at index {first}: {query.history[first]}; fill or drop gaps first",
                )
            )
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
    if violations:
        raise InvalidArgument.of(violations)


def resolve_shape(query: ForecastQuery, model: ModelSpec, version: VersionSpec) -> Shape:
    """Window and horizon for this version, or INVALID_ARGUMENT naming what is out of range."""
    violations: list[FieldViolation] = []
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
    horizon = query.horizon or model.default_horizon
    if horizon > model.max_horizon:
        violations.append(
            FieldViolation(
                "horizon",
                f"horizon {horizon} is over {model.name}'s maximum of {model.max_horizon}",
            )
        )
    if violations:
        raise InvalidArgument.of(violations)
    return Shape(window=window, horizon=horizon)
