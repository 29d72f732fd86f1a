"""What the benchmark ran on: CPU, cores, memory, load, and the versions that matter."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import tritonclient.grpc as triton_grpc


def _first(path: str, key: str) -> str:
    """The value of the first ``key: value`` line of a /proc file."""
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages."""
    return [round(v, 2) for v in os.getloadavg()]


def source_revision() -> str:
    """The checked-out commit (read only; "unknown" outside a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() or "unknown"


def triton_version(url: str) -> str:
    """The server's own version string (e.g. 2.51.0)."""
    with triton_grpc.InferenceServerClient(url=url) as client:
        return str(client.get_server_metadata(as_json=True).get("version", "unknown"))


def describe(triton_url: str) -> dict[str, Any]:
    """The machine and software versions, as printed and written to the JSON."""
    memory_kb = _first("/proc/meminfo", "MemTotal").split()[0]
    return {
        "cpu_model": _first("/proc/cpuinfo", "model name"),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory_kb) / 1024 / 1024, 1) if memory_kb.isdigit() else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "torch": _version("torch"),
        "numpy": _version("numpy"),
        "grpcio": _version("grpcio"),
        "tritonclient": _version("tritonclient"),
        "nvidia_pytriton": _version("nvidia-pytriton"),
        "triton_server": triton_version(triton_url),
        "commit": source_revision(),
        "load_average_at_start": load_average(),
    }
