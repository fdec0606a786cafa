"""The per-run workspace: a host directory mounted at /workspace in every container of a run."""

from __future__ import annotations

import os
import re
from pathlib import Path

from toka_agents.sandbox.spec import SANDBOX_USER


def default_root() -> Path:
    """`$TOKA_HOME/runs`, by default `~/.toka/runs`."""
    return Path(os.environ.get("TOKA_HOME", Path.home() / ".toka")) / "runs"


def create_workspace(root: Path | None, run_name: str) -> Path:
    """Make `<root>/<run_name>/workspace`, writable by the sandbox user; return its path."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-") or "run"
    path = (root or default_root()).expanduser().resolve() / safe / "workspace"
    path.mkdir(parents=True, exist_ok=True)
    uid, gid = (int(part) for part in SANDBOX_USER.split(":"))
    if os.geteuid() == 0:
        os.chown(path, uid, gid)
        path.chmod(0o755)
    else:
        # Without root we cannot hand the directory to the sandbox user; let it write anyway.
        path.chmod(0o777)
    return path
