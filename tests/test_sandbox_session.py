"""A live sandbox session on the real engine: one container serves every call of a task, Python
variables persist between calls, a call's time limit ends that call and not the session, a
session killed by its limits or from outside starts again once (and says so), and no container
outlives it: not its end, a cancel, or a SIGKILL of the process that held it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import REPO
from docker.errors import NotFound
from llm_server import OPENAI_PATH, scripted_server, tool_call
from test_llm_runs import llm_config

from toka_agents import run
from toka_agents.errors import SandboxError
from toka_agents.llm.tools import file_tool_script
from toka_agents.sandbox import Sandbox, SandboxCancelled, SandboxResult, SandboxSpec

MB = 1024**2
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")


@pytest.fixture
def sandbox(docker_client):
    with Sandbox(docker_client, {"org.toka-agents.test": "session"}) as sandbox:
        yield sandbox


def call(session, spec: SandboxSpec, source: str, language: str = "python", **limits) -> SandboxResult:
    return session.run(spec.model_copy(update={"language": language, "source": source, **limits}))


def running(docker_client, sandbox: Sandbox) -> list[str]:
    labels = [f"{key}={value}" for key, value in sandbox.labels.items()]
    return [c["Id"] for c in docker_client.api.containers(filters={"label": labels})]


def test_python_state_tmp_and_shell_calls_share_one_container(spec, sandbox, docker_client):
    template = spec("")
    with sandbox.session(template) as session:
        first = call(session, template, "import json\nanswer = 6 * 7\nprint('set')")
        second = call(session, template, "print(json.dumps({'answer': answer}))")
        shell = call(session, template, "echo kept > /tmp/note; echo $HOME; pwd", language="shell")
        third = call(session, template, "print(open('/tmp/note').read().strip())")
        failing = call(session, template, "def f():\n    raise ValueError('boom')\nf()")
        exited = call(session, template, "import sys\nsys.exit(3)")
        after = call(session, template, "print(answer, f.__name__)")
        [container] = running(docker_client, sandbox)
    assert first.ok and first.stdout == "set\n"
    assert second.stdout == '{"answer": 42}\n'
    assert shell.ok and shell.stdout.splitlines()[1] == "/workspace"
    assert third.stdout == "kept\n"
    # An exception and sys.exit end their call as a script's would, and nothing else.
    assert failing.exit_code == 1 and failing.stderr.rstrip().endswith("ValueError: boom")
    assert '<cell 5>", line 2, in f' in failing.stderr  # the traceback shows the code's lines
    assert exited.exit_code == 3 and exited.failure == "exit code 3"
    assert after.stdout == "42 f\n" and after.note is None
    assert {r.container_id for r in (first, second, shell, third, after)} == {container}
    assert not running(docker_client, sandbox)  # removed when the block ended


def test_a_time_limit_ends_the_call_and_an_interruptible_call_keeps_the_variables(spec, sandbox):
    template = spec("", timeout=2)
    with sandbox.session(template) as session:
        call(session, template, "kept = 'yes'")
        slept = call(session, template, "import time\nwhile True:\n    time.sleep(0.05)")
        after_interrupt = call(session, template, "print(kept)")
        stubborn = call(
            session,
            template,
            "import time\nwhile True:\n    try:\n        time.sleep(0.05)\n    except KeyboardInterrupt:\n        pass",
        )
        after_kill = call(session, template, "print(globals().get('kept'))")
        script = call(session, template, "sleep 60 & echo started; sleep 60", language="shell")
        after_script = call(session, template, "echo alive", language="shell")
    assert slept.timed_out and slept.failure == "timed out after 2s"
    assert "KeyboardInterrupt" in slept.stderr
    assert after_interrupt.stdout == "yes\n" and after_interrupt.note is None
    # Code that will not stop loses its kernel, and the next call is told.
    assert stubborn.timed_out
    assert after_kill.stdout == "None\n"
    assert after_kill.note == (
        "the Python session was restarted: its kernel did not stop at the time limit and was "
        "killed; its variables are gone"
    )
    assert script.timed_out and script.stdout == "started\n"
    assert after_script.ok and after_script.stdout == "alive\n"


def test_the_memory_limit_kills_the_kernel_and_the_next_call_says_so(spec, sandbox):
    template = spec("", memory=96 * MB)
    with sandbox.session(template) as session:
        call(session, template, "kept = 1")
        hog = call(session, template, "block = bytearray(400 * 1024 * 1024)")
        after = call(session, template, "print(globals().get('kept'))")
        again = call(session, template, "print('still')")
    assert hog.oom_killed and hog.failure == "killed: memory limit 96MB exceeded"
    assert after.ok and after.stdout == "None\n"
    assert after.note == (
        "the Python session was restarted: its kernel was killed by the memory limit; its "
        "variables are gone"
    )
    assert again.note is None and after.container_id == hog.container_id


def test_a_container_killed_from_outside_is_started_again_once_then_calls_get_their_own(
    spec, sandbox, docker_client
):
    template = spec("")
    with sandbox.session(template) as session:
        first = call(session, template, "x = 1")
        docker_client.api.kill(first.container_id)
        second = call(session, template, "print(globals().get('x'))")
        docker_client.api.kill(second.container_id)
        third = call(session, template, "print('own')")
        fourth = call(session, template, "print('own')")
    assert second.ok and second.stdout == "None\n" and second.container_id != first.container_id
    assert second.note == (
        "the sandbox session was restarted (its container ended between calls): its variables "
        "and /tmp are gone"
    )
    assert third.ok and third.note.startswith("the sandbox session ended twice")
    assert len({first.container_id, second.container_id, third.container_id, fourth.container_id}) == 4


def test_a_cancel_kills_the_session_within_its_call_and_refuses_the_next(spec, sandbox, docker_client):
    template = spec("", timeout=120)
    results: list[SandboxResult] = []
    with sandbox.session(template) as session:
        worker = threading.Thread(
            target=lambda: results.append(call(session, template, "import time; time.sleep(100)"))
        )
        worker.start()
        deadline = time.monotonic() + 30
        while not running(docker_client, sandbox):
            assert time.monotonic() < deadline, "the session never started"
            time.sleep(0.05)
        time.sleep(0.5)
        started = time.monotonic()
        sandbox.cancel()
        worker.join(30)
        assert time.monotonic() - started < 15
        with pytest.raises(SandboxCancelled):
            call(session, template, "print(1)")
    [result] = results
    assert result.cancelled and result.failure == "cancelled: the run was cancelled"


HOLDER = """
import sys, time
from toka_agents import run
from toka_agents.errors import SandboxError
from toka_agents.llm.tools import file_tool_script
from toka_agents.sandbox import Sandbox, connect
sys.path.insert(0, {tests!r})
from support import sandbox_spec

sandbox = Sandbox(connect(), {{"org.toka-agents.test": {label!r}}})
spec = sandbox_spec("", timeout=300)
with sandbox.session(spec) as session:
    session.run(spec.model_copy(update={{"source": "x = 1"}}))
    print("ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.alone  # its orphan must end by itself, not by another run's sweep
def test_a_sigkilled_holder_leaves_a_container_that_ends_by_itself(docker_client):
    """Nobody is left to remove it: the session's supervisor ends the container when the
    attach socket of its holder closes (as a warm container does)."""
    label = f"sigkill-{os.getpid()}"
    source = textwrap.dedent(HOLDER.format(tests=str(REPO / "tests"), label=label))
    holder = subprocess.Popen([sys.executable, "-c", source], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        filters = {"label": [f"org.toka-agents.test={label}"]}
        [container] = docker_client.api.containers(filters=filters)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    deadline = time.monotonic() + 30
    while is_running(docker_client, container["Id"]):
        assert time.monotonic() < deadline, "the session's container outlived its holder"
        time.sleep(0.2)
    with contextlib.suppress(NotFound):
        docker_client.api.remove_container(container["Id"], force=True)


def is_running(docker_client, container_id: str) -> bool:
    """Whether the container runs; one removed (another run's sweep of orphans) does not."""
    try:
        return docker_client.api.inspect_container(container_id)["State"]["Running"]
    except NotFound:
        return False


NOTEBOOK = """
- name: analyst
  {session}
  tasks: [{{name: sum, instruction: Compute in two steps.}}]
"""


@pytest.mark.parametrize("session", [True, False])
def test_an_llm_tasks_code_calls_share_python_state_unless_sessions_are_off(
    session, prefect_api, tmp_path, workspace_root, api_key
):
    script = (
        tool_call("run_code", language="python", source="x = 6 * 7"),
        tool_call("run_code", language="python", source="print(x)"),
        tool_call("finish", success=True, summary="Done."),
    )
    agents = NOTEBOOK.format(session="" if session else "sandbox_session: false")
    with scripted_server(*script, api_key=api_key) as server:
        result = run(
            llm_config(tmp_path, server, agents, name="notebook"), workspace_root=workspace_root
        )
        requests = server.requests_to(OPENAI_PATH)
    assert result.ok, result.state.message
    second = [m for m in requests[-1].body["messages"] if m.get("role") == "tool"][-1]["content"]
    [run_code] = [
        t["function"] for t in requests[0].body["tools"] if t["function"]["name"] == "run_code"
    ]
    if session:
        assert second == "exit code 0\n--- stdout ---\n42"
        assert "as cells of a notebook do" in run_code["description"]
    else:
        assert second.startswith("error: exit code 1: NameError: name 'x' is not defined")
        assert "Nothing but /workspace survives between runs" in run_code["description"]


def test_a_python_calls_disk_writes_are_counted_per_call(spec, sandbox):
    template = spec("")
    with sandbox.session(template) as session:
        small = call(
            session, template, "open('a.bin', 'wb').write(b'x' * 100_000)\nimport os; os.sync()"
        )
        large = call(
            session, template, "open('b.bin', 'wb').write(b'x' * 3_000_000)\nimport os; os.sync()"
        )
        none = call(session, template, "print(1)")
    assert 100_000 <= small.disk_written < 1_000_000
    assert 3_000_000 <= large.disk_written < 4_000_000
    assert none.disk_written == 0


# What a hostile probe of the session found; each of these took the session (or the kernel)
# down, or let the code skew what its call reports, before it was mended.


def test_a_kernel_killed_between_calls_is_restarted_in_the_same_container(spec, sandbox):
    template = spec("")
    with sandbox.session(template) as session:
        first = call(
            session, template, "open('/tmp/kept', 'w').write('yes')\nimport os\nprint(os.getpid())"
        )
        killed = call(session, template, f"kill -9 {first.stdout.strip()}", language="shell")
        after = call(session, template, "print(open('/tmp/kept').read())")
    assert killed.ok
    assert after.ok and after.stdout == "yes\n" and after.container_id == first.container_id
    assert after.note == (
        "the Python session was restarted: its kernel was killed by signal 9; its variables are gone"
    )


def test_a_call_the_kernel_never_took_goes_to_a_new_kernel(spec, sandbox):
    # A child of the kernel stops it a second after the first call, and kills it two seconds
    # later: alive when the next call is sent, it dies without reading it, as a kernel killed
    # just before a call (by a shell call's `kill`, by the memory limit) can. The call runs in
    # a new kernel rather than failing for the old one's end.
    template = spec("")
    ending = (
        "import os, subprocess\n"
        "pid = os.getpid()\n"
        "subprocess.Popen(['sh', '-c', f'sleep 1; kill -STOP {pid}; sleep 2; kill -9 {pid}'],"
        " start_new_session=True)"
    )
    with sandbox.session(template) as session:
        first = call(session, template, ending)
        time.sleep(2)  # the kernel is stopped now
        after = call(session, template, "print('ran')")
    assert first.ok, first
    assert after.ok and after.stdout == "ran\n" and after.container_id == first.container_id, after
    assert after.note == (
        "the Python session was restarted: its kernel was killed by signal 9; its variables are gone"
    )


def then_print(sandbox: Sandbox, template: SandboxSpec, source: str) -> tuple[SandboxResult, ...]:
    """A session's call of `source`, which must succeed, and a `print('ran')` after it."""
    with sandbox.session(template) as session:
        first = call(session, template, source)
        after = call(session, template, "print('ran')")
    assert first.ok, first
    return first, after


def test_a_kernel_that_closes_its_end_of_the_calls_pipe_is_replaced_for_the_next_call(spec, sandbox):
    # The code closes the pipe the kernel reads calls from, and leaves a thread that keeps the
    # kernel alive: the next call finds no reader, and the supervisor kills that kernel and
    # starts another rather than wait for it to end (a hostile probe's: the call then timed out).
    closing = (
        "import os, sys, threading, time\n"
        "os.close(int(sys.orig_argv[-2]))\n"
        "threading.Thread(target=time.sleep, args=(10**6,)).start()"
    )
    first, after = then_print(sandbox, spec("", timeout=5), closing)
    assert after.ok and after.stdout == "ran\n" and after.container_id == first.container_id, after
    assert after.note == (
        "the Python session was restarted: its kernel closed its end of the calls' pipe; its "
        "variables are gone"
    )


def test_a_call_a_busy_kernel_never_took_is_not_run_again_past_its_time_limit(spec, sandbox):
    # The code says its call ended, then keeps the kernel busy, deaf to the interrupt: the next
    # call waits in the pipe until its time limit kills the kernel. It timed out; it is not run
    # again in a new kernel with a time limit of its own.
    lying = (
        "import os, signal, sys\n"
        "os.write(int(sys.orig_argv[-1]), sys.argv[0].strip('<cell>').encode() + b' 0 0\\n')\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "while True:\n    pass"
    )
    _, after = then_print(sandbox, spec("", timeout=2), lying)
    assert after.timed_out and after.stdout == "", after


def test_a_shell_call_whose_memory_kills_the_kernel_is_not_failed_for_it(spec, sandbox):
    template = spec("", memory=128 * MB)
    with sandbox.session(template) as session:
        call(
            session,
            template,
            "data = bytearray(60 * 1024 * 1024)\nfor i in range(0, len(data), 4096): data[i] = 1",
        )
        shell = call(
            session,
            template,
            "python3 -c 'b = bytearray(80 * 1024 * 1024); print(len(b))'",
            language="shell",
        )
        after = call(session, template, "print(globals().get('data') is None)")
    assert shell.ok and shell.stdout == "83886080\n"
    assert shell.note == "this call ended the Python session: its kernel was killed by the memory limit"
    assert after.ok and after.stdout == "True\n" and after.container_id == shell.container_id


SLOW_FLUSH = """
import sys, time


class SlowOut:
    def write(self, text):
        return sys.__stdout__.write(text)

    def flush(self):
        time.sleep(2)  # the kernel flushes after the code: the time limit passes meanwhile


sys.stdout = SlowOut()
"""


def test_an_interrupt_after_the_code_has_ended_never_costs_the_kernel(spec, sandbox):
    """The time limit's interrupt lands after the call's code returned (while the kernel
    flushes its output): it is ignored there, and the variables stay."""
    template = spec("", timeout=1)
    with sandbox.session(template) as session:
        call(session, template, "kept = 1")
        late = call(session, template, SLOW_FLUSH)
        after = call(session, template, "sys.stdout = sys.__stdout__\nprint(kept)")
    assert late.timed_out
    assert after.stdout == "1\n" and after.note is None


def test_a_call_that_cannot_start_fails_in_one_line_and_keeps_the_session(spec, sandbox):
    template = spec("", tmp_size=16 * MB, memory=128 * MB)
    with sandbox.session(template) as session:
        call(session, template, "kept = 1")
        call(session, template, "head -c 20000000 /dev/zero > /tmp/fill", language="shell")
        full = call(session, template, "echo hi", language="shell")
        python = call(session, template, "import os\nos.remove('/tmp/fill')\nprint(kept)")
    assert full.failure == "the call could not start: /tmp is full (tmp_size): free some of it"
    assert "Traceback" not in full.stderr and full.note is None
    assert python.ok and python.stdout == "1\n"  # Python code does not go through /tmp


ZOMBIES = "grep -l '^[0-9]* (.*) Z' /proc/[0-9]*/stat 2>/dev/null | wc -l"
"""A shell line that counts the container's zombie processes (state Z in /proc/PID/stat)."""


def test_orphans_are_reaped_between_calls(spec, sandbox):
    """Processes a call left in sessions of their own end as orphans of the supervisor (PID 1);
    it reaps them after each call, so no zombie holds a pid of the limit."""
    template = spec("", pids=64)
    with sandbox.session(template) as session:
        call(
            session, template, "for i in $(seq 20); do setsid sh -c 'sleep 0.2' & done", language="shell"
        )
        time.sleep(1)  # the 20 end, orphans now
        call(session, template, "true", language="shell")  # after it, they are reaped
        counted = call(session, template, ZOMBIES, language="shell")
    assert counted.ok and counted.stdout.strip() == "0", counted.stdout


def test_a_forked_child_that_returns_never_becomes_the_kernel(spec, sandbox):
    template = spec("", timeout=2)
    with sandbox.session(template) as session:
        call(
            session,
            template,
            "import os, sys\npid = os.fork()\nif pid == 0:\n    sys.exit(0)\nos.waitpid(pid, 0)\nkept = os.getpid()",
        )
        spin = call(session, template, "while True: pass")
        after = call(session, template, "import os\nprint(kept == os.getpid())")
    assert spin.timed_out and "waitpid" not in spin.stderr
    assert after.stdout == "True\n"


def test_the_status_pipe_cannot_crash_or_skew_the_session(spec, sandbox):
    template = spec("")
    with sandbox.session(template) as session:
        call(session, template, "kept = 1")
        forged = call(
            session,
            template,
            "import os, sys\nos.write(int(sys.orig_argv[-1]), b'2 0 999999999999999\\n' + b'9' * 5000)",
        )
        after = call(session, template, "print(kept)")
    assert after.stdout == "1\n" and after.container_id == forged.container_id
    # The code runs in the kernel's process and may say what the kernel says (its figures are
    # the kernel's own word): a figure it makes up for its own call does not skew the next
    # call's. (Code left running in the kernel can change what later calls report, as it can
    # change what they do: README, Sessions.)
    assert forged.disk_written is not None and forged.disk_written >= 0
    assert after.disk_written is not None and 0 <= after.disk_written < 10**6


def test_an_oom_killed_kernel_is_seen_though_a_child_holds_its_status_pipe(spec, sandbox):
    template = spec("", memory=96 * MB, timeout=20)
    with sandbox.session(template) as session:
        call(session, template, "import os\nos.system('sleep 1000 &')")
        hog = call(session, template, "block = bytearray(400 * 1024 * 1024)")
    assert hog.oom_killed and not hog.timed_out and hog.duration < 10


def test_file_tools_leave_the_sessions_variables_alone(spec, sandbox):
    template = spec("")
    with sandbox.session(template) as session:
        call(
            session,
            template,
            "open('notes.txt', 'w').write('hello')\ndata, path, size = [1], 'x.csv', 10",
        )
        call(session, template, "import io, sys\nsys.stdout = io.StringIO()")
        tool = call(
            session, template, file_tool_script("read_file", {"path": "notes.txt"}), language="shell"
        )
        after = call(session, template, "sys.stdout = sys.__stdout__\nprint(data, path, size)")
    assert tool.stdout == '{"content": "hello"}\n' and after.stdout == "[1] x.csv 10\n"


def test_a_closed_session_refuses_calls(spec, sandbox, docker_client):
    template = spec("")
    with sandbox.session(template) as session:
        call(session, template, "x = 1")
    with pytest.raises(SandboxError, match="the sandbox session has ended"):
        call(session, template, "print(1)")
    assert not running(docker_client, sandbox)
