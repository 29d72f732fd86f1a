"""The benchmark's output: the table, the ratios and the targets (PASS/MISS, never a failure)."""

from __future__ import annotations

import operator
from typing import Any

Cell = dict[str, Any]
LABELS = {
    "gateway": "gateway Forecast",
    "direct": "direct Triton",
    "baseline": "baseline grpcio",
    "batch": "gateway ForecastBatch",
    "stream": "gateway StreamForecast",
}
GATEWAY_PATHS = ("gateway", "batch", "stream")
HEADER = [
    "path",
    "conc",
    "series/s",
    "p50 ms",
    "p99 ms",
    "avg batch",
    "queue us",
    "cpu gw",
    "cpu triton",
    "cpu base",
    "cpu loadgen",
    "cpu other",
    "idle",
    "gw RSS MB",
    "errors",
]
COMPARISONS = {">=": operator.ge, "<": operator.lt}


def find(
    cells: list[Cell], kind: str, concurrency: int | None = None, batch: int | None = None
) -> Cell | None:
    """The measured cell of a path (None if absent, skipped or failed)."""
    for cell in cells:
        if cell["kind"] != kind or cell.get("status") != "ok":
            continue
        if concurrency is not None and cell["concurrency"] != concurrency:
            continue
        if batch is not None and cell.get("batch_size") != batch:
            continue
        return cell
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 2) if a is not None and b else None


def _sps(cell: Cell | None) -> float | None:
    return None if cell is None else float(cell["series_per_s"])


def _latency(cell: Cell | None, key: str) -> float | None:
    return None if cell is None else cell["latency_ms"].get(key)


def reference_concurrency(concurrencies: list[int]) -> int:
    """The concurrency the targets are judged at: 64, or the highest measured (smoke)."""
    return 64 if 64 in concurrencies else max(concurrencies)


def compute_ratios(
    cells: list[Cell], concurrencies: list[int], batch_sizes: list[int]
) -> dict[str, Any]:
    """gateway/direct per concurrency, gateway/baseline, batch and stream vs unary, added p50."""
    ref = reference_concurrency(concurrencies)
    unary = _sps(find(cells, "gateway", ref))
    gateway_p50 = _latency(find(cells, "gateway", 1), "p50")
    direct_p50 = _latency(find(cells, "direct", 1), "p50")
    added = None
    if gateway_p50 is not None and direct_p50 is not None:
        added = round(gateway_p50 - direct_p50, 3)
    return {
        "reference_concurrency": ref,
        "gateway_over_direct": {
            str(c): _ratio(_sps(find(cells, "gateway", c)), _sps(find(cells, "direct", c)))
            for c in concurrencies
        },
        "gateway_over_baseline": {
            str(c): _ratio(_sps(find(cells, "gateway", c)), _sps(find(cells, "baseline", c)))
            for c in concurrencies
        },
        "batch_over_unary": {
            str(n): _ratio(_sps(find(cells, "batch", batch=n)), unary) for n in batch_sizes
        },
        "stream_over_unary": _ratio(_sps(find(cells, "stream")), unary),
        "added_p50_ms_c1": added,
    }


def _judge(name: str, value: float | None, comparison: str, limit: float, unit: str) -> Cell:
    passed = value is not None and COMPARISONS[comparison](value, limit)
    status = "n/a" if value is None else ("PASS" if passed else "MISS")
    return {
        "target": name,
        "value": value,
        "comparison": comparison,
        "limit": limit,
        "unit": unit,
        "status": status,
    }


def evaluate_targets(cells: list[Cell], ratios: dict[str, Any]) -> list[Cell]:
    """Each target of the issue with its measured value and PASS / MISS (n/a: not measured)."""
    ref = ratios["reference_concurrency"]
    unary = find(cells, "gateway", ref)
    rss = [
        c["rss_mb"]["gateway_max"]
        for c in cells
        if c["kind"] in GATEWAY_PATHS and c.get("status") == "ok"
    ]
    over_direct = ratios["gateway_over_direct"].get(str(ref))
    over_baseline = ratios["gateway_over_baseline"].get(str(ref))
    targets = [
        _judge(f"gateway/direct series/s at c={ref}", over_direct, ">=", 0.8, "x"),
        _judge(f"gateway/baseline series/s at c={ref}", over_baseline, ">=", 5.0, "x"),
        _judge(f"gateway p99 at c={ref}", _latency(unary, "p99"), "<", 40.0, "ms"),
        _judge("gateway added p50 latency at c=1", ratios["added_p50_ms_c1"], "<", 1.0, "ms"),
    ]
    for size, value in ratios["batch_over_unary"].items():
        name = f"ForecastBatch({size}) / unary series/s at c={ref}"
        targets.append(_judge(name, value, ">=", 3.0, "x"))
    avg_batch = None if unary is None else unary["triton"].get("avg_batch")
    targets.append(_judge(f"Triton avg batch, gateway c={ref}", avg_batch, ">=", 16.0, ""))
    targets.append(_judge("gateway RSS under load (max)", max(rss, default=None), "<", 150.0, "MB"))
    return targets


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def _label(cell: Cell) -> str:
    label = str(LABELS.get(cell["kind"], cell["kind"]))
    if cell["kind"] == "batch":
        return f"{label} {cell['batch_size']}"
    return label


def _row(cell: Cell) -> list[str]:
    concurrency = str(cell["concurrency"])
    if cell.get("status") != "ok":
        note = str(cell.get("note", ""))[:100]
        return [_label(cell), concurrency, f"{cell.get('status', '?').upper()}: {note}"]
    cpu, latency, triton = cell["cpu_cores"], cell["latency_ms"], cell["triton"]
    in_triton = cell["kind"] != "baseline"
    return [
        _label(cell),
        concurrency,
        _fmt(cell["series_per_s"], 0),
        _fmt(latency["p50"], 2),
        _fmt(latency["p99"], 2),
        _fmt(triton["avg_batch"]) if in_triton else "-",
        _fmt(triton["queue_us"], 0) if in_triton else "-",
        *(_fmt(cpu.get(k), 2) for k in ("gateway", "triton", "baseline", "loadgen", "other")),
        _fmt(cpu.get("machine_idle"), 2),
        _fmt(cell["rss_mb"]["gateway_max"]),
        _fmt(cell["errors"] + cell["failed_series"]),
    ]


def busiest_other(cells: list[Cell]) -> float:
    """The most CPU (cores) that processes outside the benchmark used during any cell."""
    return max((c["cpu_cores"].get("other", 0.0) for c in cells if "cpu_cores" in c), default=0.0)


def format_table(cells: list[Cell]) -> str:
    """The results as an aligned text table (CPU in cores: 1.00 = one core busy)."""
    rows = [HEADER] + [_row(cell) for cell in cells]
    full = [row for row in rows if len(row) == len(HEADER)]
    widths = [max(len(row[i]) for row in full) for i in range(len(HEADER))]
    lines = []
    for row in rows:
        if len(row) != len(HEADER):  # a skipped or failed cell: its note instead of numbers
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:>{widths[1]}}  {row[2]}")
            continue
        values = [f"{v:>{w}}" for v, w in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join([f"{row[0]:<{widths[0]}}", *values]))
    return "\n".join(lines)


def format_ratios(ratios: dict[str, Any]) -> str:
    """The ratios as text lines."""
    ref = ratios["reference_concurrency"]
    per_c = ", ".join(f"c={c}: {_fmt(v, 2)}" for c, v in ratios["gateway_over_direct"].items())
    batch = ", ".join(f"{n}/call: {_fmt(v, 2)}x" for n, v in ratios["batch_over_unary"].items())
    baseline = _fmt(ratios["gateway_over_baseline"].get(str(ref)), 2)
    rows = [
        ("gateway/direct series/s", per_c),
        (f"gateway/baseline at c={ref}", f"{baseline}x"),
        (f"ForecastBatch/unary c={ref}", batch),
        (f"StreamForecast/unary c={ref}", f"{_fmt(ratios['stream_over_unary'], 2)}x"),
        ("gateway added p50 at c=1", f"{_fmt(ratios['added_p50_ms_c1'], 3)} ms"),
    ]
    return "\n".join(f"{name:<30} {value}" for name, value in rows)


def format_targets(targets: list[Cell]) -> str:
    """One line per target: status, what, measured value, limit."""
    lines = []
    for t in targets:
        value = f"{_fmt(t['value'], 2)} {t['unit']}".strip()
        limit = f"{t['comparison']} {t['limit']:g} {t['unit']}".strip()
        lines.append(f"{t['status']:<5} {t['target']:<46} {value:>11}  (target {limit})")
    return "\n".join(lines)


def format_machine(machine: dict[str, Any]) -> str:
    """The machine block."""
    cpu = f"{machine['cpu_model']}, {machine['cores']} cores, {machine['memory_gib']} GiB"
    versions = (
        f"Python {machine['python']}, torch {machine['torch']}, "
        f"Triton {machine['triton_server']} (nvidia-pytriton {machine['nvidia_pytriton']}), "
        f"tritonclient {machine['tritonclient']}, grpcio {machine['grpcio']}"
    )
    return "\n".join(
        [
            f"CPU        {cpu}",
            f"OS         {machine['os']}",
            f"versions   {versions}",
            f"load avg   {machine['load_average_at_start']} (1/5/15 min, before the run)",
            f"commit     {machine.get('commit', 'unknown')} (plus any uncommitted changes)",
        ]
    )
