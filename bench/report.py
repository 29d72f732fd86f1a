"""The benchmark's output: the table, the ratios and the targets (PASS/MISS, never a failure).

The targets compare the gateway with the minimal proxy measured in the same
run (`bench.floor`): what any Python proxy doing the core job costs on this
machine. The earlier absolute targets that the floor itself cannot reach
(against direct Triton and the hand-written baseline) are reported as
retired figures, with the floor's value beside the gateway's.
"""

from __future__ import annotations

import operator
from typing import Any

Cell = dict[str, Any]
LABELS = {
    "gateway": "gateway Forecast",
    "intervals": "gateway + intervals",
    "direct": "direct Triton",
    "proxy": "minimal proxy",
    "echo": "echo (1 hop)",
    "baseline": "baseline grpcio",
    "batch": "gateway ForecastBatch",
    "stream": "gateway StreamForecast",
    "time": "gateway time=",
    "models": "gateway model=",
    "backtest": "gateway windows ",
}
GATEWAY_PATHS = ("gateway", "intervals", "batch", "stream", "time", "models")
SERVER_OF = {
    "gateway": "gateway",
    "intervals": "gateway",
    "batch": "gateway",
    "stream": "gateway",
    "time": "gateway",
    "models": "gateway",
    "backtest": "gateway",
    "proxy": "proxy",
    "echo": "echo",
    "baseline": "baseline",
}
"""The process group that serves each path's calls (direct: Triton itself)."""
TRITON_PATHS = (
    "direct",
    "gateway",
    "intervals",
    "proxy",
    "batch",
    "stream",
    "time",
    "models",
    "backtest",
)
HEADER = [
    "path",
    "conc",
    "series/s",
    "p50 ms",
    "p99 ms",
    "avg batch",
    "queue us",
    "cpu server",
    "server us/call",
    "cpu triton",
    "triton us/call",
    "cpu loadgen",
    "cpu other",
    "idle",
    "gw RSS MB",
    "errors",
]
COMPARISONS = {">=": operator.ge, "<": operator.lt, "<=": operator.le}


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


def _minus(a: float | None, b: float | None) -> float | None:
    return round(a - b, 3) if a is not None and b is not None else None


def server_us_per_call(cell: Cell | None) -> float | None:
    """CPU µs per call of the process serving the cell's calls (None: not measured)."""
    if cell is None or cell["kind"] not in SERVER_OF:
        return None
    value = cell.get("cpu_us_per_call", {}).get(SERVER_OF[cell["kind"]])
    return None if value is None else float(value)


def _per_concurrency(cells: list[Cell], concurrencies: list[int], a: str, b: str) -> Cell:
    return {str(c): _ratio(_sps(find(cells, a, c)), _sps(find(cells, b, c))) for c in concurrencies}


def _cpu_per_concurrency(cells: list[Cell], concurrencies: list[int], a: str, b: str) -> Cell:
    return {
        str(c): _ratio(server_us_per_call(find(cells, a, c)), server_us_per_call(find(cells, b, c)))
        for c in concurrencies
    }


def compute_ratios(
    cells: list[Cell], concurrencies: list[int], batch_sizes: list[int]
) -> dict[str, Any]:
    """The gateway against the minimal proxy, direct Triton and the baseline; batch and stream."""
    ref = reference_concurrency(concurrencies)
    unary = _sps(find(cells, "gateway", ref))
    gateway, proxy = find(cells, "gateway", ref), find(cells, "proxy", ref)
    p50_c1 = {k: _latency(find(cells, k, 1), "p50") for k in ("gateway", "proxy", "direct")}
    return {
        "reference_concurrency": ref,
        "gateway_over_proxy": _per_concurrency(cells, concurrencies, "gateway", "proxy"),
        "gateway_cpu_over_proxy": _ratio(server_us_per_call(gateway), server_us_per_call(proxy)),
        "gateway_p99_over_proxy": _ratio(_latency(gateway, "p99"), _latency(proxy, "p99")),
        "gateway_p50_minus_proxy_ms_c1": _minus(p50_c1["gateway"], p50_c1["proxy"]),
        "proxy_over_echo": _per_concurrency(cells, concurrencies, "proxy", "echo"),
        "gateway_over_direct": _per_concurrency(cells, concurrencies, "gateway", "direct"),
        "proxy_over_direct": _per_concurrency(cells, concurrencies, "proxy", "direct"),
        "gateway_over_baseline": _per_concurrency(cells, concurrencies, "gateway", "baseline"),
        "proxy_over_baseline": _per_concurrency(cells, concurrencies, "proxy", "baseline"),
        "batch_over_unary": {
            str(n): _ratio(_sps(find(cells, "batch", batch=n)), unary) for n in batch_sizes
        },
        "stream_over_unary": _ratio(_sps(find(cells, "stream")), unary),
        "intervals_over_gateway": _per_concurrency(cells, concurrencies, "intervals", "gateway"),
        "intervals_cpu_over_gateway": _cpu_per_concurrency(
            cells, concurrencies, "intervals", "gateway"
        ),
        "added_p50_ms_c1": _minus(p50_c1["gateway"], p50_c1["direct"]),
        "proxy_added_p50_ms_c1": _minus(p50_c1["proxy"], p50_c1["direct"]),
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
    avg_batch = None if unary is None else unary["triton"].get("avg_batch")
    targets = [
        _judge(
            f"gateway/minimal proxy series/s at c={ref}",
            ratios["gateway_over_proxy"].get(str(ref)),
            ">=",
            1.0,
            "x",
        ),
        _judge(
            f"gateway/minimal proxy CPU per call at c={ref}",
            ratios["gateway_cpu_over_proxy"],
            "<=",
            1.2,
            "x",
        ),
        _judge(f"Triton avg batch, gateway c={ref}", avg_batch, ">=", 8.0, ""),
        _judge(
            f"gateway/minimal proxy p99 at c={ref}",
            ratios["gateway_p99_over_proxy"],
            "<=",
            1.0,
            "x",
        ),
        _judge(
            "gateway p50 - minimal proxy p50 at c=1",
            ratios["gateway_p50_minus_proxy_ms_c1"],
            "<=",
            0.3,
            "ms",
        ),
    ]
    for size, value in ratios["batch_over_unary"].items():
        name = f"ForecastBatch({size}) / unary series/s at c={ref}"
        targets.append(_judge(name, value, ">=", 3.0, "x"))
    targets.append(_judge("gateway RSS under load (max)", max(rss, default=None), "<", 150.0, "MB"))
    return targets


def retired_figures(cells: list[Cell], ratios: dict[str, Any]) -> list[Cell]:
    """The former absolute targets, as figures: the gateway's value beside the floor's.

    Retired because no Python proxy reaches them on this machine: the
    minimal proxy (`floor`) misses them too.
    """
    ref = str(ratios["reference_concurrency"])
    figures = [
        (
            f"gateway/direct series/s at c={ref}",
            ratios["gateway_over_direct"].get(ref),
            ratios["proxy_over_direct"].get(ref),
            ">= 0.8 x",
        ),
        (
            f"gateway/baseline series/s at c={ref}",
            ratios["gateway_over_baseline"].get(ref),
            ratios["proxy_over_baseline"].get(ref),
            ">= 5 x",
        ),
        (
            f"p99 at c={ref} (ms)",
            _latency(find(cells, "gateway", int(ref)), "p99"),
            _latency(find(cells, "proxy", int(ref)), "p99"),
            "< 40 ms",
        ),
        (
            "added p50 over direct at c=1 (ms)",
            ratios["added_p50_ms_c1"],
            ratios["proxy_added_p50_ms_c1"],
            "< 1 ms",
        ),
    ]
    return [
        {"figure": name, "gateway": gateway, "floor": floor, "former_target": former}
        for name, gateway, floor, former in figures
    ]


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
    if cell["kind"] == "time":  # the time cells: the kind of time and the round
        return f"{label}{cell['time']} #{cell['time_round']}"
    if cell["kind"] == "models":  # the model cells: the model version (and +intervals)
        return f"{label}{cell['variant']}"
    if cell["kind"] == "backtest":  # the backtest cells: version, W, how sent, round
        return (
            f"{label}{cell['variant']} W={cell['windows']} {cell['mode']} #{cell['backtest_round']}"
        )
    return label


def _row(cell: Cell) -> list[str]:
    concurrency = str(cell["concurrency"])
    if cell.get("status") != "ok":
        note = str(cell.get("note", ""))[:100]
        return [_label(cell), concurrency, f"{cell.get('status', '?').upper()}: {note}"]
    cpu, latency, triton = cell["cpu_cores"], cell["latency_ms"], cell["triton"]
    in_triton = cell["kind"] in TRITON_PATHS
    server = SERVER_OF.get(cell["kind"])
    per_call = cell.get("cpu_us_per_call", {})
    return [
        _label(cell),
        concurrency,
        _fmt(cell["series_per_s"], 0),
        _fmt(latency["p50"], 2),
        _fmt(latency["p99"], 2),
        _fmt(triton["avg_batch"]) if in_triton else "-",
        _fmt(triton["queue_us"], 0) if in_triton else "-",
        _fmt(cpu.get(server), 2) if server else "-",
        _fmt(per_call.get(server), 0) if server else "-",
        _fmt(cpu.get("triton"), 2),
        _fmt(per_call.get("triton"), 0) if in_triton else "-",
        *(_fmt(cpu.get(k), 2) for k in ("loadgen", "other")),
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


def _per_c(values: dict[str, Any]) -> str:
    return ", ".join(f"c={c}: {_fmt(v, 2)}" for c, v in values.items())


def format_ratios(ratios: dict[str, Any]) -> str:
    """The ratios as text lines."""
    ref = ratios["reference_concurrency"]
    batch = ", ".join(f"{n}/call: {_fmt(v, 2)}x" for n, v in ratios["batch_over_unary"].items())
    rows = [
        ("gateway/minimal proxy series/s", _per_c(ratios["gateway_over_proxy"])),
        (f"gateway/proxy CPU per call c={ref}", f"{_fmt(ratios['gateway_cpu_over_proxy'], 2)}x"),
        (f"gateway/proxy p99 c={ref}", f"{_fmt(ratios['gateway_p99_over_proxy'], 2)}x"),
        ("gateway - proxy p50 at c=1", f"{_fmt(ratios['gateway_p50_minus_proxy_ms_c1'], 3)} ms"),
        ("minimal proxy/echo series/s", _per_c(ratios["proxy_over_echo"])),
        ("gateway/direct series/s", _per_c(ratios["gateway_over_direct"])),
        ("minimal proxy/direct series/s", _per_c(ratios["proxy_over_direct"])),
        ("gateway/baseline series/s", _per_c(ratios["gateway_over_baseline"])),
        (f"ForecastBatch/unary c={ref}", batch),
        (f"StreamForecast/unary c={ref}", f"{_fmt(ratios['stream_over_unary'], 2)}x"),
        ("+intervals/gateway series/s", _per_c(ratios["intervals_over_gateway"])),
        ("+intervals/gateway CPU per call", _per_c(ratios["intervals_cpu_over_gateway"])),
        ("gateway added p50 at c=1", f"{_fmt(ratios['added_p50_ms_c1'], 3)} ms"),
        ("proxy added p50 at c=1", f"{_fmt(ratios['proxy_added_p50_ms_c1'], 3)} ms"),
    ]
    return "\n".join(f"{name:<34} {value}" for name, value in rows)


def format_targets(targets: list[Cell]) -> str:
    """One line per target: status, what, measured value, limit."""
    lines = []
    for t in targets:
        value = f"{_fmt(t['value'], 2)} {t['unit']}".strip()
        limit = f"{t['comparison']} {t['limit']:g} {t['unit']}".strip()
        lines.append(f"{t['status']:<5} {t['target']:<46} {value:>11}  (target {limit})")
    return "\n".join(lines)


def format_retired(figures: list[Cell]) -> str:
    """The retired targets: gateway and floor (minimal proxy) side by side."""
    lines = ["retired targets (figures, beside the minimal proxy's; see docs/benchmarks.md):"]
    for f in figures:
        lines.append(
            f"  {f['figure']:<40} gateway {_fmt(f['gateway'], 2):>8}  "
            f"minimal proxy {_fmt(f['floor'], 2):>8}  (was {f['former_target']})"
        )
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
