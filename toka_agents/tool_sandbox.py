"""An LLM task's sandbox for its tools: where `run_code` (and the file tools, which are code)
runs, and what it adds up.

With `sandbox_session` (the default) the task's calls share one live container
(`sandbox.session`), started at its first call (the listing of the workspace for the first
prompt, which runs in it as the file tools do) and removed when the task ends; without, each
call runs in a container of its own (`Sandbox.run`). Either way `SandboxUsage` adds up what
the calls used, for the task's outcome.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from toka_agents.sandbox import Sandbox, SandboxResult, SandboxSpec
from toka_agents.sandbox.session import SandboxSession


class SandboxUsage:
    """`run_code` for an agent's toolbox that adds up what its containers used."""

    def __init__(self, sandbox: Sandbox, spec: SandboxSpec) -> None:
        self.sandbox = sandbox
        self.spec = spec
        self.peak_memory: int | None = None
        self.peak_pids: int | None = None
        self.cpu_seconds: float | None = None
        self.stdout_bytes: int | None = None
        self.stderr_bytes: int | None = None
        self.disk_written: int | None = None
        self.image_digest: str | None = None
        self.session: SandboxSession | None = None
        """The task's live session, while its calls share one container."""

    @contextlib.contextmanager
    def session_for(self, live: bool) -> Iterator[SandboxSession | None]:
        """Within the block, calls share one live container when `live`; it is removed at the
        block's end, however the task ends."""
        if not live:
            yield None
            return
        with self.sandbox.session(self.spec) as self.session:
            try:
                yield self.session
            finally:
                self.session = None

    def run_code(self, language: str, source: str) -> SandboxResult:
        """Run code in the task's session, if it has one, else in a container of its own."""
        run = self.session.run if self.session is not None else self.sandbox.run
        result = run(self.spec.model_copy(update={"language": language, "source": source}))
        self.peak_memory = _most(self.peak_memory, result.peak_memory)
        self.peak_pids = _most(self.peak_pids, result.peak_pids)
        self.cpu_seconds = _sum(self.cpu_seconds, result.cpu_seconds)
        self.stdout_bytes = _sum(self.stdout_bytes, result.stdout_bytes)
        self.stderr_bytes = _sum(self.stderr_bytes, result.stderr_bytes)
        self.disk_written = _sum(self.disk_written, result.disk_written)
        self.image_digest = result.image_digest or self.image_digest
        return result


def _most(so_far: int | None, new: int | None) -> int | None:
    return so_far if new is None else max(so_far or 0, new)


def _sum(so_far: Any, new: Any) -> Any:
    return so_far if new is None else (so_far or 0) + new
