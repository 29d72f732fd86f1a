"""The gateway's own Python per Forecast call, in process, without gRPC or Triton.

``python -m bench.hotpath [--calls N] [--rounds R]`` runs the request
wrapper (interceptor), the servicer, the forecaster, the coalescer, the log
line, the metrics and A/B recording (SQLite in a scratch directory) of one
``Forecast`` call back to back, against the shipped in-process backend
(`backends.fake.FakeBackend`, answering zeros at once), and prints the CPU
time per call of each round (its minimum is the figure to compare). The
workload is `make bench`'s: lstm_timeseries v1 pinned, 10 points, horizon
5, with the shipped routing policy's shape (a 10/90 split, shadow v1,
fallback). Comparing commits: run it on each tree in turn; the gRPC hop
itself is what `make bench`'s echo cells measure. ``--time`` adds time to
every request: ``start`` (start + "D"), ``monthly`` (start + "MS", calendar
stepping), ``timestamps`` (one timestamp per point, "D"), ``gaps`` (the
same with two days missing in the window and a linear fill).
``--frequency W-SAT`` puts start, timestamps and gaps on the weekly grid
`make bench`'s time cells use (a calendar frequency) instead of days.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.timecost import GRIDS, TIMES, grid, with_time
from bench.workload import Workload
from forecast.v1 import forecast_service_pb2 as pb
from forecast_gateway.ab import DEFAULT_EXPERIMENT, Bounds, ExperimentStore
from forecast_gateway.ab.storage import open_storage
from forecast_gateway.api import interceptors
from forecast_gateway.api.service import ForecastServicer
from forecast_gateway.backends.base import Rows
from forecast_gateway.backends.fake import FakeBackend, FakeModel
from forecast_gateway.backtest.runner import Backtester
from forecast_gateway.config import ModelConfig
from forecast_gateway.core.catalog import ModelCatalog
from forecast_gateway.core.forecaster import Forecaster
from forecast_gateway.core.routing import Fallback, Policy, Shadow
from forecast_gateway.logs import configure_logging

PARAMETERS = {
    "default_horizon": "5",
    "max_horizon": "64",
    "v1.sequence_length": "10",
    "v2.sequence_length": "52",
}


def zeros(windows: Rows, horizon: int) -> Rows:
    """Zeros of the asked shape: the backend costs next to nothing."""
    return np.zeros((windows.shape[0], horizon), dtype=np.float32)


def instant_backend() -> FakeBackend:
    """lstm_timeseries v1 and v2, ready, answering at once."""
    model = FakeModel(
        dict(PARAMETERS), {"1": "READY", "2": "READY"}, forecasts={"1": zeros, "2": zeros}
    )
    return FakeBackend({"lstm_timeseries": model})


class ShippedRouting:
    """The shape of config/routing.toml's lstm_timeseries policy."""

    def policy(self, name: str) -> Policy:
        """A 10/90 split, v1 as a shadow, the moving average as fallback."""
        return Policy(
            split=(("1", 10.0), ("2", 90.0)),
            shadow=Shadow("1", 100.0),
            fallback=Fallback("moving_average", "1"),
        )

    def experiment(self, name: str) -> str:
        """The default experiment."""
        return DEFAULT_EXPERIMENT


class Context:
    """The few ServicerContext methods the wrapper and servicer use."""

    def time_remaining(self) -> float:
        """A generous deadline."""
        return 20.0

    def invocation_metadata(self) -> tuple[()]:
        """No metadata."""
        return ()

    def set_trailing_metadata(self, metadata: object) -> None:
        """Dropped."""

    async def abort_with_status(self, status: object) -> None:
        """A failed call is a bug here."""
        raise RuntimeError(f"the call failed: {status}")


async def measure(
    calls: int, rounds: int, scratch: Path, time_kind: str = "none", frequency: str = "D"
) -> list[float]:
    """CPU µs per call of each round."""
    backend = instant_backend()
    catalog = ModelCatalog(models=(ModelConfig("lstm_timeseries"),))
    await catalog.refresh(backend)  # as the gateway reads its backend
    storage = open_storage(
        "", Bounds(1_000_000, 1e9), default_path=str(scratch / "ab.sqlite3"), password_file=""
    )
    store = ExperimentStore(storage)
    await store.start()
    forecaster = Forecaster(catalog, backend, ShippedRouting(), store, 10_000, 1.0)
    backtester = Backtester.of(forecaster, 4096)
    servicer = ForecastServicer(
        forecaster,
        catalog,
        store,
        default_timeout_s=10.0,
        max_batch_series=4096,
        max_operation_series=100_000,
        stream_max_pending=64,
        backtester=backtester,
        backtest_timeout_s=300.0,
    )
    workload = Workload()
    requests = [
        with_time(
            pb.ForecastRequest(
                model=workload.model,
                version=workload.version,
                history=history.tolist(),
                horizon=workload.horizon,
            ),
            time_kind,
            grid(frequency),
        ).SerializeToString()
        for history in workload.histories()
    ]
    call = interceptors.wrap_unary("Forecast", servicer.Forecast)
    context = Context()

    async def run(count: int) -> None:
        for i in range(count):
            request = pb.ForecastRequest.FromString(requests[i % len(requests)])
            (await call(request, context)).SerializeToString()  # type: ignore[arg-type]
            if i % 64 == 0:
                await asyncio.sleep(0)  # deferred log lines, the A/B flusher
        await asyncio.sleep(0.1)

    await run(min(calls, 2000))  # warm-up
    results = []
    for _ in range(rounds):
        backend.calls.clear()  # the fake's record of its calls, kept bounded (not timed)
        started = time.process_time()
        await run(calls)
        results.append((time.process_time() - started) / calls * 1e6)
    await store.close()
    return results


def main() -> None:
    """Parse the command line, measure, print one line per round and the minimum."""
    parser = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time", choices=TIMES, default="none")
    parser.add_argument("--frequency", choices=tuple(GRIDS), default="D")
    args = parser.parse_args()
    log = open(os.devnull, "w")  # noqa: SIM115 - the request lines, for the process's life
    sys.stderr = log
    configure_logging("json", "info")
    with tempfile.TemporaryDirectory(prefix="forecast-hotpath-") as scratch:
        rounds = asyncio.run(
            measure(args.calls, args.rounds, Path(scratch), args.time, args.frequency)
        )
    for index, value in enumerate(rounds, 1):
        sys.stdout.write(f"round {index}: {value:.1f} us CPU per call\n")
    sys.stdout.write(f"min {min(rounds):.1f} us CPU per call ({args.calls} calls per round)\n")


if __name__ == "__main__":
    main()
