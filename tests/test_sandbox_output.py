"""The host's side of a sandbox's output (`sandbox.output`): bounded whatever arrives, every
byte counted, and the supervisor's report found and never passed on, wherever frames cut it.

These feed the capture the frames the attach socket would bring; no container is needed to
show what the host keeps of them.
"""

from __future__ import annotations

import json

from toka_agents.sandbox.output import REPORT_ROOM, TAIL, Capture

MB = 1024**2
MARKER = b"\0TOKA-RESULT-0123456789abcdef"
REPORT = {
    "exit_code": 3,
    "peak_memory": 5 * MB,
    "cpu_seconds": 0.5,
    "stdout_bytes": 7,
    "stderr_bytes": 6,
    "stdout_tail": "output\n",
    "stderr_tail": "hello\n",
}


def report_line(report: dict) -> bytes:
    return MARKER + b" " + json.dumps(report).encode() + b"\n"


def test_the_host_holds_at_most_the_cap_and_the_tails_whatever_arrives():
    arrived = {"stdout": 0, "stderr": 0}

    def count(stream: str, data: bytes) -> None:
        arrived[stream] += len(data)

    capture = Capture(MB, MARKER, count)
    frame = bytes(range(1, 256)) * 128  # about 32 KiB, as the engine frames it
    frames = 20 * MB // len(frame)
    most = 0
    for _ in range(frames):
        capture.add("stdout", frame)
        capture.add("stderr", frame)
        most = max(most, capture.held)
    output = capture.finish()
    print(f"held at most {most} bytes for {2 * frames * len(frame)} that arrived")

    assert most <= 2 * MB + TAIL + REPORT_ROOM
    assert arrived == {"stdout": MB, "stderr": MB}  # passed on: the cap, no more
    assert output.stdout_bytes == output.stderr_bytes == frames * len(frame)
    stream = frame * frames
    assert output.stdout == output.stderr == stream[:MB]
    assert output.stdout_tail == output.stderr_tail == stream[-TAIL:]
    assert output.report is None


def test_the_report_is_found_and_never_passed_on_wherever_a_frame_boundary_cuts_it():
    text = b"hello\n"
    stream = text + report_line(REPORT)
    for cut in range(len(stream) + 1):
        passed: list[bytes] = []
        capture = Capture(MB, MARKER, lambda name, data, passed=passed: passed.append(data))
        capture.add("stderr", stream[:cut])
        capture.add("stderr", stream[cut:])
        output = capture.finish()
        assert b"".join(passed) == text, cut
        assert output.stderr == text
        assert output.report is not None and output.report.exit_code == 3


def test_the_report_is_found_past_a_stderr_that_filled_the_cap():
    capture = Capture(1000, MARKER)
    capture.add("stderr", b"e" * 1000)
    capture.add("stderr", report_line({**REPORT, "stderr_bytes": 5000}))
    output = capture.finish()
    assert output.report is not None
    assert output.stderr == b"e" * 1000 and output.stderr_bytes == 5000


def test_a_nul_at_a_frames_end_is_held_back_only_until_the_next_frame_tells():
    passed: list[bytes] = []
    capture = Capture(MB, MARKER, lambda name, data: passed.append(data))
    capture.add("stderr", b"binary\0")
    assert passed == [b"binary"]
    capture.add("stderr", b"more")
    assert passed == [b"binary", b"\0more"]
    capture.add("stderr", b"end\0")
    output = capture.finish()  # no report came: what was held back is passed on
    assert b"".join(passed) == b"binary\0moreend\0" == output.stderr
    assert output.report is None


def test_an_unreadable_report_is_an_error_not_a_traceback():
    capture = Capture(MB, MARKER)
    capture.add("stderr", b"hello\n" + MARKER + b" {not json\n")
    output = capture.finish()
    assert output.report is None and output.stderr == b"hello\n"
    assert output.report_error is not None
    assert output.report_error.startswith("the sandbox supervisor's report was unreadable: ")
