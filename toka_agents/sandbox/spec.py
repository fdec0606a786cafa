"""What the sandbox is asked to run (`SandboxSpec`) and what comes back (`SandboxResult`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from toka_agents.config.limits import format_bytes, format_seconds

SANDBOX_USER = "10001:10001"
"""The code runs as this unprivileged user, whatever the image says."""


class SandboxSpec(BaseModel):
    """Code plus the container settings it runs under. Limits are bytes, cores and seconds."""

    model_config = ConfigDict(frozen=True)

    image: str
    language: Literal["python", "shell"]
    source: str
    memory: int = Field(gt=0)
    cpus: float = Field(gt=0)
    pids: int = Field(gt=0)
    timeout: float = Field(gt=0)
    network: str | None = Field(None, description="Docker network to join; None: no network at all.")
    network_allow: tuple[str, ...] | None = Field(
        None,
        description="Limited network: the only hosts (`host`, `host:port`) the code may reach, "
        "through an egress proxy whose upstream side joins `network`; the container itself joins "
        "only an internal network shared with the proxy (see `egress`). None: not limited.",
    )
    refuse_dns: bool = Field(
        False,
        description="Every DNS lookup fails, in about a second: the container's one DNS server "
        "is its own loopback, where nothing answers; and it has no IPv6 (see `egress`).",
    )
    workspace: Path | None = None
    workspace_writable: bool = False
    workspace_limit: int | None = Field(
        None,
        gt=0,
        description="Bytes the run's workspace may hold: its own file system of this size is "
        "mounted on it (see `disk`). None: no limit.",
    )
    env: dict[str, str] = {}
    labels: dict[str, str] = {}
    name: str | None = Field(None, description="Container name prefix, for people reading `docker ps`.")
    output_limit: int = Field(1024 * 1024, gt=0, description="Bytes kept of stdout and of stderr.")
    tmp_size: int = Field(64 * 1024 * 1024, gt=0, description="Size of the writable /tmp.")
    user: str = Field(
        SANDBOX_USER,
        pattern=r"^[1-9][0-9]*:[1-9][0-9]*$",
        description="`uid:gid` the code runs as; never root, and never the supervisor's user.",
    )


class SandboxResult(BaseModel):
    """How the code ended, what it printed, and what it used (measured in the container: its
    cgroup and the kernel's counts, never estimated)."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = Field(0, description="Bytes the code wrote to stdout, before any cut.")
    stderr_bytes: int = Field(0, description="Bytes the code wrote to stderr, before any cut.")
    output_limit: int = 0
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration: float = Field(0.0, description="Wall-clock seconds from the code's start to its end.")
    peak_memory: int | None = Field(None, description="The container's peak memory, bytes.")
    cpu_seconds: float | None = Field(None, description="CPU time of every process of the task.")
    peak_pids: int | None = Field(
        None, description="Most processes and threads at once, the supervisor's included."
    )
    refused_forks: int | None = Field(None, description="Forks the pids limit refused.")
    disk_written: int | None = Field(
        None, description="Bytes written to the workspace (the only disk it can write)."
    )
    tmp_full: bool = False
    workspace_full: bool = False
    timed_out: bool = False
    oom_killed: bool = False
    cancelled: bool = False
    timeout: float = 0.0
    memory_limit: int = 0
    pids_limit: int = 0
    tmp_size: int = 0
    workspace_limit: int | None = None
    image: str = ""
    image_digest: str | None = Field(None, description="The image's id (`sha256:...`) the code ran in.")
    container_id: str = ""
    warm: bool = Field(False, description="It ran in a container of the warm pool, started ahead of it.")
    error: str | None = Field(None, description="Why the sandbox itself could not report.")
    note: str | None = Field(
        None,
        description="What a live session says of itself with this call: that it was restarted, "
        "and what was lost.",
    )

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_bytes > self.output_limit

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_bytes > self.output_limit

    @property
    def pids_limit_hit(self) -> bool:
        return bool(self.refused_forks)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def causes(self) -> list[str]:
        """What got in the code's way, each as measured: the pids limit, a full /tmp or
        workspace, output cut at the cap. A full file system is named only for a failed run,
        and the workspace, which a run's tasks share, only for a task that wrote to it: a
        neighbour may have filled it."""
        failed = self.exit_code != 0
        found = []
        if self.pids_limit_hit:
            found.append(f"pids limit {self.pids_limit} hit: {self.refused_forks} fork(s) refused")
        if failed and self.tmp_full:
            found.append(f"/tmp full ({format_bytes(self.tmp_size)})")
        if failed and self.workspace_full and self.disk_written:
            size = f" ({format_bytes(self.workspace_limit)})" if self.workspace_limit else ""
            found.append(f"workspace full{size}")
        for name, size, truncated in (
            ("stdout", self.stdout_bytes, self.stdout_truncated),
            ("stderr", self.stderr_bytes, self.stderr_truncated),
        ):
            if truncated:
                found.append(f"{name} cut at {format_bytes(self.output_limit)} of {format_bytes(size)}")
        return found

    @property
    def failure(self) -> str | None:
        """Why the run failed, in one line, or None when it succeeded."""
        if self.cancelled:
            return "cancelled: the run was cancelled"
        if self.timed_out:
            return f"timed out after {format_seconds(self.timeout)}"
        if self.oom_killed:
            return f"killed: memory limit {format_bytes(self.memory_limit)} exceeded"
        if self.error is not None:
            return self.error
        if self.exit_code != 0:
            last = last_line(self.stderr_tail) or last_line(self.stdout_tail)
            ended = f"exit code {self.exit_code}: {last}" if last else f"exit code {self.exit_code}"
            full = [cause for cause in self.causes if "full" in cause]
            return f"{'; '.join(full)}: {ended}" if full else ended
        return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
