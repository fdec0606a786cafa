"""The attach protocol: the code goes in over a container's attach socket, its output and the
supervisor's report come back on the same socket.

The supervisor (`bootstrap.py`) reads one JSON header line (language, user, limits, env, the
marker of its report) and then the code from stdin; it runs the code as the spec's
unprivileged user, passes its output through as it is printed, and ends stderr with its report
(`output.Capture` keeps and counts what arrives). A timer kills the container at the
wall-clock limit, should the supervisor not manage to.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
from docker.utils.socket import frames_iter

from toka_agents.errors import SandboxError
from toka_agents.sandbox.cleanup import kill
from toka_agents.sandbox.creation import Container, engine_errors
from toka_agents.sandbox.output import Capture, Captured, OutputCallback
from toka_agents.sandbox.spec import SandboxResult, SandboxSpec

_STREAMS = {1: "stdout", 2: "stderr"}
HOST_GRACE = 2.0
"""Seconds past the time limit after which this process kills the container, in case the
supervisor (which kills the code at the limit and reports what it used) could not."""
DEADLINE_GRACE = 5.0
"""Seconds past the time limit after which the supervisor ends the container itself, in
case this process died before its timer could kill it."""


def run_attached(
    client: docker.DockerClient,
    container: Container,
    stream: Any,
    spec: SandboxSpec,
    on_output: OutputCallback | None,
    *,
    warm: bool,
    start: Callable[[str], None],
    cancelled: Callable[[], bool],
    image_digest: str | None,
) -> SandboxResult:
    """Send `spec`'s code to the supervisor on `stream` (starting the container first with
    `start` unless it is `warm`, already running) and collect the result. The time limit, the
    host's timer and the supervisor's deadline alike, counts from here. `cancelled` says
    whether the sandbox was cancelled meanwhile."""
    api = client.api
    marker = f"TOKA-RESULT-{secrets.token_hex(8)}"
    header = {
        "language": spec.language,
        "output_limit": spec.output_limit,
        "marker": marker,
        "user": spec.user,
        "cwd": "/workspace" if spec.workspace else "/tmp",
        "timeout": spec.timeout,
        "deadline": spec.timeout + DEADLINE_GRACE,
        "env": spec.env,
    }
    payload = json.dumps(header).encode() + b"\n" + spec.source.encode()
    capture = Capture(spec.output_limit, b"\0" + marker.encode(), on_output)
    timed_out = threading.Event()

    def on_deadline() -> None:
        timed_out.set()
        kill(client, container.id)

    timer = threading.Timer(spec.timeout + HOST_GRACE, on_deadline)
    timer.daemon = True
    try:
        if not warm:
            with engine_errors("starting", container):
                start(container.id)
        started = time.monotonic()
        timer.start()
        send(stream, payload)
        for number, chunk in frames(stream, container):
            if number in _STREAMS:
                capture.add(_STREAMS[number], chunk)
                # A warm container's result is in: the task is done, and the container,
                # which now ends by itself, is retired without waiting for its end.
                if warm and capture.complete:
                    break
        if warm and capture.complete:
            status: dict[str, Any] = {}
            state: dict[str, Any] = {}
        else:
            with engine_errors("waiting for", container):
                status = api.wait(container.id, timeout=max(spec.timeout, 30))
        duration = time.monotonic() - started
    finally:
        timer.cancel()
        with contextlib.suppress(OSError):
            stream.close()
    if status:
        with engine_errors("inspecting", container):
            state = api.inspect_container(container.id)["State"]
    if state.get("Status") in ("removing", "dead") and not (timed_out.is_set() or cancelled()):
        raise SandboxError(f"container {container} was removed while its task ran")
    output = capture.finish()
    killed_at_limit = timed_out.is_set() or bool(output.report and output.report.timed_out)
    return result_of(
        spec,
        container.id,
        output,
        status=status.get("StatusCode"),
        oom_killed=bool(state.get("OOMKilled")),
        timed_out=killed_at_limit,
        cancelled=cancelled() and not killed_at_limit,
        duration=min(duration, spec.timeout) if killed_at_limit else duration,
        warm=warm,
        image_digest=image_digest,
    )


def frames(stream: Any, container: Container) -> Iterator[tuple[int, bytes]]:
    """The attach stream's (stream number, bytes) frames, failing as `engine_errors` does."""
    with engine_errors("reading the output of", container):
        yield from frames_iter(stream, tty=False)


def send(stream: Any, payload: bytes, *, close: bool = True) -> None:
    """Write `payload` to the container's stdin; `close`: then close it (a one-shot call's
    code ends there)."""
    raw = getattr(stream, "_sock", stream)
    raw.settimeout(None)  # quiet code may print nothing for long; the timer enforces the limit
    try:
        raw.sendall(payload)
        if close:
            raw.shutdown(socket.SHUT_WR)  # closes the container's stdin (StdinOnce)
    except OSError:
        pass  # the container is already gone (killed, or no python3 in the image): its result says why


def result_of(
    spec: SandboxSpec,
    container_id: str,
    output: Captured,
    *,
    status: int | None,
    oom_killed: bool,
    timed_out: bool,
    cancelled: bool,
    duration: float,
    warm: bool,
    image_digest: str | None = None,
) -> SandboxResult:
    report = output.report
    stderr_text = output.stderr.decode("utf-8", "replace")
    error = output.report_error or (report.error if report else None)
    if report is None and error is None and not (timed_out or cancelled or oom_killed):
        last = stderr_text.strip().splitlines()[-1:] or ["no output"]
        error = f"the sandbox supervisor did not report (container exit code {status}): {last[0][:300]}"
    return SandboxResult(
        exit_code=report.exit_code if report else status,
        stdout=output.stdout.decode("utf-8", "replace"),
        stderr=stderr_text,
        stdout_bytes=output.stdout_bytes,
        stderr_bytes=output.stderr_bytes,
        stdout_tail=output.stdout_tail.decode("utf-8", "replace"),
        stderr_tail=output.stderr_tail.decode("utf-8", "replace"),
        peak_memory=report.peak_memory if report else None,
        cpu_seconds=report.cpu_seconds if report else None,
        peak_pids=report.peak_pids if report else None,
        refused_forks=report.refused_forks if report else None,
        disk_written=report.disk_written if report else None,
        tmp_full=bool(report and report.tmp_full),
        workspace_full=bool(report and report.workspace_full),
        oom_killed=oom_killed or bool(report and report.oom_kills),
        error=error,
        output_limit=spec.output_limit,
        duration=duration,
        timed_out=timed_out,
        cancelled=cancelled,
        timeout=spec.timeout,
        memory_limit=spec.memory,
        pids_limit=spec.pids,
        tmp_size=spec.tmp_size,
        workspace_limit=spec.workspace_limit,
        image=spec.image,
        image_digest=image_digest,
        container_id=container_id,
        warm=warm,
        note=report.note if report else None,
    )


def is_waiting(stream: Any) -> bool:
    """Whether a warm container's supervisor still waits on `stream`: its socket has nothing to
    read. It writes nothing before its header, so anything there (its end, most likely) means
    gone."""
    raw = getattr(stream, "_sock", stream)
    if raw is None:  # closed
        return False
    try:
        readable, _, _ = select.select([raw], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
