"""GetExperiment and ReportActuals latency as the A/B store grows, on both backends.

    python -m bench.store_scale --forecasts 1000000      # ~5 min on 2 cores

Fills a store through its own write path (served forecasts, each with a
shadow of the other version), scores some of them, then times the reads.
PostgreSQL runs on a throwaway local server (tools/local_postgres.py).
Figures are recorded in docs/experiments.md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time

import numpy as np

from bench.services import free_port
from forecast_gateway.ab.records import Prediction, RecordedForecast, Role, new_forecast_id
from forecast_gateway.ab.storage import Bounds, open_storage
from forecast_gateway.ab.store import ExperimentStore
from tools.local_postgres import LocalPostgres

MODEL = "lstm_timeseries"
BATCH = 5000
HORIZON = 5


async def measure(url: str, password_file: str, forecasts: int, scored: int) -> dict[str, float]:
    """Fill, score, then time GetExperiment and ReportActuals; figures in ms and records/s."""
    bounds = Bounds(max_forecasts=forecasts * 2, max_age_s=1e9)
    store = ExperimentStore(open_storage(url, bounds, password_file=password_file))
    await store.start()
    rng = np.random.default_rng(1)
    ids: list[str] = []
    started = time.perf_counter()
    for offset in range(0, forecasts, BATCH):
        records: list[RecordedForecast] = []
        for i in range(min(BATCH, forecasts - offset)):
            version, other = ("1", "2") if (offset + i) % 2 else ("2", "1")
            values = tuple(float(v) for v in rng.normal(10, 1, HORIZON))
            forecast_id = new_forecast_id()
            ids.append(forecast_id)
            records.append(
                RecordedForecast(forecast_id, MODEL, HORIZON, 1.0, time.time(),
                                 Prediction(version, Role.SERVED, values, 3.0))
            )  # fmt: skip
            store.record(records[-1])
            store.record_shadow(forecast_id, MODEL, Prediction(other, Role.SHADOW, values, 4.0))
        await store.experiment(MODEL)  # writes the queue
    fill_s = time.perf_counter() - started
    report_ms = []
    for forecast_id in ids[-scored:]:
        began = time.perf_counter()
        await store.report_actuals(forecast_id, rng.normal(10, 1, HORIZON).tolist(), 0)
        report_ms.append((time.perf_counter() - began) * 1000)
    experiment_ms = []
    for _ in range(200):
        began = time.perf_counter()
        await store.experiment(MODEL)
        experiment_ms.append((time.perf_counter() - began) * 1000)
    await store.close()
    return {
        "records_per_s": 2 * forecasts / fill_s,
        "report_p50_ms": statistics.median(report_ms),
        "report_p99_ms": float(np.percentile(report_ms, 99)),
        "experiment_p50_ms": statistics.median(experiment_ms),
        "experiment_p99_ms": float(np.percentile(experiment_ms, 99)),
    }


def main() -> None:
    """Run both backends and print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forecasts", type=int, default=100_000)
    parser.add_argument("--scored", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sqlite = asyncio.run(measure(f"sqlite:///{folder}/s.db", "", args.forecasts, args.scored))
    server = LocalPostgres(free_port())
    server.start()
    try:
        url = server.create_database("scale")
        pg = asyncio.run(measure(url, str(server.password_file), args.forecasts, args.scored))
    finally:
        server.stop()
    for name, figures in (("sqlite", sqlite), ("postgresql", pg)):
        line = " ".join(f"{k}={v:,.1f}" for k, v in figures.items())
        sys.stdout.write(f"{name} forecasts={args.forecasts:,} {line}\n")


if __name__ == "__main__":
    main()
