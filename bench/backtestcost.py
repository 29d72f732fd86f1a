"""A backtest's windows per second, against the same windows sent as Forecast calls.

The backtest cells (section ``backtest``, ``python -m bench --only
backtest``) take one co2-like weekly series of `POINTS` points (the bench's
own generator, `bench.workload.Workload`, dated by start + ``W-SAT``) and
its last W rolling-origin windows (horizon `HORIZON`, step `STEP`: origins
T - h - step(W-1-k), as the gateway lays them) for each model version in
`CELL_VARIANTS`, and send them through the real gateway and Triton four
ways, one cell after the other:

- ``backtest``: one Backtest call with the series (the gateway plans every
  window as a pinned forecast and sends them to Triton together, as
  multi-row requests chunked to the model's max_batch_size);
- ``unary`` at c=1 and at c=`HIGH_CONCURRENCY` (closed loop): one Forecast
  call per window, pinned to the version, with the window's history (the
  series before its origin, the same start and frequency) and the horizon;
- ``batch``: ForecastBatch calls with the windows' histories as series,
  as many per call as fit the gateway's max_message_bytes, one call after
  the other.

Each cell sends each window once: windows/s = W / the cell's wall time. The
unary and batch cells compute the MAE of their answers over every held-out
point; `check` fails such a cell when it differs from the Backtest's MAE of
the same round (a correctness check: the backtest forecast what Forecast
forecasts). `compute_ratios` sets each cell against the unary cells of the
same round; the median over rounds is reported, with Triton's requests and
executions per cell and the gateway's peak RSS (VmHWM) after the largest
backtest.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import numpy as np
import numpy.typing as npt

from bench import modelcost, timecost
from bench.drivers import Samples, drive
from bench.workload import Workload
from forecast.v1 import forecast_service_pb2 as pb
from forecast.v1 import forecast_service_pb2_grpc as pb_grpc

POINTS = 1_400
"""Weekly points of the series (~27 years): the first of 1,000 windows keeps 392
points before its origin, more than seasonal_naive's default window of 364."""
HORIZON = 8
STEP = 1
WINDOWS = (100, 1_000)
SMOKE_WINDOWS = (20,)
HIGH_CONCURRENCY = 32
SMOKE_HIGH_CONCURRENCY = 8
FREQUENCY = "W-SAT"
CELL_VARIANTS = ("lstm_timeseries v2", "seasonal_naive v1")
MODES = ("backtest", "unary", "unary_high", "batch")
"""The order a group's cells run in: the Backtest first, then the same windows."""
MAX_MESSAGE_BYTES = 1024 * 1024
"""The gateway's max_message_bytes (config/gateway.toml): a ForecastBatch call stays under it."""
BATCH_MESSAGE_BYTES = 900_000
WARMUP_WINDOWS = 8
BACKTEST_TIMEOUT_S = 300.0
CALL_TIMEOUT_S = 60.0
MAE_TOLERANCE = 1e-6
"""Relative: float32 tensors, the same rows in Triton batches of other sizes."""
UNBOUNDED_S = 3_600.0
Cell = dict[str, Any]


def workload(name: str) -> Workload:
    """The series' workload for variant `name` (`bench.modelcost.VARIANTS`): one series."""
    chosen = modelcost.variant(name)
    return Workload(
        model=chosen.model,
        version=chosen.version,
        window=POINTS,
        horizon=HORIZON,
        pool_size=1,
        frequency=FREQUENCY,
    )


@dataclass(frozen=True)
class Windows:
    """One series and its W windows: origins, the histories before them, the held-out points."""

    series: npt.NDArray[np.float64]
    horizon: int
    step: int
    count: int

    @property
    def origins(self) -> list[int]:
        """Each window's origin, earliest first (as the gateway's Layout.origins)."""
        last = self.series.shape[0] - self.horizon
        return [last - self.step * (self.count - 1 - k) for k in range(self.count)]

    def history(self, k: int) -> npt.NDArray[np.float64]:
        """Window k's history: the series before its origin."""
        return self.series[: self.origins[k]]

    def actuals(self) -> npt.NDArray[np.float64]:
        """The held-out points: windows x horizon."""
        return np.vstack([self.series[o : o + self.horizon] for o in self.origins])

    def mae(self, forecasts: npt.NDArray[np.float64]) -> float:
        """The MAE of `forecasts` (windows x horizon) over every held-out point."""
        return float(np.mean(np.abs(self.actuals() - forecasts)))


def windows_of(spec_workload: Workload, count: int) -> Windows:
    """The cell's windows: the workload's one series, its last `count` windows."""
    return Windows(spec_workload.histories()[0], HORIZON, STEP, count)


Dated = TypeVar("Dated", pb.ForecastRequest, pb.Series)


def _dated(message: Dated) -> Dated:
    """A request or series dated like the model cells: start + W-SAT (lstm is weekly only)."""
    on = timecost.grid(FREQUENCY)
    message.start.seconds = on.start_s
    message.frequency = on.frequency
    return message


@dataclass
class Outcome:
    """What a cell's calls answered: the samples, and the MAE over the windows."""

    samples: Samples
    mae: float | None
    note: str = ""


class WindowCalls:
    """The windows of a cell, sent the cell's way (`MODES`) through the gateway."""

    def __init__(
        self,
        target: str,
        spec_workload: Workload,
        count: int,
        mode: str,
        concurrency: int,
        message_bytes: int = BATCH_MESSAGE_BYTES,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown backtest cell mode {mode!r}; one of {', '.join(MODES)}")
        self.channel = grpc.aio.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 * MAX_MESSAGE_BYTES)]
        )
        self.stub = pb_grpc.ForecastServiceStub(self.channel)
        self.workload, self.mode, self.concurrency = spec_workload, mode, concurrency
        self.windows = windows_of(spec_workload, count)
        self.message_bytes = message_bytes
        self.forecasts = np.full((count, HORIZON), np.nan)

    def backtest_request(self, count: int) -> pb.BacktestRequest:
        """A Backtest of the series' last `count` windows, one target: the version."""
        series = _dated(pb.Series(id="series", history=self.windows.series.tolist()))
        return pb.BacktestRequest(
            model=self.workload.model,
            series=[series],
            horizon=HORIZON,
            n_windows=count,
            step=STEP,
            targets=[pb.BacktestTarget(version=self.workload.version)],
        )

    def forecast_request(self, k: int) -> pb.ForecastRequest:
        """Window k as a pinned Forecast: its history, the version, the horizon."""
        return _dated(
            pb.ForecastRequest(
                model=self.workload.model,
                version=self.workload.version,
                history=self.windows.history(k).tolist(),
                horizon=HORIZON,
            )
        )

    def batch_requests(self) -> list[tuple[list[int], pb.ForecastBatchRequest]]:
        """The windows as ForecastBatch series, as many a call as fit `message_bytes`."""
        calls: list[tuple[list[int], pb.ForecastBatchRequest]] = []
        numbers: list[int] = []
        request = self._batch()
        for k in range(self.windows.count):
            series = _dated(pb.Series(id=f"w{k}", history=self.windows.history(k).tolist()))
            if numbers and request.ByteSize() + series.ByteSize() + 8 > self.message_bytes:
                calls.append((numbers, request))
                numbers, request = [], self._batch()
            request.series.append(series)
            numbers.append(k)
        if numbers:
            calls.append((numbers, request))
        return calls

    def _batch(self) -> pb.ForecastBatchRequest:
        return pb.ForecastBatchRequest(
            model=self.workload.model, version=self.workload.version, horizon=HORIZON
        )

    async def warm(self) -> None:
        """A few windows the cell's way (not measured): connection, caches, Triton's path."""
        few = min(WARMUP_WINDOWS, self.windows.count)
        if self.mode == "backtest":
            await self.stub.Backtest(self.backtest_request(few), timeout=BACKTEST_TIMEOUT_S)
            return
        for k in range(few):
            await self.stub.Forecast(self.forecast_request(k), timeout=CALL_TIMEOUT_S)

    async def run(self) -> Outcome:
        """Send every window once; the samples count windows (a window: a 'series')."""
        if self.mode == "backtest":
            return await self._backtest()
        if self.mode == "batch":
            return await self._forecast_batch()
        return await self._unary()

    async def _backtest(self) -> Outcome:
        request = self.backtest_request(self.windows.count)
        found: list[pb.BacktestResult] = []

        async def call(_: int) -> tuple[int, int]:
            reply = await self.stub.Backtest(request, timeout=BACKTEST_TIMEOUT_S)
            found.extend(reply.results)
            windows = reply.results[0].windows if reply.results else 0
            return windows, self.windows.count - windows

        samples = await drive(call, 1, UNBOUNDED_S, 1)
        if not found or samples.failed_series:
            return Outcome(samples, None, samples.error_sample or "no complete backtest result")
        return Outcome(samples, float(found[0].mae))

    async def _unary(self) -> Outcome:
        requests = [self.forecast_request(k) for k in range(self.windows.count)]

        async def call(k: int) -> tuple[int, int]:
            reply = await self.stub.Forecast(requests[k], timeout=CALL_TIMEOUT_S)
            if len(reply.values) != HORIZON:
                return 0, 1
            self.forecasts[k] = reply.values
            return 1, 0

        samples = await drive(call, self.concurrency, UNBOUNDED_S, self.windows.count)
        return self._outcome(samples)

    async def _forecast_batch(self) -> Outcome:
        calls = self.batch_requests()

        async def call(i: int) -> tuple[int, int]:
            numbers, request = calls[i]
            reply = await self.stub.ForecastBatch(request, timeout=CALL_TIMEOUT_S)
            ok = 0
            for k, result in zip(numbers, reply.results, strict=True):
                if result.WhichOneof("outcome") == "forecast" and (
                    len(result.forecast.values) == HORIZON
                ):
                    self.forecasts[k] = result.forecast.values
                    ok += 1
            return ok, len(numbers) - ok

        samples = await drive(call, self.concurrency, UNBOUNDED_S, len(calls))
        return self._outcome(samples)

    def _outcome(self, samples: Samples) -> Outcome:
        missing = int(np.isnan(self.forecasts).any(axis=1).sum())
        if missing:
            note = samples.error_sample or f"{missing} windows without a forecast"
            return Outcome(samples, None, note)
        return Outcome(samples, self.windows.mae(self.forecasts))

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()


def concurrency_of(mode: str, high: int) -> int:
    """A mode's concurrency: `high` for unary_high, 1 for the rest."""
    return high if mode == "unary_high" else 1


def plan(
    windows: Sequence[int],
    rounds: int,
    high: int = HIGH_CONCURRENCY,
    variants: Sequence[str] = CELL_VARIANTS,
) -> list[Cell]:
    """The backtest cells (without the common fields), in the order they run.

    Per round, per W, per variant: the Backtest, then the same windows as
    unary calls at c=1 and c=`high`, then as ForecastBatch calls.
    """
    return [
        {
            "name": f"backtest {name} W={count} {mode} #{round_}",
            "kind": "backtest",
            "variant": name,
            "windows": count,
            "mode": mode,
            "backtest_round": round_,
            "concurrency": concurrency_of(mode, high),
            "workload": dataclasses.asdict(workload(name)),
        }
        for round_ in range(1, rounds + 1)
        for count in windows
        for name in variants
        for mode in MODES
    ]


def _key(cell: Cell) -> tuple[str, int, int]:
    return cell["variant"], cell["windows"], cell["backtest_round"]


def find(cells: list[Cell], variant: str, windows: int, mode: str, round_: int) -> Cell | None:
    """The measured backtest cell of a variant, W, mode and round (None: absent or failed)."""
    for cell in cells:
        if cell["kind"] != "backtest" or cell.get("status") != "ok":
            continue
        if _key(cell) == (variant, windows, round_) and cell["mode"] == mode:
            return cell
    return None


def check(cell: Cell, cells: list[Cell]) -> Cell | None:
    """Fail a unary or batch cell whose MAE differs from the Backtest's (same round).

    Changes `cell` in place (status "failed", the note says both MAEs) and
    answers the mismatch; None when the cell matches or is not checked (a
    Backtest cell, or one whose Backtest cell failed: its note says so).
    """
    if cell["kind"] != "backtest" or cell["mode"] == "backtest" or cell.get("status") != "ok":
        return None
    variant, windows, round_ = _key(cell)
    base = find(cells, variant, windows, "backtest", round_)
    if base is None or base.get("mae") is None:
        cell["mae_check"] = "unchecked: no Backtest cell of this round"
        return None
    expected, got = float(base["mae"]), float(cell["mae"])
    if math.isclose(got, expected, rel_tol=MAE_TOLERANCE, abs_tol=1e-9):
        cell["mae_check"] = "equal"
        return None
    mismatch = {
        "cell": cell["name"],
        "mae": got,
        "backtest_mae": expected,
        "relative_difference": abs(got - expected) / max(abs(expected), 1e-12),
    }
    cell["status"] = "failed"
    cell["mae_check"] = "DIFFERS"
    cell["note"] = (
        f"MAE of the answers {got!r} differs from the Backtest's {expected!r}"
        f" (relative {mismatch['relative_difference']:.2e} > {MAE_TOLERANCE:g})"
    )
    return mismatch


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _median(values: Sequence[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def _wps(cell: Cell | None) -> float | None:
    return None if cell is None else float(cell["series_per_s"])


MEASURES = ("windows_per_s", "over_unary", "over_unary_high", "wall_s")


def compute_ratios(cells: list[Cell]) -> list[Cell]:
    """Per variant, W and mode: windows/s and its ratios to the unary cells, over rounds."""
    ours = [c for c in cells if c["kind"] == "backtest"]
    groups = sorted({(c["windows"], c["variant"]) for c in ours}, key=lambda g: (g[0], g[1]))
    rounds = sorted({c["backtest_round"] for c in ours})
    rows = []
    for count, name in groups:
        for mode in MODES:
            per_round = []
            for r in rounds:
                cell = find(cells, name, count, mode, r)
                unary = _wps(find(cells, name, count, "unary", r))
                high = _wps(find(cells, name, count, "unary_high", r))
                per_round.append(
                    {
                        "round": r,
                        "windows_per_s": _wps(cell),
                        "over_unary": _ratio(_wps(cell), unary),
                        "over_unary_high": _ratio(_wps(cell), high),
                        "wall_s": None if cell is None else cell["wall_s"],
                        "triton_requests": None if cell is None else cell["triton"]["requests"],
                        "triton_executions": None if cell is None else cell["triton"]["executions"],
                        "triton_inferences": None if cell is None else cell["triton"]["inferences"],
                        "calls": None if cell is None else cell["calls"],
                        "mae": None if cell is None else cell.get("mae"),
                    }
                )
            planned = next(
                (c for c in ours if (c["variant"], c["windows"], c["mode"]) == (name, count, mode)),
                None,
            )
            counts = ("triton_requests", "triton_executions", "triton_inferences", "calls", "mae")
            rows.append(
                {
                    "variant": name,
                    "windows": count,
                    "mode": mode,
                    "concurrency": None if planned is None else planned["concurrency"],
                    **{m: _median([p[m] for p in per_round]) for m in (*MEASURES, *counts)},
                    "rounds": per_round,
                }
            )
    return rows


def peak_rss(cells: list[Cell]) -> Cell | None:
    """The gateway's peak RSS (VmHWM) around the largest backtest cells, in MB."""
    ours = [c for c in cells if c["kind"] == "backtest" and c.get("status") == "ok"]
    backtests = [c for c in ours if c["mode"] == "backtest" and c.get("vmhwm_mb")]
    if not backtests:
        return None
    largest = max(c["windows"] for c in backtests)
    chosen = [c for c in backtests if c["windows"] == largest]
    first = min((c for c in ours if c.get("vmhwm_mb")), key=lambda c: cells.index(c))
    return {
        "windows": largest,
        "before_first_cell": first["vmhwm_mb"]["before"],
        "after_largest": max(c["vmhwm_mb"]["after"] for c in chosen),
        "grew_during_largest": max(
            c["vmhwm_mb"]["after"] - c["vmhwm_mb"]["before"] for c in chosen
        ),
        "sampled_max_during_largest": max((c["rss_mb"]["gateway_max"] or 0.0) for c in chosen),
    }


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _spread(row: Cell, measure: str, digits: int = 2) -> str:
    values = [p[measure] for p in row["rounds"] if p[measure] is not None]
    if len(values) < 2 or min(values) == max(values):
        return ""
    return f" [{min(values):,.{digits}f}-{max(values):,.{digits}f}]"


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_ratios(rows: list[Cell], rss: Cell | None = None, high: int | None = None) -> str:
    """The backtest cells as text: one line per W, variant and mode ("" without them)."""
    if not rows:
        return ""
    high = high or max((r["concurrency"] or 1) for r in rows)
    rounds = max(len(row["rounds"]) for row in rows)
    which = f"the median of {rounds} rounds [their range]" if rounds > 1 else "one round"
    label = {"backtest": "Backtest", "unary": "Forecast", "unary_high": "Forecast"}
    label["batch"] = "ForecastBatch"
    table = [
        [
            "model",
            "W",
            "way",
            "conc",
            "windows/s",
            "vs unary c=1",
            f"vs unary c={high}",
            "wall s",
            "calls",
            "triton req",
            "triton exec",
            "MAE",
        ]
    ]
    for row in rows:
        table.append(
            [
                row["variant"],
                str(row["windows"]),
                label[row["mode"]],
                str(row["concurrency"]),
                _int(row["windows_per_s"]) + _spread(row, "windows_per_s", 0),
                _x(row["over_unary"]) + _spread(row, "over_unary"),
                _x(row["over_unary_high"]) + _spread(row, "over_unary_high"),
                "-" if row["wall_s"] is None else f"{row['wall_s']:.3f}",
                _int(row["calls"]),
                _int(row["triton_requests"]) + _spread(row, "triton_requests", 0),
                _int(row["triton_executions"]) + _spread(row, "triton_executions", 0),
                "-" if row["mae"] is None else f"{row['mae']:.4f}",
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        f"backtest windows against the same windows as Forecast calls ({POINTS:,} points dated"
        f" {FREQUENCY}, horizon {HORIZON}, step {STEP}; {which}; MAE checked equal):"
    ]
    for line in table:
        cells = [f"{line[0]:<{widths[0]}}", f"{line[1]:>{widths[1]}}", f"{line[2]:<{widths[2]}}"]
        cells += [f"{value:>{width}}" for value, width in zip(line[3:], widths[3:], strict=True)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    if rss is not None:
        lines.append(
            f"gateway peak RSS (VmHWM) after the W={rss['windows']:,} backtests:"
            f" {rss['after_largest']:.1f} MB (before the first backtest cell"
            f" {rss['before_first_cell']:.1f} MB; grew {rss['grew_during_largest']:.1f} MB during"
            f" one; sampled max during them {rss['sampled_max_during_largest']:.1f} MB)"
        )
    return "\n".join(lines)


def format_mismatches(mismatches: list[Cell]) -> str:
    """The failed MAE checks, loudly ("" when none)."""
    return "\n".join(
        f"ERROR: backtest check failed: {m['cell']}: MAE {m['mae']!r} != the Backtest's"
        f" {m['backtest_mae']!r} (relative {m['relative_difference']:.2e})"
        for m in mismatches
    )
