"""CPU time by part of the machine, read from Linux's /proc: which processes used the cores
while a benchmark ran, so a slowdown can be told apart from work that merely ran beside it.

Parts: this process (the runner), the Prefect server (every process of the session of a
`prefect server start`), its database (processes named `postgres`), the Docker engine
(`dockerd` and `containerd`), and the rest of the machine's busy time: the containers' own
processes, their shims and `runc` (short-lived, so counted only in the machine's total), and
anything else that ran.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

PARTS = ("runner", "Prefect server", "database", "Docker engine", "the rest")
TICKS = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1
ENGINE = {"dockerd", "containerd"}


@dataclass(frozen=True)
class CpuSample:
    at: float
    """time.perf_counter() when it was read."""
    busy: float
    """CPU seconds the machine's cores have been busy (not idle, not waiting on I/O)."""
    parts: Counter[str]
    """CPU seconds used so far by the living processes of each part but `the rest`."""

    def until(self, later: CpuSample) -> dict[str, float]:
        """CPU seconds each part used from this sample to `later`, `the rest` included."""
        used = {part: later.parts[part] - self.parts[part] for part in PARTS[:-1]}
        used["the rest"] = max(0.0, later.busy - self.busy - sum(used.values()))
        return used


def sample() -> CpuSample:
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = (sum(fields) - fields[3] - fields[4]) / TICKS  # idle and iowait are not busy
    servers, parts = set(), Counter[str]()
    processes = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            command = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:  # it ended meanwhile
            continue
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        pid, session, seconds = int(entry.name), int(rest[3]), (int(rest[11]) + int(rest[12])) / TICKS
        if pid == session and command[1:5] == [b"-m", b"prefect", b"server", b"start"]:
            servers.add(session)
        processes.append((pid, session, name, seconds))
    for pid, session, name, seconds in processes:
        if pid == os.getpid():
            parts["runner"] += seconds
        elif session in servers:
            parts["Prefect server"] += seconds
        elif name == "postgres":
            parts["database"] += seconds
        elif name in ENGINE:
            parts["Docker engine"] += seconds
    return CpuSample(time.perf_counter(), busy, parts)


def settle(quiet: float = 0.05, every: float = 0.5, limit: float = 15.0) -> None:
    """Wait until the machine's cores are busy less than `quiet` of the time over `every`
    seconds (the Prefect server has recorded what a run sent it), for at most `limit`."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = sample()
        time.sleep(every)
        after = sample()
        if after.busy - before.busy < quiet * every * CORES:
            return
