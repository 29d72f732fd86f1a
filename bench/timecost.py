"""What a series' time costs per request: the time fields, the cells and their ratios.

`with_time` gives a Forecast request the time of one kind (`TIMES`) on a
grid (`GRIDS`: daily, or weekly on Saturdays), for ``bench.hotpath --time``
and for ``make bench``'s time cells. The time cells (section ``time``,
``python -m bench --only time``) send the same workload through the real
gateway once per kind in `CELL_TIMES`, on the grid of the frequency the
workload's model is declared for, one cell after the other at each
concurrency; `compute_ratios` sets each kind against the cell without time
of the same round and concurrency.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from bench import report
from forecast.v1 import forecast_pb2
from forecast.v1 import forecast_service_pb2 as pb

TIMES = ("none", "start", "monthly", "timestamps", "gaps")
"""none; start + the grid's frequency; start + "MS" (month starts, whatever the grid);
one timestamp per point; the same with two points missing in the window and
FILL_METHOD_LINEAR."""
CELL_TIMES = ("none", "start", "timestamps", "gaps")
"""The kinds ``make bench`` measures, in the order they run ("none" first: the baseline)."""
GAP_POINTS = 2
DAY_S = 86_400
START_S = 1_704_067_200  # 2024-01-01T00:00:00Z, a Monday and a month start
Cell = dict[str, Any]


@dataclass(frozen=True)
class Grid:
    """A frequency, a first point on its grid and its step (fixed: one day or one week)."""

    frequency: str
    start_s: int
    step_s: int


GRIDS = {
    "D": Grid("D", START_S, DAY_S),
    "W-SAT": Grid("W-SAT", START_S + 5 * DAY_S, 7 * DAY_S),  # 2024-01-06, a Saturday
}
"""D: fixed steps of a day; W-SAT: weekly, a calendar frequency (pandas offsets), as co2."""


def grid(frequency: str) -> Grid:
    """The grid of `frequency` (one of `GRIDS`)."""
    if frequency not in GRIDS:
        raise ValueError(f"no time grid for {frequency!r}; one of {', '.join(GRIDS)}")
    return GRIDS[frequency]


def with_time(request: pb.ForecastRequest, kind: str, on: Grid = GRIDS["D"]) -> pb.ForecastRequest:
    """`request` with the time fields of `kind` (see `TIMES`) on grid `on`, changed in place."""
    if kind not in TIMES:
        raise ValueError(f"unknown time kind {kind!r}; one of {', '.join(TIMES)}")
    points = len(request.history)
    if kind == "monthly":
        request.start.seconds = START_S
        request.frequency = "MS"
    elif kind == "start":
        request.start.seconds = on.start_s
        request.frequency = on.frequency
    elif kind in ("timestamps", "gaps"):
        steps = list(range(points + GAP_POINTS)) if kind == "gaps" else list(range(points))
        if kind == "gaps":
            del steps[points - 4 : points - 4 + GAP_POINTS]  # two points inside the window
            request.fill = forecast_pb2.FILL_METHOD_LINEAR
        for step in steps:
            request.timestamps.add(seconds=on.start_s + step * on.step_s)
        request.frequency = on.frequency
    return request


def filled_points(kind: str) -> int:
    """How many points the gateway fills in a request of `kind`."""
    return GAP_POINTS if kind == "gaps" else 0


def concurrencies(measured: tuple[int, ...]) -> tuple[int, ...]:
    """The time cells' concurrencies: the lowest and the targets' one (64, or the highest)."""
    return tuple(sorted({min(measured), report.reference_concurrency(list(measured))}))


def plan(levels: tuple[int, ...], rounds: int) -> list[Cell]:
    """The time cells (without the common fields), in the order they run."""
    return [
        {
            "name": f"time {kind} c={concurrency} #{round_}",
            "kind": "time",
            "time": kind,
            "time_round": round_,
            "concurrency": concurrency,
        }
        for round_ in range(1, rounds + 1)
        for concurrency in levels
        for kind in CELL_TIMES
    ]


def find(cells: list[Cell], kind: str, concurrency: int, round_: int) -> Cell | None:
    """The measured time cell of a kind, concurrency and round (None: absent or failed)."""
    for cell in cells:
        if cell["kind"] != "time" or cell.get("status") != "ok":
            continue
        if (cell["time"], cell["concurrency"], cell["time_round"]) == (kind, concurrency, round_):
            return cell
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _p50(cell: Cell | None) -> float | None:
    return None if cell is None else cell["latency_ms"]["p50"]


def _sps(cell: Cell | None) -> float | None:
    return None if cell is None else float(cell["series_per_s"])


def against(cell: Cell | None, base: Cell | None) -> Cell:
    """One cell against the cell without time: series/s, CPU per call and p50 ratios."""
    cpu, cpu_base = report.server_us_per_call(cell), report.server_us_per_call(base)
    added = None if cpu is None or cpu_base is None else round(cpu - cpu_base, 1)
    return {
        "series_per_s": _ratio(_sps(cell), _sps(base)),
        "cpu_per_call": _ratio(cpu, cpu_base),
        "cpu_us_added": added,
        "p50": _ratio(_p50(cell), _p50(base)),
    }


MEASURES = ("series_per_s", "cpu_per_call", "cpu_us_added", "p50")


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(statistics.median(known), 3) if known else None


def compute_ratios(cells: list[Cell]) -> list[Cell]:
    """Each kind with time against no time, per concurrency: the median over rounds and each."""
    timed = [c for c in cells if c["kind"] == "time"]
    levels = sorted({c["concurrency"] for c in timed})
    rounds = sorted({c["time_round"] for c in timed})
    rows = []
    for concurrency in levels:
        for kind in CELL_TIMES[1:]:
            per_round = [
                {
                    "round": r,
                    **against(
                        find(cells, kind, concurrency, r), find(cells, "none", concurrency, r)
                    ),
                }
                for r in rounds
            ]
            medians = {m: _median([p[m] for p in per_round]) for m in MEASURES}
            rows.append({"concurrency": concurrency, "time": kind, **medians, "rounds": per_round})
    return rows


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _us(value: float | None) -> str:
    return "-" if value is None else f"{value:+,.0f} us"


def _spread(row: Cell, measure: str) -> str:
    values = [p[measure] for p in row["rounds"] if p[measure] is not None]
    if len(values) < 2:
        return ""
    if measure == "cpu_us_added":
        return f" [{min(values):+,.0f}..{max(values):+,.0f}]"
    return f" [{min(values):.2f}-{max(values):.2f}]"


def format_ratios(rows: list[Cell]) -> str:
    """The time ratios as text: one line per concurrency and kind ("" without time cells)."""
    if not rows:
        return ""
    rounds = max(len(row["rounds"]) for row in rows)
    which = f"the median of {rounds} rounds [their range]" if rounds > 1 else "one round"
    table = [["time", "conc", "series/s", "gateway CPU per call", "p50"]]
    for row in rows:
        cpu = f"{_x(row['cpu_per_call'])}{_spread(row, 'cpu_per_call')}"
        cpu += f" ({_us(row['cpu_us_added'])}{_spread(row, 'cpu_us_added')})"
        table.append(
            [
                row["time"],
                str(row["concurrency"]),
                _x(row["series_per_s"]) + _spread(row, "series_per_s"),
                cpu,
                _x(row["p50"]) + _spread(row, "p50"),
            ]
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = [
        f"time per request, against the gateway without time at the same concurrency ({which}):"
    ]
    for line in table:
        cells = [f"{line[0]:<{widths[0]}}", f"{line[1]:>{widths[1]}}"]
        cells += [f"{value:<{width}}" for value, width in zip(line[2:], widths[2:], strict=True)]
        lines.append(("  " + "  ".join(cells)).rstrip())
    return "\n".join(lines)
