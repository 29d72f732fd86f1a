"""Turn results and errors into the CLI's output: JSON objects or plain-text tables.

JSON keys are the proto JSON names (lowerCamelCase) so scripts can rely on
them; enum values are the client's labels ("pinned", "ready", "served").
A statistic the gateway could not compute (NaN: no actuals yet, too few
samples) is null in JSON and "-" in the tables. Intervals and quantiles are
columns named by their level in percent (`lo80 hi80` for a 0.8 interval,
`q10` for the 0.1 quantile); in JSON, `intervals`, `quantiles` and
`uncertainty` appear only when they were asked for (as in proto JSON).
A forecast of a series with time has a TIME column (dates alone when every
step is at midnight UTC) and, in JSON, `timestamps` (RFC 3339, UTC, as
proto JSON writes a Timestamp), `frequency` and `filledPoints`; a request
without time renders as before time existed. An operation renders as its
state and progress (`operation_json`: name, kind, done, state, attempt,
progress, the times set, and `error` when it failed); a finished batch's
outcomes as ForecastBatchResponse's `results`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime

from forecast_client.client import (
    ActualsReport,
    BacktestReport,
    BacktestResult,
    Comparison,
    Experiment,
    ExperimentSummary,
    Forecast,
    ModelInfo,
    ModelVersionInfo,
    Operation,
    SeriesOutcome,
    Uncertainty,
    VersionExperiment,
    VersionForecast,
)
from forecast_client.errors import ForecastError

__all__ = [
    "actuals_json",
    "actuals_text",
    "backtest_json",
    "backtest_text",
    "comparison_json",
    "comparison_text",
    "error_json",
    "error_text",
    "experiment_json",
    "experiment_text",
    "forecast_json",
    "forecast_text",
    "model_json",
    "model_text",
    "models_text",
    "operation_json",
    "operation_text",
    "operations_text",
    "outcomes_json",
    "outcomes_text",
]

JsonObject = dict[str, object]
_EXPERIMENT_HEADERS = (
    "VERSION",
    "SERVED",
    "SHADOWED",
    "ACTUALS",
    "MAE",
    "sMAPE %",
    "MASE",
    "P50 ms",
    "P95 ms",
    "P99 ms",
)
_COMPARISON_HEADERS = (
    "VERSIONS",
    "TEST",
    "METRIC",
    "SAMPLES",
    "MEAN DIFF (A-B)",
    "95% CI",
    "P-VALUE",
    "SIGNIFICANT",
)


def forecast_json(forecast: Forecast) -> JsonObject:
    """Return the forecast as a ForecastResponse-shaped JSON object."""
    return {
        "forecastId": forecast.forecast_id,
        "model": forecast.model,
        "version": forecast.version,
        "values": list(forecast.values),
        "routingDecision": _proto_enum("ROUTING_DECISION_", forecast.routing_decision),
        "horizon": forecast.horizon,
        "sequenceLength": forecast.sequence_length,
        **_bands_json(forecast),
        **_time_json(forecast),
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


def error_json(error: ForecastError, hint: str | None = None) -> JsonObject:
    """Return the error as {"error": {code, message, reason, domain, fieldViolations[, hint]}}."""
    body = _error_body(error)
    if hint:
        body["hint"] = hint
    return {"error": body}


def comparison_json(comparison: Comparison) -> JsonObject:
    """Return a CompareVersionsResponse-shaped object; "error" is null for a version that ran."""
    return {
        "model": comparison.model,
        "forecasts": [
            {
                "version": f.version,
                "values": list(f.values),
                "latencyMs": _finite(f.latency_ms),
                "sequenceLength": f.sequence_length,
                "error": _error_body(f.error) if f.error is not None else None,
                **_bands_json(f),
                **_time_json(f),
            }
            for f in comparison.forecasts
        ],
        "differences": [
            {
                "versionA": d.version_a,
                "versionB": d.version_b,
                "meanAbsoluteDifference": _finite(d.mean_absolute_difference),
                "maxAbsoluteDifference": _finite(d.max_absolute_difference),
            }
            for d in comparison.differences
        ],
    }


def actuals_json(report: ActualsReport) -> JsonObject:
    """Return a ReportActualsResponse-shaped object."""
    return {
        "forecastId": report.forecast_id,
        "model": report.model,
        "horizon": report.horizon,
        "stepsReceived": report.steps_received,
        "scores": [
            {
                "version": s.version,
                "role": _proto_enum("SCORE_ROLE_", s.role),
                "stepsScored": s.steps_scored,
                "mae": _finite(s.mae),
                "smape": _finite(s.smape),
                "mase": _finite(s.mase),
            }
            for s in report.scores
        ],
    }


def experiment_json(experiment: Experiment) -> JsonObject:
    """Return a GetExperimentResponse-shaped object."""
    return {
        "model": experiment.model,
        "experiment": experiment.experiment,
        "startedAt": _iso(experiment.started_at),
        "forecasts": experiment.forecasts,
        "versions": [_version_experiment_json(v) for v in experiment.versions],
        "comparisons": [
            {
                "versionA": c.version_a,
                "versionB": c.version_b,
                "metric": c.metric,
                "test": c.test,
                "samples": c.samples,
                "meanDifference": _finite(c.mean_difference),
                "ciLow": _finite(c.ci_low),
                "ciHigh": _finite(c.ci_high),
                "pValue": _finite(c.p_value),
                "significant": c.significant,
                "verdict": c.verdict,
                "conclusive": c.conclusive,
                "sequentialTest": c.sequential_test,
                "sequentialPValue": _finite(c.sequential_p_value),
                "csLow": _finite(c.cs_low),
                "csHigh": _finite(c.cs_high),
            }
            for c in experiment.comparisons
        ],
    }


def experiments_json(experiments: Sequence[ExperimentSummary]) -> JsonObject:
    """Return a ListExperimentsResponse-shaped object."""
    return {
        "experiments": [
            {
                "model": e.model,
                "experiment": e.experiment,
                "startedAt": _iso(e.started_at),
                "forecasts": e.forecasts,
                "current": e.current,
            }
            for e in experiments
        ]
    }


def experiments_text(experiments: Sequence[ExperimentSummary]) -> str:
    """Return one row per experiment ("*" marks the current one)."""
    if not experiments:
        return "no experiments\n"
    rows = [
        [
            e.model,
            e.experiment,
            "*" if e.current else "",
            _iso(e.started_at) or "-",
            str(e.forecasts),
        ]
        for e in experiments
    ]
    return _table(["MODEL", "EXPERIMENT", "CURRENT", "STARTED", "FORECASTS"], rows)


def _iso(seconds: float | None) -> str | None:
    """Unix seconds as an RFC 3339 UTC time (as protobuf's JSON mapping writes a Timestamp)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=UTC).isoformat().replace("+00:00", "Z")


def forecast_text(forecast: Forecast) -> str:
    """Return a summary line and a STEP/VALUE table (with bounds and quantiles when asked for).

    A forecast with intervals or quantiles asked for gets a line saying how
    they were calibrated, and a "note:" line when some are missing.
    """
    summary = (
        f"{forecast.model} version {forecast.version} ({forecast.routing_decision}), "
        f"window {forecast.sequence_length}, horizon {forecast.horizon}\n"
        f"forecast id {forecast.forecast_id}\n"
    )
    summary += _time_line(forecast)
    if forecast.uncertainty is not None:
        summary += _uncertainty_line(forecast.uncertainty, forecast)
    times = _time_cells(forecast.timestamps)
    rows = [
        [str(step + 1), *times[step : step + 1], _number(value), *_band_cells(forecast, step)]
        for step, value in enumerate(forecast.values)
    ]
    headers = ["STEP", *(["TIME"] if times else []), "VALUE", *_band_headers(forecast)]
    return summary + "\n" + _table(headers, rows)


def _time_json(forecast: Forecast | VersionForecast) -> JsonObject:
    """`timestamps`, `frequency` and `filledPoints`, or nothing for a forecast without time."""
    body: JsonObject = {}
    if forecast.timestamps or forecast.frequency:
        body["timestamps"] = [_rfc3339(t) for t in forecast.timestamps]
        body["frequency"] = forecast.frequency
    if forecast.timestamps or forecast.filled_points:
        body["filledPoints"] = forecast.filled_points
    return body


def _time_line(forecast: Forecast | VersionForecast) -> str:
    """A line like "frequency D, 2 points filled"; "" for a forecast without time or filling."""
    parts = [f"frequency {forecast.frequency}"] if forecast.frequency else []
    if forecast.timestamps or forecast.filled_points:
        filled = forecast.filled_points
        parts.append(f"{filled} point{'' if filled == 1 else 's'} filled")
    return ", ".join(parts) + "\n" if parts else ""


def _rfc3339(moment: datetime) -> str:
    """An aware datetime as proto JSON writes a Timestamp: UTC, "Z", fraction only if any."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _time_cells(timestamps: Sequence[datetime]) -> list[str]:
    """The TIME column: dates alone when every step is at midnight UTC, else RFC 3339."""
    utc = [t.astimezone(UTC) for t in timestamps]
    if all(t.time() == datetime.min.time() for t in utc):
        return [t.date().isoformat() for t in utc]
    return [_rfc3339(t) for t in utc]


def models_text(models: Sequence[ModelInfo]) -> str:
    """Return one row per model version ("*" marks the default version)."""
    if not models:
        return "no models\n"
    headers = [
        "MODEL",
        "VERSION",
        "STATE",
        "REPLICAS",
        "WINDOW",
        "RANGE",
        "DEFAULT",
        "HORIZON (MAX)",
        "OUTPUT",
        "FREQUENCIES",
    ]
    rows = []
    reasons = []
    for model in models:
        horizon = f"{model.default_horizon} ({model.max_horizon})"
        if not model.versions:
            rows.append([model.name, "-", "-", "-", "-", "-", "", horizon, "-", "-"])
        for version in model.versions:
            default = "*" if version.version == model.default_version else ""
            rows.append(
                [model.name, *_version_cells(version), default, horizon, *_kind_cells(version)]
            )
            if version.unavailable_reason:
                reasons.append(f"{model.name} {version.version}: {version.unavailable_reason}")
    notes = "".join(f"\n{reason.strip()}" for reason in reasons)
    return _table(headers, rows) + (notes + "\n" if notes else "")


def _kind_cells(version: ModelVersionInfo) -> list[str]:
    """OUTPUT (point, or quantiles with their count) and FREQUENCIES (any when undeclared)."""
    kind = version.output_kind or "point"
    if version.quantile_levels:
        kind = f"{kind} ({len(version.quantile_levels)})"
    return [kind, ",".join(version.frequencies) or "any"]


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
    headers = ["VERSION", "STATE", "REPLICAS", "WINDOW", "RANGE", "DESCRIPTION"]
    return _table(None, fields) + "\n" + _table(headers, rows)


def comparison_text(comparison: Comparison) -> str:
    """Return a table of the versions, a STEP table of their forecasts, and their differences."""
    forecasts = comparison.forecasts
    if not forecasts:
        return f"{comparison.model}: no version to compare\n"
    horizon = max(len(f.values) for f in forecasts)
    summary = f"{comparison.model}: {len(forecasts)} version(s), horizon {horizon}\n\n"
    versions = _table(
        ["VERSION", "WINDOW", "LATENCY ms", "STATUS"],
        [
            [
                f.version,
                str(f.sequence_length),
                _fixed(f.latency_ms, 2),
                "ok" if f.error is None else f"{f.error.code.name}: {f.error.message}",
            ]
            for f in forecasts
        ],
    )
    ran = [f for f in forecasts if f.error is None and f.values]
    text = summary + versions
    if ran:
        timed = max((f.timestamps for f in ran), key=len)
        times = _time_cells(timed)
        rows = [
            [
                str(step + 1),
                *([times[step] if step < len(times) else "-"] if times else []),
                *(cell for f in ran for cell in _version_step_cells(f, step)),
            ]
            for step in range(horizon)
        ]
        headers = [
            f"v{f.version}{suffix}"
            for f in ran
            for suffix in ("", *(f".{h}" for h in _band_headers(f)))
        ]
        text += "\n" + "".join(f"v{f.version}: {_time_line(f)}" for f in ran if _time_line(f))
        text += _table(["STEP", *(["TIME"] if times else []), *headers], rows)
        text += "".join(
            f"note: v{f.version}: {f.uncertainty.detail}\n"
            for f in ran
            if f.uncertainty is not None and not f.uncertainty.calibrated
        )
    if comparison.differences:
        rows = [
            [
                f"{d.version_a} vs {d.version_b}",
                _number(d.mean_absolute_difference),
                _number(d.max_absolute_difference),
            ]
            for d in comparison.differences
        ]
        text += "\n" + _table(["VERSIONS", "MEAN |A-B|", "MAX |A-B|"], rows)
    return text


def backtest_json(report: BacktestReport) -> JsonObject:
    """Return a BacktestResponse-shaped object (NaN scores are null).

    `originTime` appears on a window only when its series had time (as proto
    JSON omits an unset Timestamp); `windowScores` is empty unless per-window
    scores were asked for.
    """
    return {
        "model": report.model,
        "horizon": report.horizon,
        "nWindows": report.n_windows,
        "step": report.step,
        "scale": report.scale,
        "results": [_backtest_result_json(r) for r in report.results],
        "comparisons": [
            {
                "targetA": c.target_a,
                "targetB": c.target_b,
                "test": c.test,
                "windows": c.windows,
                "maseA": _finite(c.mase_a),
                "maseB": _finite(c.mase_b),
                "meanDifference": _finite(c.mean_difference),
                "statistic": _finite(c.statistic),
                "pValue": _finite(c.p_value),
                "lag": c.lag,
                "significant": c.significant,
                "verdict": c.verdict,
            }
            for c in report.comparisons
        ],
    }


def _backtest_result_json(result: BacktestResult) -> JsonObject:
    windows: list[JsonObject] = []
    for w in result.window_scores:
        window: JsonObject = {
            "seriesId": w.series_id,
            "window": w.window,
            "origin": w.origin,
            "mae": _finite(w.mae),
            "smape": _finite(w.smape),
            "mase": _finite(w.mase),
        }
        if w.origin_time is not None:
            window["originTime"] = _rfc3339(w.origin_time)
        windows.append(window)
    return {
        "model": result.model,
        "version": result.version,
        "windows": result.windows,
        "mae": _finite(result.mae),
        "smape": _finite(result.smape),
        "mase": _finite(result.mase),
        "rmse": _finite(result.rmse),
        "steps": [
            {
                "step": s.step,
                "mae": _finite(s.mae),
                "smape": _finite(s.smape),
                "mase": _finite(s.mase),
            }
            for s in result.steps
        ],
        "intervals": [
            {
                "coverage": i.coverage,
                "observed": _finite(i.observed),
                "winkler": _finite(i.winkler),
                "perStepObserved": [_finite(v) for v in i.per_step_observed],
                "perStepWinkler": [_finite(v) for v in i.per_step_winkler],
                "status": _proto_enum("UNCERTAINTY_STATUS_", i.status),
            }
            for i in result.intervals
        ],
        "quantiles": [
            {
                "level": q.level,
                "pinball": _finite(q.pinball),
                "perStep": [_finite(v) for v in q.per_step],
            }
            for q in result.quantiles
        ],
        "windowScores": windows,
    }


def backtest_text(report: BacktestReport) -> str:
    """Return a summary line, one row per target, each comparison's verdict, the scale.

    Columns: TARGET (model:version), WINDOWS, MAE, sMAPE %, MASE, RMSE, then
    per requested coverage `cov80%` (the observed coverage, in percent) and
    `winkler80`, per quantile level `pinball90`. A note names the intervals
    that were not calibrated (their columns are "-"). With per-window scores,
    a table of every window follows (its ORIGIN TIME when the series had time).
    """
    results = report.results
    overlap = " (overlapping)" if report.step < report.horizon else ""
    heading = (
        f"{report.model}: backtest of {len(results)} target(s), {report.n_windows} window(s) "
        f"per series, horizon {report.horizon}, step {report.step}{overlap}\n\n"
    )
    if not results:
        return heading + "no target to backtest\n"
    coverages = [i.coverage for i in results[0].intervals]
    levels = [q.level for q in results[0].quantiles]
    headers = [
        "TARGET",
        "WINDOWS",
        "MAE",
        "sMAPE %",
        "MASE",
        "RMSE",
        *(h for c in coverages for h in (f"cov{_percent(c)}%", f"winkler{_percent(c)}")),
        *(f"pinball{_percent(level)}" for level in levels),
    ]
    rows = [
        [
            r.target,
            str(r.windows),
            _number(r.mae),
            _fixed(r.smape, 3),
            _fixed(r.mase, 3),
            _number(r.rmse),
            *(
                cell
                for i in r.intervals
                for cell in (
                    f"{_fixed(i.observed * 100, 1)}%" if math.isfinite(i.observed) else "-",
                    _short(i.winkler),
                )
            ),
            *(_short(q.pinball) for q in r.quantiles),
        ]
        for r in results
    ]
    text = heading + _table(headers, rows)
    text += "".join(
        f"note: {r.target}: no calibrated {_percent(i.coverage)}% intervals "
        f"({i.status.replace('_', ' ')}): their scores are -\n"
        for r in results
        for i in r.intervals
        if not math.isfinite(i.observed) and i.status == "not_calibrated"
    )
    verdicts = "".join(
        f"{c.target_a} vs {c.target_b}: {c.verdict}\n" for c in report.comparisons if c.verdict
    )
    text += ("\n" + verdicts if verdicts else "") + f"\nscale: {report.scale}\n"
    windows = [(r.target, w) for r in results for w in r.window_scores]
    if windows:
        timed = any(w.origin_time is not None for _, w in windows)
        times = _time_cells([w.origin_time for _, w in windows if w.origin_time is not None])
        cells = iter(times)
        window_rows = [
            [
                target,
                w.series_id,
                str(w.window),
                str(w.origin),
                *([next(cells) if w.origin_time is not None else "-"] if timed else []),
                _number(w.mae),
                _fixed(w.smape, 3),
                _fixed(w.mase, 3),
            ]
            for target, w in windows
        ]
        window_headers = [
            "TARGET",
            "SERIES",
            "WINDOW",
            "ORIGIN",
            *(["ORIGIN TIME"] if timed else []),
            "MAE",
            "sMAPE %",
            "MASE",
        ]
        text += "\n" + _table(window_headers, window_rows)
    return text


def actuals_text(report: ActualsReport) -> str:
    """Return a summary line and one row per scored version (served first, then shadows)."""
    summary = (
        f"forecast {report.forecast_id} ({report.model}): "
        f"{report.steps_received} of {report.horizon} steps received\n\n"
    )
    if not report.scores:
        return summary + "no scores yet\n"
    rows = [
        [
            s.version,
            s.role,
            str(s.steps_scored),
            _number(s.mae),
            _fixed(s.smape, 3),
            _fixed(s.mase, 3),
        ]
        for s in report.scores
    ]
    return summary + _table(["VERSION", "ROLE", "STEPS", "MAE", "sMAPE %", "MASE"], rows)


def experiment_text(experiment: Experiment) -> str:
    """Return the per-version table, one row per comparison of two versions, then coverage."""
    name = experiment.experiment or "default"
    if not experiment.versions:
        return f"{experiment.model}: experiment {name}: no traffic recorded yet\n"
    verdicts = "".join(
        f"{c.version_a} vs {c.version_b}: {c.verdict}\n"
        for c in experiment.comparisons
        if c.verdict
    )
    started = f", since {_iso(experiment.started_at)}" if experiment.started_at else ""
    heading = (
        f"{experiment.model}: experiment {name} ({experiment.forecasts} forecasts{started})\n\n"
    )
    text = (
        heading
        + (verdicts + "\n" if verdicts else "")
        + _table(_EXPERIMENT_HEADERS, [_version_experiment_cells(v) for v in experiment.versions])
    )
    calibration = _calibration_text(experiment.versions)  # last: after the tests
    if not experiment.comparisons:
        return text + "\nno comparison yet (no version pair with scored forecasts)\n" + calibration
    rows = [
        [
            f"{c.version_a} vs {c.version_b}",
            c.test,
            c.metric,
            str(c.samples),
            _fixed(c.mean_difference, 4),
            f"[{_fixed(c.ci_low, 4)}, {_fixed(c.ci_high, 4)}]",
            _p_value(c.p_value),
            "yes" if c.significant else "no",
        ]
        for c in experiment.comparisons
    ]
    note = (
        "mean difference = mean error of A - mean error of B; negative: A is more accurate\n"
        "the t-test is fixed-sample (valid when read once); the verdicts above hold however "
        "often you look\n"
    )
    return text + "\n" + _table(_COMPARISON_HEADERS, rows) + note + calibration


def _calibration_text(versions: Sequence[VersionExperiment]) -> str:
    """Per version: how its intervals covered and its quantiles scored; "" when nothing is scored.

    One line per nominal coverage, e.g. `80%: coverage 0.79 [0.76, 0.82] over
    420 steps, width 3.10, Winkler 4.50`, marked UNDERCOVERING when the Wilson
    interval lies below the nominal; one line per quantile level.
    """
    blocks = []
    for v in versions:
        if not v.interval_coverage and not v.quantile_losses:
            continue
        lines = [f"version {v.version}"]
        lines += [
            f"  {_percent(c.nominal)}%: coverage {_fixed(c.coverage, 2)} "
            f"[{_fixed(c.coverage_low, 2)}, {_fixed(c.coverage_high, 2)}] over {c.steps} steps, "
            f"width {_short(c.mean_width)}, Winkler {_short(c.winkler)}"
            + ("  UNDERCOVERING" if c.undercovering else "")
            for c in v.interval_coverage
        ]
        lines += [
            f"  q{_percent(q.level)}: pinball {_short(q.pinball)}, "
            f"{_fixed(q.below, 2)} of actuals below (ideal {q.level:g}) over {q.steps} steps"
            for q in v.quantile_losses
        ]
        blocks.append("\n".join(lines) + "\n")
    if not blocks:
        return ""
    heading = (
        "intervals and quantiles on the actuals so far (width, Winkler, pinball in scale units)\n"
    )
    return "\n" + heading + "".join(blocks)


def error_text(error: ForecastError, hint: str | None = None) -> str:
    """Return "error: CODE: message", one line per field violation, the reason, the hint."""
    lines = [f"error: {error.code.name}: {error.message}"]
    lines += [f"  field {v.field}: {v.description}" for v in error.field_violations]
    if error.reason:
        domain = f" (domain {error.domain})" if error.domain else ""
        lines.append(f"  reason: {error.reason}{domain}")
    if hint:
        lines.append(f"  hint: {hint}")
    return "\n".join(lines) + "\n"


def _error_body(error: ForecastError) -> JsonObject:
    return {
        "code": error.code.name,
        "message": error.message,
        "reason": error.reason,
        "domain": error.domain,
        "fieldViolations": [
            {"field": v.field, "description": v.description} for v in error.field_violations
        ],
    }


def _version_experiment_json(version: VersionExperiment) -> JsonObject:
    errors, latency = version.errors, version.latency
    return {
        "version": version.version,
        "requestsServed": version.requests_served,
        "requestsShadowed": version.requests_shadowed,
        "actualsReceived": version.actuals_received,
        "errors": {
            "count": errors.count,
            "maeMean": _finite(errors.mae_mean),
            "smapeMean": _finite(errors.smape_mean),
            "maseMean": _finite(errors.mase_mean),
        },
        "latency": {
            "count": latency.count,
            "p50Ms": _finite(latency.p50_ms),
            "p95Ms": _finite(latency.p95_ms),
            "p99Ms": _finite(latency.p99_ms),
        },
        "intervalCoverage": [
            {
                "nominal": c.nominal,
                "steps": c.steps,
                "coverage": _finite(c.coverage),
                "coverageLow": _finite(c.coverage_low),
                "coverageHigh": _finite(c.coverage_high),
                "meanWidth": _finite(c.mean_width),
                "winkler": _finite(c.winkler),
                "undercovering": c.undercovering,
            }
            for c in version.interval_coverage
        ],
        "quantileLosses": [
            {
                "level": q.level,
                "steps": q.steps,
                "pinball": _finite(q.pinball),
                "below": _finite(q.below),
            }
            for q in version.quantile_losses
        ],
    }


def _bands_json(forecast: Forecast | VersionForecast) -> JsonObject:
    """The intervals, quantiles and uncertainty, or nothing when none were asked for."""
    if forecast.uncertainty is None:
        return {}
    u = forecast.uncertainty
    return {
        "intervals": [
            {"coverage": i.coverage, "lower": list(i.lower), "upper": list(i.upper)}
            for i in forecast.intervals
        ],
        "quantiles": [{"level": q.level, "values": list(q.values)} for q in forecast.quantiles],
        "uncertainty": {
            "status": _proto_enum("UNCERTAINTY_STATUS_", u.status),
            "method": u.method,
            "calibrationScores": list(u.calibration_scores),
            "detail": u.detail,
        },
    }


def _band_headers(forecast: Forecast | VersionForecast) -> list[str]:
    """`lo80 hi80` per interval and `q10` per quantile, in response (= request) order."""
    headers = [f"{side}{_percent(i.coverage)}" for i in forecast.intervals for side in ("lo", "hi")]
    return headers + [f"q{_percent(q.level)}" for q in forecast.quantiles]


def _band_cells(forecast: Forecast | VersionForecast, step: int) -> list[str]:
    """The bounds and quantiles of one horizon step, in `_band_headers` order."""
    cells = [_at(bound, step) for i in forecast.intervals for bound in (i.lower, i.upper)]
    return cells + [_at(q.values, step) for q in forecast.quantiles]


def _version_step_cells(forecast: VersionForecast, step: int) -> list[str]:
    return [_at(forecast.values, step), *_band_cells(forecast, step)]


def _uncertainty_line(uncertainty: Uncertainty, forecast: Forecast | VersionForecast) -> str:
    """E.g. "intervals: calibrated, 165 scores per step, split conformal (...)" and the note."""
    status = uncertainty.status.replace("_", " ")
    if not uncertainty.calibrated and (forecast.intervals or forecast.quantiles):
        status = "partly calibrated"  # some columns below are, the note says which are not
    parts = [status]
    if uncertainty.calibration_scores:
        low, high = min(uncertainty.calibration_scores), max(uncertainty.calibration_scores)
        parts.append(f"{low} scores per step" if low == high else f"{low}-{high} scores per step")
    if uncertainty.method:
        parts.append(uncertainty.method)
    line = "intervals: " + ", ".join(parts) + "\n"
    if not uncertainty.calibrated:
        line += f"note: {uncertainty.detail or 'some requested levels are not calibrated'}\n"
    return line


def _proto_enum(prefix: str, label: str) -> str | int:
    """A client label ("weighted") as proto JSON writes the enum (ROUTING_DECISION_WEIGHTED).

    A value newer than the client's stubs (its number as digits) stays a number, as in
    proto JSON.
    """
    return int(label) if label.isdigit() else prefix + label.upper()


def _percent(level: float) -> str:
    """0.8 -> "80", 0.975 -> "97.5" (no float noise)."""
    return f"{level * 100:.6g}"


def _at(values: Sequence[float], step: int) -> str:
    return _number(values[step]) if step < len(values) else "-"


def _short(value: float) -> str:
    return f"{value:#.3g}" if math.isfinite(value) else "-"


def _version_experiment_cells(version: VersionExperiment) -> list[str]:
    errors, latency = version.errors, version.latency
    return [
        version.version,
        str(version.requests_served),
        str(version.requests_shadowed),
        str(version.actuals_received),
        _number(errors.mae_mean),
        _fixed(errors.smape_mean, 3),
        _fixed(errors.mase_mean, 3),
        _fixed(latency.p50_ms, 2),
        _fixed(latency.p95_ms, 2),
        _fixed(latency.p99_ms, 2),
    ]


def _finite(value: float) -> float | None:
    """JSON has no NaN: a statistic the gateway could not compute is null."""
    return value if math.isfinite(value) else None


def _fixed(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _p_value(value: float) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _version_json(version: ModelVersionInfo) -> JsonObject:
    return {
        "version": version.version,
        "state": _proto_enum("MODEL_VERSION_STATE_", version.state),
        "sequenceLength": version.sequence_length,
        "minSequenceLength": version.min_sequence_length,
        "maxSequenceLength": version.max_sequence_length,
        "description": version.description,
        "replicasReady": version.replicas_ready,
        "unavailableReason": version.unavailable_reason,
        "outputKind": version.output_kind,
        "quantileLevels": list(version.quantile_levels),
        "frequencies": list(version.frequencies),
    }


def _version_cells(version: ModelVersionInfo) -> list[str]:
    window_range = f"{version.min_sequence_length}-{version.max_sequence_length}"
    return [
        version.version,
        version.state,
        str(version.replicas_ready),
        str(version.sequence_length),
        window_range,
    ]


def _number(value: float) -> str:
    return f"{value:.6g}" if math.isfinite(value) else "-"


def _table(headers: Sequence[str] | None, rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    all_rows = [list(headers), *rows] if headers is not None else list(rows)
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(all_rows[0]))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in all_rows
    ]
    return "\n".join(lines) + "\n"


def operation_json(operation: Operation) -> JsonObject:
    """Return the operation: name, kind, done, state, attempt, progress, its times, any error."""
    progress = operation.progress
    body: JsonObject = {
        "name": operation.name,
        "kind": operation.kind,
        "done": operation.done,
        "state": operation.state,
        "attempt": operation.attempt,
        "progress": {"done": progress.done, "total": progress.total, "unit": progress.unit},
    }
    times = {
        "createTime": operation.create_time,
        "updateTime": operation.update_time,
        "expireTime": operation.expire_time,
    }
    body.update({key: _rfc3339(moment) for key, moment in times.items() if moment is not None})
    if operation.error is not None:
        body["error"] = _error_body(operation.error)
    return body


def operation_text(operation: Operation) -> str:
    """Return the operation's name, then one "field  value" line each; its error last."""
    rows = [
        ["kind", operation.kind],
        ["state", _state_cell(operation)],
        ["progress", _progress_cell(operation)],
        ["created", _moment_cell(operation.create_time)],
        ["updated", _moment_cell(operation.update_time)],
        ["expires", _moment_cell(operation.expire_time)],
    ]
    text = f"operation {operation.name}\n" + _table(None, rows)
    if operation.error is not None:
        text += error_text(operation.error)
    return text


def operations_text(operations: Sequence[Operation]) -> str:
    """Return one row per operation (NAME KIND STATE PROGRESS CREATED), oldest first."""
    if not operations:
        return "no operations\n"
    rows = [
        [
            o.name,
            o.kind,
            _state_cell(o),
            _progress_cell(o),
            _moment_cell(o.create_time),
        ]
        for o in operations
    ]
    return _table(["NAME", "KIND", "STATE", "PROGRESS", "CREATED"], rows)


def outcomes_json(outcomes: Sequence[SeriesOutcome]) -> JsonObject:
    """Return a ForecastBatchResponse-shaped object: each series' forecast or error."""
    return {
        "results": [
            {"id": o.id, "forecast": forecast_json(o.forecast)}
            if o.forecast is not None
            else {"id": o.id, "error": _error_body(o.error) if o.error is not None else None}
            for o in outcomes
        ]
    }


def outcomes_text(outcomes: Sequence[SeriesOutcome]) -> str:
    """Return each series' forecast (as `forecast_text`) or error, under a "series ID" line."""
    blocks = [
        f"series {o.id}\n"
        + (forecast_text(o.forecast) if o.forecast is not None else "")
        + (error_text(o.error) if o.error is not None else "")
        for o in outcomes
    ]
    return "\n".join(blocks)


def _state_cell(operation: Operation) -> str:
    """The state, with the error's code if it failed and its attempt if it ran more than once."""
    notes = []
    if operation.state == "failed" and operation.error is not None:
        notes.append(operation.error.code.name)
    if operation.attempt > 1:
        notes.append(f"attempt {operation.attempt}")
    return f"{operation.state} ({', '.join(notes)})" if notes else operation.state


def _progress_cell(operation: Operation) -> str:
    progress = operation.progress
    return f"{progress.done}/{progress.total} {progress.unit}".rstrip()


def _moment_cell(moment: datetime | None) -> str:
    return _rfc3339(moment) if moment is not None else "-"
