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
    workspace: Path | None = None
    workspace_writable: bool = False
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
    """How the code ended, what it printed, and what it used."""

    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0
    stderr_bytes: int = 0
    output_limit: int = 0
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration: float = 0.0
    peak_memory: int | None = None
    cpu_seconds: float | None = None
    timed_out: bool = False
    oom_killed: bool = False
    cancelled: bool = False
    timeout: float = 0.0
    memory_limit: int = 0
    container_id: str = ""
    warm: bool = Field(False, description="It ran in a container of the warm pool, started ahead of it.")
    error: str | None = Field(None, description="Why the sandbox itself could not report.")

    @property
    def stdout_truncated(self) -> bool:
        return self.stdout_bytes > self.output_limit

    @property
    def stderr_truncated(self) -> bool:
        return self.stderr_bytes > self.output_limit

    @property
    def ok(self) -> bool:
        return self.failure is None

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
            return f"exit code {self.exit_code}: {last}" if last else f"exit code {self.exit_code}"
        return None


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
