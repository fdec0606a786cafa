"""Which process owns a sandbox container, and whether that process still runs.

A `Sandbox` removes its containers whatever happens to the run, but a process that is
SIGKILLed (or a machine that loses power) gets no chance to. Every container therefore
carries its owner's identity, `host:pid:start`: the host name, the pid, and the pid's start
time, so that a reused pid is not taken for the owner. The next run on the same host, or
`toka sandbox clean`, removes the containers whose owner is gone.
"""

from __future__ import annotations

import functools
import os
import socket

LABEL_OWNER = "org.toka-agents.owner"
LABEL_RUN = "org.toka-agents.run"
"""The flow run a container or workspace volume belongs to (its id)."""


def current_owner() -> str:
    """This process's owner label."""
    return _owner(os.getpid())  # by pid: a forked child is an owner of its own


@functools.cache
def _owner(pid: int) -> str:
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or ''}"


def is_orphaned(owner: str, host: str | None = None) -> bool:
    """True when `owner` names a process of this host that no longer runs.

    Owners on other hosts (another machine, or a worker in its own container) are never
    orphaned from here: their liveness cannot be seen.
    """
    try:
        name, pid_text, started = owner.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return False  # not a label we wrote: leave it alone
    if name != (host or socket.gethostname()):
        return False
    now = _start_time(pid)
    return now is None or (started != "" and now != "" and now != started)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot; None when there is no such process.

    Where there is no /proc, a live process gives "": the pid alone decides.
    """
    try:
        with open(f"/proc/{pid}/stat") as handle:
            # The command name may hold spaces and parentheses: the fields follow the last ')'.
            return handle.read().rpartition(")")[2].split()[19]
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None
    except (OSError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # it runs; it is just not ours
    return ""
