"""The host's side of a sandbox's output: what it keeps, what it passes on, and the report.

The supervisor in the container caps each stream, but the host does not rely on it: of
each stream it keeps the first `limit` bytes and a tail of the end (for stderr, a tail long
enough to hold the supervisor's report line), passes on at most `limit` bytes as they
arrive, and counts every byte. Its memory stays bounded whatever arrives on the socket.

The supervisor ends stderr with one report line, `\\0<marker> {json}\\n`. The marker is new
for every run and only the supervisor knows it; the NUL that starts it keeps the search for
a marker cut in two by a frame boundary from holding back any ordinary text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

OutputCallback = Callable[[str, bytes], None]
"""Called with ("stdout" | "stderr", bytes) as the code prints."""

TAIL = 4096
"""Bytes kept of the end of each stream: the result's tails."""
REPORT_ROOM = 128 * 1024
"""Bytes kept of the end of stderr, where the report line is. The line carries two tails
of `TAIL` bytes, which JSON escaping can make up to six times longer."""


class SupervisorReport(BaseModel):
    """The report line's JSON: how the code's main process ended and what the code used."""

    exit_code: int
    signal: int | None = None
    timed_out: bool = False
    """The supervisor killed the code at the header's `timeout`."""
    peak_memory: int | None = None
    cpu_seconds: float | None = None
    peak_pids: int | None = None
    refused_forks: int | None = None
    """Forks the pids limit refused while the code ran."""
    disk_written: int | None = None
    """Bytes the code wrote to disk: to the workspace, the only disk it can write to."""
    stdout_bytes: int
    stderr_bytes: int
    stdout_tail: str = ""
    stderr_tail: str = ""
    oom_kills: int | None = None
    tmp_full: bool | None = None
    workspace_full: bool | None = None
    note: str | None = None
    """What a session's supervisor says of the session: that its kernel was restarted."""
    error: str | None = None
    """Why a session's call could not start (a full /tmp, the pids limit)."""


class CappedBuffer:
    """The first `limit` bytes of a stream and its last `tail` bytes, and a count of all."""

    def __init__(self, limit: int, tail: int) -> None:
        self.limit = limit
        self.tail_size = tail
        self.head = bytearray()
        self.tail = bytearray()  # the end of what came past the head
        self.total = 0

    @property
    def held(self) -> int:
        """Bytes held in memory."""
        return len(self.head) + len(self.tail)

    def add(self, data: bytes) -> bytes:
        """Keep what is kept of `data`; return its part that lies within the limit."""
        self.total += len(data)
        within = data[: max(self.limit - len(self.head), 0)]
        self.head += within
        past = memoryview(data)[len(within) :]
        if past:
            self.tail += past[max(len(past) - self.tail_size, 0) :]
            del self.tail[: max(len(self.tail) - self.tail_size, 0)]
        return within

    def ending(self, size: int) -> bytes:
        """The last `size` bytes of the stream; `size` is at most the tail's size."""
        return bytes((self.head[-size:] + self.tail)[-size:])


@dataclass(frozen=True)
class Captured:
    """A run's output as the host kept it, and the supervisor's report when it sent one."""

    report: SupervisorReport | None
    report_error: str | None
    stdout: bytes
    stderr: bytes
    stdout_bytes: int
    stderr_bytes: int
    stdout_tail: bytes
    stderr_tail: bytes


class Capture:
    """One run's output on its way in from the attach socket: kept, counted, passed on."""

    def __init__(self, limit: int, marker: bytes, on_output: OutputCallback | None = None) -> None:
        self.limit = limit
        self.marker = marker
        self.streams = {"stdout": CappedBuffer(limit, TAIL), "stderr": CappedBuffer(limit, REPORT_ROOM)}
        self._on_output = on_output
        self._passed = {"stdout": 0, "stderr": 0}
        self._held_back = b""  # stderr's end while it may be the start of the marker
        self._reported = False
        self._report: SupervisorReport | None = None

    @property
    def held(self) -> int:
        """Bytes held in memory, whatever has arrived."""
        return sum(buffer.held for buffer in self.streams.values()) + len(self._held_back)

    def add(self, stream: str, data: bytes) -> None:
        """Take one frame of `stream`."""
        self.streams[stream].add(data)
        if stream == "stderr":
            data = self._before_report(data)
        self._pass_on(stream, data)

    @property
    def complete(self) -> bool:
        """Whether everything the supervisor will send has arrived: its whole report line and
        as much stdout as the report says it passed on. (The engine forwards stdout and
        stderr apart, so stdout may still be on its way when the report, on stderr, is in.)"""
        if self._report is None:
            if not self._reported:
                return False
            window = self.streams["stderr"].ending(REPORT_ROOM)
            at = window.rfind(self.marker)
            if at < 0 or not window.endswith(b"\n"):
                return False
            self._report, _ = _parse_report(window[at + len(self.marker) :])
            if self._report is None:
                return False  # unreadable: only the stream's end says that all is in
        return self.streams["stdout"].total >= min(self._report.stdout_bytes, self.limit)

    def finish(self) -> Captured:
        """The output once the stream has ended."""
        out, err = self.streams["stdout"], self.streams["stderr"]
        window = err.ending(REPORT_ROOM)
        at = window.rfind(self.marker)
        if at < 0:
            self._pass_on("stderr", self._held_back)
            return Captured(
                report=None,
                report_error=None,
                stdout=bytes(out.head),
                stderr=bytes(err.head),
                stdout_bytes=out.total,
                stderr_bytes=err.total,
                stdout_tail=out.ending(TAIL),
                stderr_tail=err.ending(TAIL),
            )
        report, error = _parse_report(window[at + len(self.marker) :])
        code_stderr = err.total - len(window) + at  # the code's own stderr ends where the report starts
        return Captured(
            report=report,
            report_error=error,
            stdout=bytes(out.head),
            stderr=bytes(err.head[:code_stderr]),
            stdout_bytes=report.stdout_bytes if report else out.total,
            stderr_bytes=report.stderr_bytes if report else code_stderr,
            stdout_tail=report.stdout_tail.encode() if report else out.ending(TAIL),
            stderr_tail=report.stderr_tail.encode() if report else window[:at][-TAIL:],
        )

    def _before_report(self, data: bytes) -> bytes:
        """The part of stderr's `data` that comes before the report line, which is never passed
        on. An end that may be the marker's start waits for the next frame to tell."""
        if self._reported:
            return b""
        data = self._held_back + data
        at = data.find(self.marker)
        if at >= 0:
            self._reported, self._held_back = True, b""
            return data[:at]
        keep = _marker_start(data, self.marker)
        self._held_back = data[len(data) - keep :]
        return data[: len(data) - keep]

    def _pass_on(self, stream: str, data: bytes) -> None:
        room = self.limit - self._passed[stream]
        if self._on_output is None or room <= 0 or not data:
            return
        data = data[:room]
        self._passed[stream] += len(data)
        self._on_output(stream, data)


def _marker_start(data: bytes, marker: bytes) -> int:
    """How many of `data`'s last bytes are the first bytes of `marker` (0: none)."""
    first = data.find(marker[:1], max(len(data) - len(marker) + 1, 0))
    while first >= 0:
        if marker.startswith(data[first:]):
            return len(data) - first
        first = data.find(marker[:1], first + 1)
    return 0


def _parse_report(line: bytes) -> tuple[SupervisorReport | None, str | None]:
    try:
        return SupervisorReport.model_validate_json(line.strip()), None
    except ValidationError as exc:
        return None, f"the sandbox supervisor's report was unreadable: {exc.errors()[0]['msg']}"
