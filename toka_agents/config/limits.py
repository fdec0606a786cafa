"""The resource limits grammar: memory sizes, CPU shares and durations.

Each parser takes what a config file holds (a string or a number) and returns one plain
number: bytes, cores, or seconds. A value it cannot read raises `ValueError` whose
message shows the value and the accepted forms; the config layer adds file and key path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

_MEMORY_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1024**4,
    "tib": 1024**4,
}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)

_TIME_UNITS = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TIME = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)

DEFAULT_WORKSPACE_LIMIT = 1024**3
"""Bytes a run's workspace may hold unless `limits.workspace` says otherwise (1GB)."""

# The largest limits a sandbox may be given: what Docker and the kernel can honour, not what
# a given host has. Config knows no Docker, so it cannot ask the engine for its memory: the
# bounds are fixed, and a limit above the host's is the engine's to refuse when a task starts.
MAX_TIMEOUT_SECONDS = 30 * 86400
"""30 days: longer is no task's limit but a typo, and later overflows the runtime's clocks."""
MAX_MEMORY_BYTES = 1024**4
"""1TB of memory for one container."""
MAX_WORKSPACE_BYTES = 16 * 1024**4
"""16TB: the largest file ext4 holds with 4KB blocks (the workspace is an ext4 image)."""
MAX_CPU_CORES = 1024.0
MAX_PIDS = 4_194_304
"""Linux's PID_MAX_LIMIT: no pids.max can be higher."""

_CPU_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")
_CPU_CORES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*cores?\s*$", re.IGNORECASE)
_CPU_NUMBER = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


def parse_memory(value: object) -> int:
    """`512MB`, `1gb`, `64 KiB`, `1048576` -> bytes (1024-based)."""
    if isinstance(value, bool):
        raise ValueError(f"invalid memory {value!r}: use a size like 512MB or 1GB")
    if isinstance(value, (int, float)):
        number, unit = _finite(value, "memory"), ""
    else:
        match = _MEMORY.match(str(value))
        if not match or match.group(2).lower() not in _MEMORY_UNITS:
            raise ValueError(
                f"invalid memory {value!r}: use a number with B, KB, MB, GB or TB, like 512MB"
            )
        number, unit = _finite(match.group(1), "memory"), match.group(2).lower()
    size = int(number * _MEMORY_UNITS[unit])
    if size <= 0:
        raise ValueError(f"invalid memory {value!r}: must be more than 0")
    return size


def parse_cpu(value: object) -> float:
    """CPU share in cores.

    `75%` is 0.75 of a core; a fraction `0.5` is half a core; a bare number above 1 is a
    percentage (`75` is 0.75); `"2 cores"` is two cores.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid cpu {value!r}: use 50%, 0.5 or '2 cores'")
    text = str(value)
    if match := _CPU_PERCENT.match(text):
        cores = _finite(match.group(1), "cpu") / 100
    elif match := _CPU_CORES.match(text):
        cores = _finite(match.group(1), "cpu")
    elif match := _CPU_NUMBER.match(text):
        number = _finite(match.group(1), "cpu")
        cores = number if number <= 1 else number / 100
    else:
        raise ValueError(
            f"invalid cpu {value!r}: use a percentage (75%), a fraction (0.5) or cores ('2 cores')"
        )
    if cores <= 0:
        raise ValueError(f"invalid cpu {value!r}: must be more than 0")
    return cores


def parse_duration(value: object) -> float:
    """`30s`, `5m`, `2h`, `1d`, `250ms` or bare seconds (`1800`) -> seconds."""
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}: use 30s, 5m, 2h or seconds")
    if isinstance(value, (int, float)):
        seconds = _finite(value, "duration")
    else:
        match = _TIME.match(str(value))
        if not match:
            raise ValueError(
                f"invalid duration {value!r}: use a number with ms, s, m, h or d, like 30s or 2h"
            )
        seconds = _finite(match.group(1), "duration") * _TIME_UNITS[(match.group(2) or "").lower()]
    if seconds <= 0:
        raise ValueError(f"invalid duration {value!r}: must be more than 0")
    return seconds


def _finite(number: object, what: str) -> float:
    """`number` as a float, refusing what a float cannot hold (10**400, nan, inf)."""
    try:
        result = float(number)  # type: ignore[arg-type]
    except (OverflowError, ValueError):
        raise ValueError(f"invalid {what} {number!r}: too large") from None
    if not math.isfinite(result) or result > 1e15:
        raise ValueError(f"invalid {what} {number!r}: too large")
    return result


def format_bytes(size: int | None) -> str:
    """1048576 -> `1MB`, 1536 -> `1.5KB`: the inverse of `parse_memory` for messages."""
    if size is None:
        return "-"
    for unit, factor in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g}{unit}"
    return f"{size}B"


def format_seconds(seconds: float | None) -> str:
    """5.0 -> `5s`, 0.25 -> `250ms`, 7200 -> `2h`."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{seconds / factor:.0f}{unit}"
    return f"{seconds:.3g}s"


T = TypeVar("T", int, float)


def _at_most(bound: float, what: str, shown: Callable[[Any], str], why: str) -> Callable[[T], T]:
    """A validator refusing a value over `bound`, naming the value, the bound and why."""

    def check(value: T) -> T:
        if value > bound:  # type: ignore[operator]
            raise ValueError(f"{what} {shown(value)} is over {shown(bound)}, {why}")
        return value

    return check


at_most_timeout = _at_most(
    MAX_TIMEOUT_SECONDS, "timeout", format_seconds, "the longest toka-agents allows"
)
at_most_memory = _at_most(
    MAX_MEMORY_BYTES, "memory", format_bytes, "the most toka-agents gives a sandbox"
)
at_most_workspace = _at_most(
    MAX_WORKSPACE_BYTES, "workspace", format_bytes, "the largest an ext4 workspace can be"
)
at_most_cpu = _at_most(
    MAX_CPU_CORES, "cpu", lambda cores: f"{cores:g} cores", "the most toka-agents gives a sandbox"
)
at_most_pids = _at_most(MAX_PIDS, "pids", str, "Linux's largest process limit")
