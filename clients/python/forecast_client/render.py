"""Turn results and errors into the CLI's output: JSON objects or plain-text tables.

JSON keys are the proto JSON names (lowerCamelCase) so scripts can rely on
them; enum values are the client's labels ("pinned", "ready").
"""

from __future__ import annotations

from collections.abc import Sequence

from forecast_client.client import Forecast, ModelInfo, ModelVersionInfo
from forecast_client.errors import ForecastError

__all__ = [
    "error_json",
    "error_text",
    "forecast_json",
    "forecast_text",
    "model_json",
    "model_text",
    "models_text",
]

JsonObject = dict[str, object]


def forecast_json(forecast: Forecast) -> JsonObject:
    """Return the forecast as a ForecastResponse-shaped JSON object."""
    return {
        "forecastId": forecast.forecast_id,
        "model": forecast.model,
        "version": forecast.version,
        "values": list(forecast.values),
        "routingDecision": forecast.routing_decision,
        "horizon": forecast.horizon,
        "sequenceLength": forecast.sequence_length,
    }


def model_json(model: ModelInfo) -> JsonObject:
    """Return the model as a Model-shaped JSON object."""
    return {
        "name": model.name,
        "description": model.description,
        "defaultVersion": model.default_version,
        "defaultHorizon": model.default_horizon,
        "maxHorizon": model.max_horizon,
        "versions": [_version_json(version) for version in model.versions],
    }


def error_json(error: ForecastError) -> JsonObject:
    """Return the error as {"error": {code, message, reason, domain, fieldViolations}}."""
    return {
        "error": {
            "code": error.code.name,
            "message": error.message,
            "reason": error.reason,
            "domain": error.domain,
            "fieldViolations": [
                {"field": v.field, "description": v.description} for v in error.field_violations
            ],
        }
    }


def forecast_text(forecast: Forecast) -> str:
    """Return a summary line and a STEP/VALUE table."""
    summary = (
        f"{forecast.model} version {forecast.version} ({forecast.routing_decision}), "
        f"window {forecast.sequence_length}, horizon {forecast.horizon}\n"
        f"forecast id {forecast.forecast_id}\n\n"
    )
    rows = [[str(step), _number(value)] for step, value in enumerate(forecast.values, start=1)]
    return summary + _table(["STEP", "VALUE"], rows)


def models_text(models: Sequence[ModelInfo]) -> str:
    """Return one row per model version ("*" marks the default version)."""
    if not models:
        return "no models\n"
    headers = ["MODEL", "VERSION", "STATE", "WINDOW", "RANGE", "DEFAULT", "HORIZON (MAX)"]
    rows = []
    for model in models:
        horizon = f"{model.default_horizon} ({model.max_horizon})"
        if not model.versions:
            rows.append([model.name, "-", "-", "-", "-", "", horizon])
        for version in model.versions:
            default = "*" if version.version == model.default_version else ""
            rows.append([model.name, *_version_cells(version), default, horizon])
    return _table(headers, rows)


def model_text(model: ModelInfo) -> str:
    """Return the model's fields and a table of its versions."""
    fields = [
        ["name", model.name],
        ["description", model.description],
        ["default version", model.default_version or "(none ready)"],
        ["default horizon", str(model.default_horizon)],
        ["max horizon", str(model.max_horizon)],
    ]
    rows = [[*_version_cells(v), v.description] for v in model.versions]
    headers = ["VERSION", "STATE", "WINDOW", "RANGE", "DESCRIPTION"]
    return _table(None, fields) + "\n" + _table(headers, rows)


def error_text(error: ForecastError) -> str:
    """Return "error: CODE: message", one line per field violation, then the reason."""
    lines = [f"error: {error.code.name}: {error.message}"]
    lines += [f"  field {v.field}: {v.description}" for v in error.field_violations]
    if error.reason:
        domain = f" (domain {error.domain})" if error.domain else ""
        lines.append(f"  reason: {error.reason}{domain}")
    return "\n".join(lines) + "\n"


def _version_json(version: ModelVersionInfo) -> JsonObject:
    return {
        "version": version.version,
        "state": version.state,
        "sequenceLength": version.sequence_length,
        "minSequenceLength": version.min_sequence_length,
        "maxSequenceLength": version.max_sequence_length,
        "description": version.description,
    }


def _version_cells(version: ModelVersionInfo) -> list[str]:
    window_range = f"{version.min_sequence_length}-{version.max_sequence_length}"
    return [version.version, version.state, str(version.sequence_length), window_range]


def _number(value: float) -> str:
    return f"{value:.6g}"


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    all_rows = [list(headers), *rows] if headers is not None else list(rows)
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in all_rows
    ]
    return "\n".join(lines) + "\n"
