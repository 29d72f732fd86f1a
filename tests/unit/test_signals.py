"""Signals a gateway process gets from its supervisor while it starts and after it stops."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.signal_child"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )


def wait_for(process: subprocess.Popen[str], line: str) -> None:
    assert process.stdout is not None
    for got in process.stdout:
        if got.strip() == line:
            return
    raise AssertionError(f"the process ended before printing {line!r}")


def test_sighup_while_starting_does_not_kill_and_sigterm_then_stops_cleanly() -> None:
    process = child()
    try:
        wait_for(process, "starting")  # inside gateway.start(): the catalog read
        process.send_signal(signal.SIGHUP)
        wait_for(process, "started")
        assert process.poll() is None  # SIGHUP did not kill it
        process.send_signal(signal.SIGTERM)
        wait_for(process, "stopped")
        process.send_signal(signal.SIGHUP)  # a reload forwarded as it exits
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()


def test_sigterm_while_starting_stops_once_started() -> None:
    process = child()
    try:
        wait_for(process, "starting")
        process.send_signal(signal.SIGTERM)
        wait_for(process, "stopped")
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
