"""Held-out accuracy by frequency: the shipped versions, seasonal naive, AutoETS, quantile_mlp.

    python -m training.evaluate_frequencies [--no-ets]

Every series of `training.corpus.evaluation_corpus` is cut into rolling
windows at its end: origins ``n - k * h`` for k = windows..1 (step = horizon,
the last window ending at the last point, as statsforecast's
``cross_validation`` lays them out), with the frequency's horizon h. Every
method forecasts from the points before each origin:

- ``quantile_mlp``: model_repository/quantile_mlp/1/model.onnx in onnxruntime,
  raw values of the last 56 points (its intervals: its own quantiles);
- ``lstm_timeseries`` v1/v2 and ``moving_average`` v1/v2: the served model code
  (``training.calibrate.ServedVersion``) with the gateway's z-scoring, their
  intervals the gateway's split-conformal ones from their calibration.json;
- ``seasonal_naive``: the last season repeated (normal intervals from its
  in-sample residuals, sd growing with sqrt(1 + seasons ahead));
- ``auto_ets``: statsforecast's AutoETS on the last `ETS_HISTORY` points
  (season = the frequency's, none above 24 points: ETS refuses m > 24).

MASE divides the MAE of a series' windows by the in-sample MAE of the
seasonal-naive forecast on the series' history before its first window.
Winkler scores are divided by the same scale. Per frequency: geometric mean
of the series' MASE, pooled coverage, mean scaled Winkler. The table goes to
training/results/frequencies.json.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from forecast_gateway.core.conformal import bound_table, sorted_pool
from forecast_gateway.numerics import Levels, naive_scales
from training.corpus import FREQUENCIES, Series, evaluation_corpus
from training.quantile_network import LEVELS, WINDOW
from training.served import MODEL_REPOSITORY, REPO_ROOT

FloatArray = npt.NDArray[np.float64]

COVERAGES = (0.8, 0.95)
ETS_HISTORY = 1000
RESULTS_PATH = Path(__file__).resolve().parent / "results" / "frequencies.json"
SHIPPED = (
    ("lstm_timeseries", "1"),
    ("lstm_timeseries", "2"),
    ("moving_average", "1"),
    ("moving_average", "2"),
)
NORMAL_Z = {0.8: 1.2815516, 0.95: 1.9599640}


@dataclass(frozen=True)
class Windows:
    """The evaluation windows of the series of one frequency."""

    series: list[Series]
    horizon: int
    season: int
    origins: list[list[int]]  # per series

    @classmethod
    def of(cls, series: list[Series], alias: str) -> Windows:
        """The rolling windows (step = horizon) at the end of each series."""
        frequency = FREQUENCIES[alias]
        h = frequency.horizon
        origins = [
            [s.values.shape[0] - k * h for k in range(frequency.windows, 0, -1)] for s in series
        ]
        return cls(series, h, frequency.season, origins)

    def histories(self) -> list[FloatArray]:
        """The whole history before every origin, series by series."""
        return [s.values[:o] for s, os in zip(self.series, self.origins, strict=True) for o in os]

    def last(self, points: int) -> FloatArray:
        """The last `points` before every origin: [windows, points]."""
        return np.stack([h[-points:] for h in self.histories()])

    def actuals(self) -> FloatArray:
        """The `horizon` points from every origin on: [windows, horizon]."""
        return np.stack(
            [
                s.values[o : o + self.horizon]
                for s, os in zip(self.series, self.origins, strict=True)
                for o in os
            ]
        )

    def owner(self) -> npt.NDArray[np.int64]:
        """The series index of every window."""
        return np.repeat(np.arange(len(self.series)), [len(o) for o in self.origins])

    def scales(self) -> FloatArray:
        """Each series' MASE scale: seasonal-naive in-sample MAE before its first window."""
        m = self.season
        values = [s.values[: os[0]] for s, os in zip(self.series, self.origins, strict=True)]
        return np.array([float(np.mean(np.abs(v[m:] - v[:-m]))) for v in values])


@dataclass(frozen=True)
class Prediction:
    """Point forecasts [windows, h] and, per coverage, (lower, upper) bounds (or None)."""

    point: FloatArray
    intervals: dict[float, tuple[FloatArray, FloatArray]] | None


Method = Callable[[Windows], Prediction]


# --- the methods -------------------------------------------------------------------------


def seasonal_naive(windows: Windows) -> Prediction:
    """The value one season before each target; normal intervals from in-sample residuals."""
    m, h = windows.season, windows.horizon
    last = windows.last(m)
    steps = np.arange(h)
    point = last[:, steps % m]
    sd = np.array([np.std(x[m:] - x[:-m]) for x in windows.histories()])
    widen = np.sqrt(1 + steps // m)
    intervals = {
        c: (point - NORMAL_Z[c] * sd[:, None] * widen, point + NORMAL_Z[c] * sd[:, None] * widen)
        for c in COVERAGES
    }
    return Prediction(point, intervals)


def auto_ets(windows: Windows) -> Prediction:
    """AutoETS (statsforecast) fitted on each history (its last ETS_HISTORY points)."""
    from statsforecast.models import AutoETS

    season = windows.season if 1 < windows.season <= 24 else 1
    rows = []
    for history in windows.histories():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = AutoETS(season_length=season).forecast(
                y=history[-ETS_HISTORY:], h=windows.horizon, level=[80, 95]
            )
        rows.append(fit)
    point = np.stack([r["mean"] for r in rows])
    intervals = {
        c: (
            np.stack([r[f"lo-{c * 100:g}"] for r in rows]),
            np.stack([r[f"hi-{c * 100:g}"] for r in rows]),
        )
        for c in COVERAGES
    }
    return Prediction(point, intervals)


def quantile_mlp(path: Path = MODEL_REPOSITORY / "quantile_mlp" / "1" / "model.onnx") -> Method:
    """The exported graph in onnxruntime: raw windows in, its own quantiles as intervals."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 2
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def predict(windows: Windows) -> Prediction:
        history = windows.last(WINDOW).astype(np.float32)
        _, quantiles = session.run(None, {"HISTORY": history})
        q = np.asarray(quantiles, dtype=np.float64)[:, : windows.horizon, :]
        intervals = {}
        for c in COVERAGES:
            tail = round((1 - c) / 2, 4)
            low, high = LEVELS.index(tail), LEVELS.index(round(1 - tail, 4))
            intervals[c] = (q[:, :, low], q[:, :, high])
        return Prediction(q[:, :, LEVELS.index(0.5)], intervals)

    return predict


def shipped(model: str, version: str) -> Method:
    """A shipped version as served (gateway z-scoring) with its split-conformal intervals."""
    from training.calibrate import ServedVersion

    served = ServedVersion.load(model, version)
    document = json.loads((MODEL_REPOSITORY / model / version / "calibration.json").read_text())
    pools = [sorted_pool(step) for step in document["scores"]]

    def predict(windows: Windows) -> Prediction:
        history = windows.last(served.window)
        point = np.asarray(served.forecaster()(history, windows.horizon), dtype=np.float64)
        table = bound_table(pools[: windows.horizon], Levels(coverages=COVERAGES))
        scale = np.array(naive_scales(history))[:, None]
        intervals = {
            c: (point + scale * table[2 * i], point + scale * table[2 * i + 1])
            for i, c in enumerate(COVERAGES)
        }
        return Prediction(point, intervals)

    return predict


# --- the scores --------------------------------------------------------------------------


def scores(windows: Windows, prediction: Prediction) -> dict[str, Any]:
    """MASE (geometric mean over series), coverage and scaled Winkler of one method."""
    actual, owner, scale = windows.actuals(), windows.owner(), windows.scales()
    error = np.abs(prediction.point - actual).mean(axis=1)
    mase = np.array([error[owner == i].mean() / scale[i] for i in range(scale.shape[0])])
    result: dict[str, Any] = {
        "mase_gmean": float(np.exp(np.mean(np.log(mase)))),
        "mase_mean": float(np.mean(mase)),
        "mase_per_series": {
            s.name: round(float(v), 4) for s, v in zip(windows.series, mase, strict=True)
        },
    }
    for c, (low, high) in (prediction.intervals or {}).items():
        alpha = 1 - c
        below, above = np.maximum(low - actual, 0), np.maximum(actual - high, 0)
        winkler = (high - low) + 2 / alpha * (below + above)
        result[f"coverage_{c * 100:g}"] = float(np.mean((actual >= low) & (actual <= high)))
        result[f"winkler_{c * 100:g}"] = float(np.mean(winkler / scale[owner][:, None]))
    return result


def methods(with_ets: bool) -> dict[str, Method]:
    """Every method to evaluate, by the name the table uses."""
    table: dict[str, Method] = {"quantile_mlp": quantile_mlp(), "seasonal_naive": seasonal_naive}
    if with_ets:
        table["auto_ets"] = auto_ets
    for model, version in SHIPPED:
        table[f"{model}/{version}"] = shipped(model, version)
    return table


def evaluate(with_ets: bool = True) -> dict[str, Any]:
    """The figures per frequency and overall."""
    corpus = evaluation_corpus()
    chosen = methods(with_ets)
    frequencies: dict[str, Any] = {}
    for alias in FREQUENCIES:
        windows = Windows.of([s for s in corpus if s.frequency == alias], alias)
        row: dict[str, Any] = {
            "series": len(windows.series),
            "windows": int(windows.owner().shape[0]),
            "horizon": windows.horizon,
            "season": windows.season,
            "sources": sorted({s.source for s in windows.series}),
            "methods": {},
        }
        for name, method in chosen.items():
            started = time.perf_counter()
            row["methods"][name] = scores(windows, method(windows))
            row["methods"][name]["seconds"] = round(time.perf_counter() - started, 2)
        frequencies[alias] = row
        print(f"{alias}: {row['series']} series, {row['windows']} windows, h={windows.horizon}")
    return {"frequencies": frequencies, "overall": overall(frequencies, list(chosen))}


def overall(frequencies: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Geometric mean over frequencies of each method's per-frequency geometric-mean MASE."""
    summary: dict[str, Any] = {}
    for name in names:
        logs = [np.log(f["methods"][name]["mase_gmean"]) for f in frequencies.values()]
        summary[name] = {"mase_gmean": float(np.exp(np.mean(logs)))}
    mlp = summary["quantile_mlp"]["mase_gmean"]
    summary["target"] = {
        "beats_seasonal_naive_everywhere": all(
            f["methods"]["quantile_mlp"]["mase_gmean"]
            < f["methods"]["seasonal_naive"]["mase_gmean"]
            for f in frequencies.values()
        ),
        "within_10pct_of_auto_ets": (
            bool(mlp <= 1.1 * summary["auto_ets"]["mase_gmean"]) if "auto_ets" in summary else None
        ),
    }
    return summary


def markdown(results: dict[str, Any]) -> str:
    """The table for docs/models.md: MASE (geometric mean) and 80/95% coverage and Winkler."""
    names = list(results["overall"])[:-1]
    lines = [
        "| frequency | method | MASE | cov 80 | Winkler 80 | cov 95 | Winkler 95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for alias, row in results["frequencies"].items():
        for name in names:
            m = row["methods"][name]
            cells = [f"{m['mase_gmean']:.3f}"] + [
                f"{m[k]:.3f}" if k in m else "-"
                for k in ("coverage_80", "winkler_80", "coverage_95", "winkler_95")
            ]
            label = f"{alias} ({row['series']} series, h={row['horizon']})"
            lines.append(f"| {label} | {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| method | geometric-mean MASE over frequencies |")
    lines.append("|---|---|")
    lines += [f"| {n} | {results['overall'][n]['mase_gmean']:.3f} |" for n in names]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Evaluate every method, write the JSON, print the markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--no-ets", action="store_true", help="skip AutoETS (the slow part)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = evaluate(with_ets=not args.no_ets)
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS_PATH.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_PATH.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    print(f"target: {results['overall']['target']}")
    print(f"wrote {RESULTS_PATH.relative_to(REPO_ROOT)} in {results['seconds']:.0f}s")


if __name__ == "__main__":
    main()
