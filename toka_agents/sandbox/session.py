"""A live sandbox session: one container serving every call of one LLM task, so that Python
state, /tmp and started processes persist from call to call, as in a notebook.

The container is a sandbox container like any (the spec's limits, user, network and workspace),
started at the task's first call. Its supervisor learns with the first header that it serves a
session (`session_supervisor.py`, with the Python kernel `kernel.py`); each call is then a
header and the code on the same attach socket, and the supervisor's report line ends it. A
call's time limit interrupts that call, not the session. A container that ends under a call
(the memory limit killed its supervisor, the host's timer, a cancel) gives that call its result
and is started again, once, for the next call, whose result says so; a second end leaves the
calls that follow to single-use containers (`Sandbox.run`). The container is removed when the
task ends; a cancel of the sandbox kills it with the run's others, and a SIGKILLed runner's is
swept as they are (it carries the run's labels).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from toka_agents.errors import SandboxError
from toka_agents.sandbox.attach import (
    DEADLINE_GRACE,
    HOST_GRACE,
    frames,
    is_waiting,
    result_of,
    send,
)
from toka_agents.sandbox.cleanup import kill
from toka_agents.sandbox.creation import Container, engine_errors
from toka_agents.sandbox.output import Capture, OutputCallback
from toka_agents.sandbox.spec import SandboxResult, SandboxSpec

if TYPE_CHECKING:
    from toka_agents.sandbox.containers import Sandbox

_SOURCES = resources.files("toka_agents.sandbox")
SUPERVISOR_SESSION = _SOURCES.joinpath("session_supervisor.py").read_text()
KERNEL = _SOURCES.joinpath("kernel.py").read_text()
INTERRUPT_GRACE = 2.0
"""As the supervisor's: seconds past its time limit a Python call has to end on its interrupt."""


@dataclass
class _Live:
    """The session's container now, its attach socket, and the frames read from it."""

    container: Container
    stream: Any
    frames: Iterator[tuple[int, bytes]]
    spec: SandboxSpec
    """The spec it was made with (its egress and disk applied)."""
    started: bool = False
    """Whether its supervisor has had the session's first header."""


class SandboxSession:
    """The calls of one task in one live container (see the module's docstring). `run` takes
    the task's spec with each call's language and source, as `Sandbox.run` does."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._sandbox = sandbox
        self._lock = threading.Lock()  # one call at a time
        self._live: _Live | None = None
        self._ends = 0
        self._closed = False
        self._ended: str | None = None
        """Why the last container ended under a call: said to the next call."""

    def run(self, spec: SandboxSpec, on_output: OutputCallback | None = None) -> SandboxResult:
        """Run `spec`'s code in the session's container, starting it on the first call (and,
        once, after it ended). Raises `SandboxError` (`SandboxCancelled` once the sandbox
        was cancelled) as `Sandbox.run` does."""
        with self._lock:
            if self._closed:
                raise SandboxError("the sandbox session has ended: its task is over")
            if self._live is not None and not is_waiting(self._live.stream):
                self._end(self._live)  # it ended between calls (killed from outside)
                self._ended = "its container ended between calls"
            if self._live is None and self._ends >= 2:
                result = self._sandbox.run(spec, on_output)
                note = (
                    f"the sandbox session ended twice ({self._ended}): this call ran in a "
                    "container of its own"
                )
                return result.model_copy(update={"note": note})
            note = None
            if self._live is None:
                if self._ended is not None:
                    note = (
                        f"the sandbox session was restarted ({self._ended}): its variables and "
                        "/tmp are gone"
                    )
                self._live = self._open(spec)
            result = self._call(self._live, spec, on_output)
            if note is not None:
                result = result.model_copy(update={"note": " ".join(filter(None, (note, result.note)))})
            return result

    def close(self) -> None:
        """Remove the session's container, if it has one."""
        with self._lock:
            live, self._live, self._closed = self._live, None, True
        if live is not None:
            self._sandbox.discard(live.container, live.stream)

    def _open(self, spec: SandboxSpec) -> _Live:
        container, stream, made = self._sandbox.start_attached(spec)
        return _Live(container, stream, frames(stream, container), made)

    def _call(self, live: _Live, spec: SandboxSpec, on_output: OutputCallback | None) -> SandboxResult:
        marker = f"TOKA-RESULT-{secrets.token_hex(8)}"
        code = spec.source.encode()
        header: dict[str, Any] = {
            "language": spec.language,
            "output_limit": spec.output_limit,
            "marker": marker,
            "user": live.spec.user,
            "cwd": "/workspace" if live.spec.workspace else "/tmp",
            "timeout": spec.timeout,
            "deadline": spec.timeout + INTERRUPT_GRACE + DEADLINE_GRACE,
            "env": {**live.spec.env, **spec.env},
            "size": len(code),
        }
        if not live.started:
            header.update(session=SUPERVISOR_SESSION, kernel=KERNEL)
            live.started = True
        capture = Capture(spec.output_limit, b"\0" + marker.encode(), on_output)
        timed_out = threading.Event()

        def on_deadline() -> None:
            timed_out.set()
            kill(self._sandbox.client, live.container.id)

        timer = threading.Timer(spec.timeout + INTERRUPT_GRACE + HOST_GRACE, on_deadline)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            send(live.stream, json.dumps(header).encode() + b"\n" + code, close=False)
            for number, chunk in live.frames:
                if number in (1, 2):
                    capture.add("stdout" if number == 1 else "stderr", chunk)
                    if capture.complete:
                        break
        finally:
            timer.cancel()
        duration = time.monotonic() - started
        state: dict[str, Any] = {}
        if not capture.complete:  # the container ended under the call
            state = self._end(live)
        output = capture.finish()
        killed_at_limit = timed_out.is_set() or bool(output.report and output.report.timed_out)
        cancelled = self._sandbox.cancelled and not killed_at_limit
        result = result_of(
            spec,
            live.container.id,
            output,
            status=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            timed_out=killed_at_limit,
            cancelled=cancelled,
            duration=min(duration, spec.timeout) if killed_at_limit else duration,
            warm=False,
            image_digest=self._sandbox.image_digest(spec.image),
        )
        if state:
            self._ended = _why_it_ended(result)
        return result

    def _end(self, live: _Live) -> dict[str, Any]:
        """The state of the session's container, which ended under a call; it is removed, and
        the next call starts another."""
        self._live = None
        self._ends += 1
        state: dict[str, Any] = {"ExitCode": None}
        try:
            with engine_errors("waiting for", live.container):
                self._sandbox.client.api.wait(live.container.id, timeout=30)
            with engine_errors("inspecting", live.container):
                state = self._sandbox.client.api.inspect_container(live.container.id)["State"]
        except SandboxError:  # removed already (a cancel): its call's result says why
            pass
        self._sandbox.discard(live.container, live.stream)
        return state


def _why_it_ended(result: SandboxResult) -> str:
    """Why a session's container ended under a call, in words of our own (the call's failure
    may quote the code's output)."""
    if result.cancelled:
        return "the run was cancelled"
    if result.timed_out:
        return "its call did not end at the time limit"
    if result.oom_killed:
        return "the memory limit killed it"
    return "its container ended"
