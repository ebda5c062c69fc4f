"""CPU seconds from /proc (Linux), for the benchmarks that measure processes they did not
start in-process: a server, its workers, a local PostgreSQL."""

from __future__ import annotations

import os
from pathlib import Path


def proc_fields(pid: int | str) -> list[str]:
    """/proc/PID/stat's fields from the state on (index 1: ppid, 11-14: utime, stime, cutime,
    cstime in clock ticks); [] when the process has gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def cpu_s(pids: list[int], reaped: bool = False) -> float:
    """CPU seconds the processes have used (with `reaped`, their waited-for children's too)."""
    ticks = sum(int(x) for p in pids for x in proc_fields(p)[11 : 15 if reaped else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """Busy CPU seconds of all cores (everyone's processes): all but idle and iowait."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
