"""Per-process CPU time and memory from /proc (Linux only), and the machine's CPU totals."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds used so far by `pid` (0.0 once it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Field 2 (comm) may hold spaces: split after its closing parenthesis.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` in bytes (0 once it is gone)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * PAGE_SIZE


def peak_rss_bytes(pid: int) -> int:
    """The most resident memory `pid` ever had, in bytes (VmHWM; 0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, IndexError, ValueError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of `pid` (from every thread's children list)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def with_descendants(pid: int) -> list[int]:
    """`pid` and all its descendants (Triton's Python-backend stubs are its children)."""
    tree, queue = [pid], [pid]
    while queue:
        for child in children(queue.pop()):
            if child not in tree:
                tree.append(child)
                queue.append(child)
    return tree


@dataclass(frozen=True)
class MachineTimes:
    """Machine-wide CPU seconds since boot, summed over all cores."""

    busy: float
    idle: float


def machine_times() -> MachineTimes:
    """Busy and idle CPU seconds of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    steal_and_guest = sum(values[7:])  # steal, guest, guest_nice: not ours
    busy = sum(values) - idle - steal_and_guest
    return MachineTimes(busy=busy / CLOCK_TICKS, idle=idle / CLOCK_TICKS)


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU seconds per watched group of processes, plus the machine's totals."""

    groups: dict[str, float]
    machine: MachineTimes


def snapshot(groups: Mapping[str, Iterable[int]]) -> CpuSnapshot:
    """CPU seconds of each group (a group counts its processes and their descendants)."""
    totals = {
        name: sum(cpu_seconds(p) for root in pids for p in with_descendants(root))
        for name, pids in groups.items()
    }
    return CpuSnapshot(groups=totals, machine=machine_times())


def cores_used(start: CpuSnapshot, end: CpuSnapshot, wall_s: float) -> dict[str, float]:
    """CPU used between two snapshots, in cores (1.0 = one core busy all the time).

    Besides the groups: ``machine_busy`` and ``machine_idle`` (the whole machine)
    and ``other`` (busy time no watched process accounts for).
    """
    if wall_s <= 0:
        return {}
    used = {name: (end.groups[name] - start.groups[name]) / wall_s for name in start.groups}
    used["machine_busy"] = (end.machine.busy - start.machine.busy) / wall_s
    # Everything else on the machine: other users' processes, the benchmark's own runner.
    used["other"] = max(0.0, used["machine_busy"] - sum(used[name] for name in start.groups))
    used["machine_idle"] = (end.machine.idle - start.machine.idle) / wall_s
    return {name: round(value, 3) for name, value in used.items()}
