"""A short soak (tools/soak.py) against the session's Triton: it runs, reports, and nothing leaks.

The full run is `python -m tools.soak --duration 600` (docs/reliability.md has
its figures); this one runs the same command line for ~20 s at half the
measured capacity, with its own gateway process, and checks the report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tools.embedded_triton import TritonProcess

DURATION_S = 20
INTERVAL_S = 2
WARMUP_S = 4
# Bounds on the change from the end of the warm-up to the end of the run.
# Measured over 16 s (2 runs): gateway RSS -0.2 and 0.0 MB, fds -1 and -1, threads 0.
# A leaked channel or file per call would add hundreds of fds at ~150 calls/s.
RSS_BOUND_MB = 12.0
FD_BOUND = 3


def test_short_soak_runs_reports_and_does_not_leak(triton: TritonProcess, tmp_path: Path) -> None:
    output = tmp_path / "soak.json"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools.soak",
            f"--duration={DURATION_S}",
            f"--interval={INTERVAL_S}",
            f"--warmup={WARMUP_S}",
            "--capacity-s=3",
            f"--output={output}",
            f"--triton-url={triton.grpc_url}",
            f"--triton-pid={triton.pid}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=DURATION_S + 120,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(output.read_text())
    assert output.with_suffix(".csv").read_text().startswith("t_s,")
    assert report["ok"] and report["problems"] == []
    assert report["unexpected"] == 0, report["unexpected_examples"]
    assert report["alive"] == {"gateway": True, "triton": True}
    assert report["capacity_rps"] > 0
    assert abs(report["rate_rps"] - report["capacity_rps"] / 2) <= 0.1
    # Open loop: the calls went out at the rate, and nothing waited for a slot.
    assert report["calls"] >= 0.9 * report["rate_rps"] * DURATION_S
    assert report["overrun"] == 0
    assert len(report["samples"]) >= DURATION_S // INTERVAL_S
    kinds = report["by_kind"]
    assert set(kinds["invalid_history"]) == {"INVALID_ARGUMENT"}  # expected errors are counted
    assert set(kinds) >= {"forecast_routed", "batch", "stream", "compare", "report_actuals"}
    resources = report["resources"]
    assert resources["gateway_rss_mb"]["change"] < RSS_BOUND_MB, resources["gateway_rss_mb"]
    for key in ("gateway_fds", "triton_fds", "gateway_threads"):
        assert resources[key]["change"] <= FD_BOUND, (key, resources[key])
    assert resources["store_mb"]["end"] > 0  # forecasts were recorded for scoring
    assert "rps=" in completed.stdout and "report" in completed.stdout
