"""``python -m bench``: the side-by-side throughput benchmark (``make bench``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bench.machine import load_average
from bench.runner import SECTIONS, BenchSettings, measure, write_report
from bench.scaling import format_table as format_scaling
from bench.scaling import measure_workers
from bench.services import ModelOverrides
from forecast_gateway.backtest.windows import MAX_WINDOWS

BUSY_LOAD = 0.5
DEFAULT_CHANNELS = 8
ONLY = {"time": ("time",), "models": ("models",), "backtest": ("backtest",)}
"""``--only NAME``: the sections it runs (``--only time`` = ``--sections time``)."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--smoke", action="store_true", help="tiny fast run (c=1 and 8, ~100 calls/cell)"
    )
    parser.add_argument(
        "--output", type=Path, default=Path("bench-results.json"), help="JSON results path"
    )
    parser.add_argument(
        "--seconds", type=float, help="measured seconds per cell (default 7; time, model cells 3)"
    )
    parser.add_argument("--concurrency", type=_ints, help="comma-separated, default 1,8,32,64,256")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--sections", help=f"comma-separated subset of {','.join(SECTIONS)}")
    chosen.add_argument(
        "--only",
        choices=ONLY,
        help="only these cells, and only the servers they call (Triton and the gateway)",
    )
    parser.add_argument(
        "--time-rounds",
        type=int,
        default=1,
        help="rounds of the time cells (each kind against the no-time cell of its round)",
    )
    parser.add_argument(
        "--backtest-rounds",
        type=int,
        help="rounds of the backtest cells (default 3, smoke 1)",
    )
    parser.add_argument(
        "--backtest-windows",
        type=_ints,
        help="comma-separated W of the backtest cells (default 100,1000; smoke 20)",
    )
    parser.add_argument(
        "--queue-delay-us", type=int, help="override lstm max_queue_delay_microseconds"
    )
    parser.add_argument("--instances", type=int, help="override the lstm instance_group count")
    parser.add_argument("--max-batch-size", type=int, help="override the lstm max_batch_size")
    parser.add_argument("--keep-logs", type=Path, help="copy the processes' logs to this directory")
    parser.add_argument(
        "--workers",
        type=_ints,
        help="instead of the table: the gateway with each worker count, e.g. 1,2,4",
    )
    parser.add_argument(
        "--channels",
        type=int,
        default=DEFAULT_CHANNELS,
        help=f"connections the load generator uses with --workers (default {DEFAULT_CHANNELS})",
    )
    return parser.parse_args(argv)


def backtest_changes(args: argparse.Namespace) -> dict[str, object]:
    """The backtest cells' settings the command line changes."""
    changes: dict[str, object] = {}
    if args.backtest_rounds is not None:
        if args.backtest_rounds < 1:
            raise SystemExit("--backtest-rounds must be at least 1")
        changes["backtest_rounds"] = args.backtest_rounds
    if args.backtest_windows:
        if not all(1 <= w <= MAX_WINDOWS for w in args.backtest_windows):
            raise SystemExit(f"--backtest-windows: each W from 1 to {MAX_WINDOWS}")
        changes["backtest_windows"] = args.backtest_windows
    return changes


def settings_from(args: argparse.Namespace) -> BenchSettings:
    """BenchSettings from the parsed command line."""
    changes: dict[str, object] = {
        "overrides": ModelOverrides(args.queue_delay_us, args.instances, args.max_batch_size)
    }
    if args.keep_logs is not None:
        changes["logs_dir"] = args.keep_logs
    if args.seconds is not None:
        changes["cell_seconds"] = changes["time_seconds"] = changes["model_seconds"] = args.seconds
    if args.concurrency:
        changes["concurrencies"] = args.concurrency
    if args.time_rounds < 1:
        raise SystemExit("--time-rounds must be at least 1")
    changes["time_rounds"] = args.time_rounds
    changes.update(backtest_changes(args))
    if args.only:
        changes["sections"] = ONLY[args.only]
    if args.sections:
        sections = tuple(s.strip() for s in args.sections.split(","))
        unknown = set(sections) - set(SECTIONS)
        if unknown:
            raise SystemExit(f"unknown sections: {sorted(unknown)}")
        changes["sections"] = sections
    if args.smoke:
        return BenchSettings.smoke_run(**changes)
    return BenchSettings(**changes)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print the report; a missed target never fails the command.

    A failed correctness check does: a backtest whose MAE is not the one of
    the same windows sent as Forecast calls exits 1 (after the report).
    """
    args = parse_args(argv)
    settings = settings_from(args)
    load = load_average()
    if load[0] > BUSY_LOAD:
        sys.stdout.write(f"warning: load average {load} before the run: results will be noisy\n")
    if args.workers:
        scaled = measure_workers(settings, args.workers, args.channels, sys.stdout)
        sys.stdout.write("\n" + format_scaling(scaled["cells"]) + "\n")
        args.output.write_text(json.dumps(scaled, indent=2, default=str) + "\n")
        sys.stdout.write(f"wrote {args.output} ({scaled['duration_s']:.0f} s in all)\n")
        return
    results = measure(settings, sys.stdout)
    write_report(results, args.output, sys.stdout)
    if results["backtest_mismatches"]:
        raise SystemExit(f"{len(results['backtest_mismatches'])} backtest MAE checks failed")


if __name__ == "__main__":
    main()
