"""What each model kind costs per call: the model cells, their requests and their ratios.

The model cells (section ``models``, ``python -m bench --only models``) send
unary Forecast calls through the real gateway and Triton to each shipped
kind of model in `CELL_VARIANTS`, one cell after the other at each
concurrency: the LSTM (the reference: z-scored by the gateway, point
output), the moving average, seasonal naive (raw values, a season input)
and the quantile MLP (ONNX in the Python backend, a fixed 28-step output
sliced to the horizon, 9 quantiles), the latter also asking for intervals,
which then come from its own quantiles. Every cell gets the same pool of
400-point series (long enough for every default window: 10, 52, 56 and
364) with a 12-step horizon, dated by start and frequency W-SAT (weekly on
Saturdays): lstm_timeseries is declared weekly only, and seasonal naive
needs the weekly frequency for its season of 52 (without time it is naive,
a season of 1). `compute_ratios` sets each kind against the LSTM cell of the
same concurrency.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from bench import report
from bench.workload import INTERVAL_COVERAGES, Workload

HISTORY = 400
HORIZON = 12
FREQUENCY = "W-SAT"
TIME = "start"
"""The time every request carries (`bench.timecost.TIMES`): start + FREQUENCY."""
REFERENCE_CONCURRENCY = 32
Cell = dict[str, Any]


@dataclass(frozen=True)
class Variant:
    """A model version, and the interval coverages every call asks for."""

    model: str
    version: str
    interval_coverages: tuple[float, ...] = ()


VARIANTS = {
    "lstm_timeseries v2": Variant("lstm_timeseries", "2"),
    "moving_average v1": Variant("moving_average", "1"),
    "seasonal_naive v1": Variant("seasonal_naive", "1"),
    "quantile_mlp v1": Variant("quantile_mlp", "1"),
    "quantile_mlp v1 +intervals": Variant("quantile_mlp", "1", INTERVAL_COVERAGES),
}
CELL_VARIANTS = tuple(VARIANTS)
"""The cells in the order they run (the LSTM first: the reference)."""
REFERENCE = CELL_VARIANTS[0]


def variant(name: str) -> Variant:
    """The variant called `name` (one of `VARIANTS`)."""
    if name not in VARIANTS:
        raise ValueError(f"unknown model variant {name!r}; one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def workload(name: str) -> Workload:
    """The workload of variant `name`: 400-point weekly series, horizon 12."""
    chosen = variant(name)
    return Workload(
        model=chosen.model,
        version=chosen.version,
        window=HISTORY,
        horizon=HORIZON,
        frequency=FREQUENCY,
    )


def concurrencies(measured: tuple[int, ...]) -> tuple[int, ...]:
    """The model cells' concurrencies: the lowest and 32 (or the highest measured)."""
    top = REFERENCE_CONCURRENCY if REFERENCE_CONCURRENCY in measured else max(measured)
    return tuple(sorted({min(measured), top}))


def plan(levels: tuple[int, ...]) -> list[Cell]:
    """The model cells (without the common fields), in the order they run."""
    return [
        {
            "name": f"models {name} c={concurrency}",
            "kind": "models",
            "variant": name,
            "concurrency": concurrency,
            "workload": dataclasses.asdict(workload(name)),
        }
        for concurrency in levels
        for name in CELL_VARIANTS
    ]


def find(cells: list[Cell], name: str, concurrency: int) -> Cell | None:
    """The measured model cell of a variant and concurrency (None: absent or failed)."""
    for cell in cells:
        if cell["kind"] != "models" or cell.get("status") != "ok":
            continue
        if (cell["variant"], cell["concurrency"]) == (name, concurrency):
            return cell
    return None


MEASURES = ("calls_per_s", "p50_ms", "p99_ms", "gateway_us_per_call", "triton_us_per_call")


def figures(cell: Cell | None) -> Cell:
    """A cell's calls/s, p50 and p99 (ms), gateway and Triton CPU µs per call (None: absent)."""
    if cell is None:
        return dict.fromkeys(MEASURES)
    per_call = cell.get("cpu_us_per_call", {})
    return {
        "calls_per_s": float(cell["calls_per_s"]),
        "p50_ms": cell["latency_ms"]["p50"],
        "p99_ms": cell["latency_ms"]["p99"],
        "gateway_us_per_call": report.server_us_per_call(cell),
        "triton_us_per_call": per_call.get("triton"),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def compute_ratios(cells: list[Cell]) -> list[Cell]:
    """Each variant per concurrency: its figures, and each against the LSTM cell's."""
    levels = sorted({c["concurrency"] for c in cells if c["kind"] == "models"})
    rows = []
    for concurrency in levels:
        base = figures(find(cells, REFERENCE, concurrency))
        for name in CELL_VARIANTS:
            own = figures(find(cells, name, concurrency))
            ratios = {m: _ratio(own[m], base[m]) for m in MEASURES}
            rows.append({"concurrency": concurrency, "variant": name, **own, "ratios": ratios})
    return rows


def _value(value: float | None, ratio: float | None, digits: int) -> str:
    if value is None:
        return "-"
    text = f"{value:,.{digits}f}"
    return text if ratio is None else f"{text} ({ratio:.2f}x)"


COLUMNS = (
    ("calls/s", "calls_per_s", 0),
    ("p50 ms", "p50_ms", 2),
    ("p99 ms", "p99_ms", 2),
    ("gateway us/call", "gateway_us_per_call", 0),
    ("triton us/call", "triton_us_per_call", 0),
)


def format_ratios(rows: list[Cell]) -> str:
    """The model cells as text: one line per concurrency and variant ("" without them)."""
    if not rows:
        return ""
    table = [["model", "conc", *(title for title, _, _ in COLUMNS)]]
    for row in rows:
        values = [_value(row[key], row["ratios"][key], digits) for _, key, digits in COLUMNS]
        table.append([row["variant"], str(row["concurrency"]), *values])
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        f"model kinds, Forecast through the gateway ({HISTORY} points dated {FREQUENCY},"
        f" horizon {HORIZON}); (x): against {REFERENCE} at the same concurrency:"
    ]
    for line in table:
        cells = [f"{line[0]:<{widths[0]}}", f"{line[1]:>{widths[1]}}"]
        cells += [f"{value:>{width}}" for value, width in zip(line[2:], widths[2:], strict=True)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines)
