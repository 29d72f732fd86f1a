"""Held-out conformal calibration scores for each served model version, and their evaluation.

    python -m training.calibrate [--model M] [--version V]     (default: all four versions)

The rolling origins of the co2 test part (after the 80% training part) that
have `MAX_HORIZON` actuals are split in two: the earlier half calibrates,
the later half evaluates, with the origins in between dropped so that every
calibration origin ``t`` has ``t + MAX_HORIZON <= `` the first evaluation
origin (no evaluation actual is seen by calibration). At each calibration
origin the version forecasts `MAX_HORIZON` steps exactly as served: its
default window, normalized by the gateway's rule, through the served
``TritonPythonModel`` (``<model>/<version>/model.py``, initialized from
config.pbtxt as Triton does) and its batch path, denormalized. The score of
a step is ``(actual - forecast) / naive_scale(window)`` (``numerics.naive_scale``;
an origin whose window has scale 0 is skipped). The scores go to
``model_repository/<model>/<version>/calibration.json``, one list per step.

The evaluation half measures the static split-conformal intervals built from
those scores (`conformal.bound_table`) against a naive forecast calibrated
the same way; the figures go to training/results/calibration.json.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

from forecast_gateway.core.conformal import bound_table, sorted_pool
from forecast_gateway.numerics import Levels, naive_scales
from training.data import load_co2, load_co2_dates, train_size
from training.evaluate import Backtest, WindowForecaster, naive_forecast, z_forecaster
from training.served import MODEL_REPOSITORY, REPO_ROOT, load_served_module

FloatArray = npt.NDArray[np.float64]

MAX_HORIZON = 64  # the models' max_horizon: one score pool per step 1..64
VERSIONS = (
    ("lstm_timeseries", "1"),
    ("lstm_timeseries", "2"),
    ("moving_average", "1"),
    ("moving_average", "2"),
)
SCORE = "(actual - forecast) / naive_scale(window)"
SIGNIFICANT_DIGITS = 6
FORMAT = 1
LEVELS = Levels(coverages=(0.8, 0.95))
REPORT_STEPS = (1, 5, 12)
MEAN_STEPS = 12  # the figures are also averaged over steps 1..MEAN_STEPS
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "calibration.json"


def calibration_path(model: str, version: str) -> Path:
    """Where the calibration scores of `model` `version` are shipped (next to its weights)."""
    return MODEL_REPOSITORY / model / version / "calibration.json"


# --- the split ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    """The calibration (earlier) and evaluation (later) origins of the co2 test part."""

    series: FloatArray
    calibration: Backtest
    evaluation: Backtest

    @classmethod
    def of_co2(cls, horizon: int = MAX_HORIZON) -> Split:
        """Split the rolling origins of co2's test part (see `of`)."""
        series = load_co2()
        return cls.of(series, train_size(series.shape[0]), horizon)

    @classmethod
    def of(cls, series: FloatArray, cut: int, horizon: int = MAX_HORIZON) -> Split:
        """The origins from `cut` on with `horizon` actuals, split in two halves with a gap.

        The `horizon` - 1 origins between the halves are dropped, so the last
        calibration origin's actuals end right before the first evaluation origin.
        """
        origins = Backtest.over_test_part(series, cut, horizon).origins
        calibration_count = (origins.shape[0] - (horizon - 1)) // 2
        if calibration_count < 1:
            raise ValueError(f"too few origins ({origins.shape[0]}) for a split at h={horizon}")
        calibration = origins[:calibration_count]
        evaluation = origins[calibration_count + horizon - 1 :]
        if int(calibration[-1]) + horizon > int(evaluation[0]):
            raise AssertionError("calibration actuals overlap the evaluation part")
        return cls(
            series, Backtest(series, calibration, horizon), Backtest(series, evaluation, horizon)
        )


# --- the served forecasters --------------------------------------------------------------


def model_config(model: str) -> dict[str, Any]:
    """`model`'s config.pbtxt as the JSON Triton passes to ``initialize`` (args["model_config"])."""
    text = (MODEL_REPOSITORY / model / "config.pbtxt").read_text()
    message = text_format.Parse(text, model_config_pb2.ModelConfig())
    config: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return config


@dataclass(frozen=True)
class ServedVersion:
    """One version's ``TritonPythonModel``, initialized as Triton does (CPU instance)."""

    model: str
    version: str
    instance: Any

    @classmethod
    def load(cls, model: str, version: str) -> ServedVersion:
        """Import ``<model>/<version>/model.py`` and initialize it from config.pbtxt."""
        module = load_served_module(f"{model}/{version}/model.py")
        instance = module.TritonPythonModel()
        instance.initialize(
            {
                "model_config": json.dumps(model_config(model)),
                "model_name": model,
                "model_version": version,
                "model_repository": str(MODEL_REPOSITORY / model),
                "model_instance_kind": "CPU",
                "model_instance_device_id": "0",
            }
        )
        return cls(model, version, instance)

    @property
    def window(self) -> int:
        """The version's default window (config.pbtxt sequence_length)."""
        return int(self.instance.limits.sequence_length)

    def z_predict(self, z: npt.NDArray[np.float32], horizon: int) -> npt.NDArray[np.float32]:
        """Forecast normalized windows through the served batch path (validation, FP32 out)."""
        backend = load_served_module("forecast_backend.py")
        steps = np.full((z.shape[0], 1), horizon, dtype=np.int32)
        (result,) = backend.forecast_batch(
            [z], [steps], self.instance.limits, self.instance.predict
        )
        if isinstance(result, backend.RequestError):
            raise RuntimeError(f"{self.model} v{self.version}: {result.message}")
        forecast: npt.NDArray[np.float32] = result
        return forecast

    def forecaster(self) -> WindowForecaster:
        """Raw windows in, forecasts in series units out, as the gateway serves them."""
        return z_forecaster(self.z_predict)


# --- scores ------------------------------------------------------------------------------


def scaled_scores(backtest: Backtest, forecaster: WindowForecaster, window: int) -> FloatArray:
    """Signed scaled errors ``[origins, horizon]``; origins whose window has scale 0 are dropped."""
    windows = backtest.windows(window)
    scales = np.array(naive_scales(windows))
    kept = scales > 0
    forecast = np.asarray(forecaster(windows[kept], backtest.horizon), dtype=np.float64)
    errors: FloatArray = (backtest.actuals()[kept] - forecast) / scales[kept, None]
    return errors


def round_significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`value` rounded to `digits` significant digits (what the file stores)."""
    return float(f"{value:.{digits}g}")


def origin_span(split: Split) -> str:
    """The calibration origins as dates and indexes, for the file's ``data`` field."""
    dates = load_co2_dates()
    origins = split.calibration.origins
    first, last = int(origins[0]), int(origins[-1])
    return (
        f"co2 weekly (statsmodels), held-out calibration origins {dates[first]}..{dates[last]} "
        f"(points {first}..{last} of {split.series.shape[0]}; evaluation from point "
        f"{int(split.evaluation.origins[0])})"
    )


def calibration_document(served: ServedVersion, split: Split) -> dict[str, Any]:
    """The content of a version's calibration.json: the scores per step, oldest origin first."""
    scores = scaled_scores(split.calibration, served.forecaster(), served.window)
    return {
        "format": FORMAT,
        "model": served.model,
        "version": served.version,
        "score": SCORE,
        "window": served.window,
        "frequency": "W-SAT",  # co2 weekly: the gateway flags other frequencies NOT_CALIBRATED
        "data": origin_span(split),
        "scores": [[round_significant(float(v)) for v in column] for column in scores.T],
    }


def render(document: dict[str, Any]) -> str:
    """The file's text: one header field per line, then one line per horizon step."""
    lines = ["{"]
    lines += [
        f"  {json.dumps(key)}: {json.dumps(value)},"
        for key, value in document.items()
        if key != "scores"
    ]
    steps = [json.dumps(row, separators=(",", ":")) for row in document["scores"]]
    lines.append('  "scores": [')
    lines.append(",\n".join(f"    {row}" for row in steps))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- the offline evaluation --------------------------------------------------------------


def interval_figures(
    calibration: Sequence[Sequence[float]] | FloatArray, evaluation: FloatArray
) -> dict[str, dict[str, dict[str, float]]]:
    """Coverage, width and Winkler score of the static intervals, in scale units.

    `calibration` holds one list of scores per step; `evaluation` is
    ``[origins, steps]``. A scaled interval [lo, hi] covers an actual exactly
    when its score lies in [lo, hi]; its width over the origin's scale is
    ``hi - lo``. Keys: coverage (as a string), then step or ``mean_1_<n>``.
    """
    pools = [sorted_pool(calibration[step]) for step in range(MEAN_STEPS)]
    table = bound_table(pools, LEVELS)
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for index, coverage in enumerate(LEVELS.coverages):
        alpha = 1.0 - coverage
        per_step = []
        for step in range(MEAN_STEPS):
            low, high = table[2 * index, step], table[2 * index + 1, step]
            actual = evaluation[:, step]
            below, above = np.maximum(low - actual, 0.0), np.maximum(actual - high, 0.0)
            winkler = (high - low) + (2.0 / alpha) * (below + above)
            per_step.append(
                {
                    "coverage": float(np.mean((actual >= low) & (actual <= high))),
                    "width": float(high - low),
                    "winkler": float(np.mean(winkler)),
                }
            )
        rows = {str(step): per_step[step - 1] for step in REPORT_STEPS}
        rows[f"mean_1_{MEAN_STEPS}"] = {
            key: float(np.mean([row[key] for row in per_step])) for key in per_step[0]
        }
        figures[f"{coverage:g}"] = {
            name: {key: round(value, 4) for key, value in row.items()} for name, row in rows.items()
        }
    return figures


def evaluate_version(
    served: ServedVersion, split: Split, calibration: Sequence[Sequence[float]]
) -> dict[str, Any]:
    """The model's and the naive forecast's interval figures on the evaluation origins."""
    window = served.window
    model_scores = scaled_scores(split.evaluation, served.forecaster(), window)
    naive_calibration = scaled_scores(split.calibration, naive_forecast, window)
    naive_scores = scaled_scores(split.evaluation, naive_forecast, window)
    scales = naive_scales(split.evaluation.windows(window))
    return {
        "window": window,
        "calibration_origins": len(calibration[0]),
        "evaluation_origins": int(model_scores.shape[0]),
        "mean_naive_scale_ppm": round(float(np.mean(scales)), 4),
        "model": interval_figures(calibration, model_scores),
        "naive": interval_figures(naive_calibration.T, naive_scores),
    }


# --- the command -------------------------------------------------------------------------


def write_results(figures: dict[str, Any], split: Split) -> None:
    """Merge `figures` (per ``model/version``) into training/results/calibration.json."""
    previous: dict[str, Any] = {}
    if RESULTS_PATH.exists():
        previous = json.loads(RESULTS_PATH.read_text()).get("versions", {})
    dates = load_co2_dates()
    calibration, evaluation = split.calibration.origins, split.evaluation.origins
    results = {
        "data": "co2 weekly (statsmodels), test part after the first 80%",
        "score": SCORE,
        "units": "width and Winkler score divided by the origin's naive_scale",
        "levels": list(LEVELS.coverages),
        "calibration_origins": [str(dates[calibration[0]]), str(dates[calibration[-1]])],
        "evaluation_origins": [str(dates[evaluation[0]]), str(dates[evaluation[-1]])],
        "versions": dict(sorted({**previous, **figures}.items())),
    }
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")


def print_figures(name: str, figures: dict[str, Any]) -> None:
    """One line per level and method: coverage / width / Winkler at each reported step."""
    for method in ("model", "naive"):
        for level, rows in figures[method].items():
            cells = "  ".join(
                f"h{step.removeprefix('mean_')}: {row['coverage']:.3f}/{row['width']:.2f}/"
                f"{row['winkler']:.2f}"
                for step, row in rows.items()
            )
            print(f"{name:18s} {method:5s} {level:>4s}  {cells}")


def main(argv: list[str] | None = None) -> None:
    """Write the calibration scores of the chosen versions and evaluate them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", choices=sorted({m for m, _ in VERSIONS}))
    parser.add_argument("--version", choices=sorted({v for _, v in VERSIONS}))
    args = parser.parse_args(argv)
    chosen = [(m, v) for m, v in VERSIONS if args.model in (None, m) and args.version in (None, v)]
    split = Split.of_co2()
    print(
        f"origins: calibration {len(split.calibration.origins)}, "
        f"evaluation {len(split.evaluation.origins)} ({origin_span(split)})"
    )
    figures = {}
    for model, version in chosen:
        started = time.perf_counter()
        served = ServedVersion.load(model, version)
        document = calibration_document(served, split)
        path = calibration_path(model, version)
        path.write_text(render(document))
        seconds = time.perf_counter() - started
        print(f"wrote {path.relative_to(REPO_ROOT)} in {seconds:.1f}s")
        name = f"{model}/{version}"
        figures[name] = evaluate_version(served, split, document["scores"])
        print_figures(name, figures[name])
    write_results(figures, split)
    print(f"figures: {RESULTS_PATH.relative_to(REPO_ROOT)} (coverage/width/Winkler, scale units)")


if __name__ == "__main__":
    main()
