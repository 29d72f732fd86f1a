"""Calibration scores for any served model version, from a history the user gives.

    python -m training.calibrate_csv --csv FILE --column NAME --model M [--version V]
        [--target localhost:50051] [--horizon H] [--origins N] [--repository DIR]

The version forecasts the CSV's column from rolling origins through a
running gateway (ForecastBatch, the version pinned, so every model Triton
serves works, ONNX or Python, with the gateway's own window, scaling and
slicing); each step's score is ``(actual - forecast) / naive_scale(window)``
as `training.calibrate` writes them for the shipped models, and they go to
``<repository>/<model>/<version>/calibration.json``. The gateway reads the
file at start: restart it (or `make run`) to serve calibrated intervals.
The forecasts are pinned calls, so they also enter the live experiment's
counts: calibrate before opening an experiment, or against a gateway of
your own.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt

from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc
from forecast_gateway.numerics import naive_scales
from training.calibrate import FORMAT, SCORE, render, round_significant
from training.served import MODEL_REPOSITORY

FloatArray = npt.NDArray[np.float64]
BATCH = 256
"""Origins per ForecastBatch call."""


def read_column(path: Path, column: str) -> FloatArray:
    """The column's values in file order; ValueError naming an empty or non-numeric cell."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or column not in rows[0]:
        raise ValueError(f"{path}: no column {column!r}")
    values = []
    for line, row in enumerate(rows, start=2):
        try:
            values.append(float(row[column]))
        except ValueError:
            raise ValueError(f"{path}:{line}: {column} is {row[column]!r}, not a number") from None
    return np.asarray(values)


def origins_for(length: int, window: int, horizon: int, count: int) -> list[int]:
    """The last `count` origins with a full window before and `horizon` actuals after."""
    last = length - horizon
    first = max(window, last - count + 1)
    if first > last:
        raise ValueError(
            f"{length} points are too few for a {window}-point window and {horizon} actuals"
        )
    return list(range(first, last + 1))


def forecast_origins(
    stub: forecast_service_pb2_grpc.ForecastServiceStub,
    model: str,
    version: str,
    series: FloatArray,
    origins: list[int],
    horizon: int,
) -> tuple[FloatArray, FloatArray, int]:
    """Forecasts [origins, horizon], each origin's window scale, and the window the version read."""
    forecasts, scales, window = [], [], 0
    for start in range(0, len(origins), BATCH):
        chunk = origins[start : start + BATCH]
        answer = stub.ForecastBatch(
            pb.ForecastBatchRequest(
                model=model,
                version=version,
                horizon=horizon,
                series=[pb.Series(id=str(o), history=series[:o].tolist()) for o in chunk],
            ),
            timeout=60,
        )
        for origin, result in zip(chunk, answer.results, strict=True):
            if result.HasField("error"):
                raise RuntimeError(f"origin {origin}: {result.error.message}")
            window = result.forecast.sequence_length
            forecasts.append(list(result.forecast.values))
            scales.append(float(naive_scales(series[None, origin - window : origin])[0]))
    return np.asarray(forecasts), np.asarray(scales), window


def scores_of(
    series: FloatArray, origins: list[int], forecasts: FloatArray, scales: FloatArray
) -> FloatArray:
    """Scaled errors [origins, steps]; origins whose window has no scale are dropped."""
    horizon = forecasts.shape[1]
    actuals = np.stack([series[o : o + horizon] for o in origins])
    keep = scales > 0
    scores: FloatArray = (actuals[keep] - forecasts[keep]) / scales[keep, None]
    return scores


def main(argv: list[str] | None = None) -> int:
    """Forecast the rolling origins through the gateway; write the calibration file."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, required=True)
    parser.add_argument("--column", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="", help="default: the model's default version")
    parser.add_argument("--target", default="localhost:50051")
    parser.add_argument("--horizon", type=int, default=0, help="default: the model's max_horizon")
    parser.add_argument("--origins", type=int, default=200)
    parser.add_argument("--repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument(
        "--frequency", default="", help="the series' pandas alias (recorded in the file)"
    )
    args = parser.parse_args(argv)
    series = read_column(args.csv, args.column)
    with grpc.insecure_channel(args.target) as channel:
        stub = forecast_service_pb2_grpc.ForecastServiceStub(channel)
        described = stub.GetModel(pb.GetModelRequest(name=args.model), timeout=10).model
        version = args.version or described.default_version
        spec = next((v for v in described.versions if v.version == version), None)
        if spec is None:
            raise SystemExit(f"{args.model} has no version {version!r}")
        horizon = args.horizon or spec.max_horizon or described.max_horizon
        origins = origins_for(series.shape[0], spec.sequence_length, horizon, args.origins)
        forecasts, scales, window = forecast_origins(
            stub, args.model, version, series, origins, horizon
        )
    scores = scores_of(series, origins, forecasts, scales)
    document = {
        "format": FORMAT,
        "model": args.model,
        "version": version,
        "score": SCORE,
        "window": window,
        **({"frequency": args.frequency} if args.frequency else {}),
        "data": f"{args.csv.name} column {args.column}, origins {origins[0]}..{origins[-1]}",
        "scores": [[round_significant(float(v)) for v in column] for column in scores.T],
    }
    path = args.repository / args.model / version / "calibration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(document))
    sys.stdout.write(f"{path}: {scores.shape[0]} origins x {scores.shape[1]} steps\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
