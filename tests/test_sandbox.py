"""The Docker sandbox, on the real engine: isolation, limits, output capture, cleanup."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import toka_containers
from pydantic import ValidationError

from toka_agents.errors import SandboxError
from toka_agents.sandbox import Sandbox, SandboxCancelled, connect
from toka_agents.sandbox.owners import LABEL_OWNER, current_owner

MB = 1024**2
pytestmark = pytest.mark.usefixtures("no_leftover_containers")


@pytest.fixture
def no_leftover_containers(docker_client) -> Iterator[None]:
    """Fails the test if it leaves a container of this process behind. Only this process's
    (its owner label): other test sessions may be running containers on the same engine."""
    mine = {"label": ["org.toka-agents.managed=1", f"{LABEL_OWNER}={current_owner()}"]}
    before = {c["Id"] for c in docker_client.api.containers(all=True, filters=mine)}
    yield
    left = {c["Id"] for c in docker_client.api.containers(all=True, filters=mine)} - before
    assert not left, f"containers left behind: {sorted(left)}"


@pytest.fixture
def sandbox(docker_client):
    return Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)})


def test_python_and_shell_run_with_output_and_usage(sandbox, spec):
    result = sandbox.run(spec("import sys\nprint('to out')\nprint('to err', file=sys.stderr)"))
    assert result.ok and result.exit_code == 0
    assert result.stdout == "to out\n" and result.stderr == "to err\n"
    assert result.peak_memory is not None and 1 * MB < result.peak_memory <= 64 * MB
    assert result.cpu_seconds is not None and result.cpu_seconds > 0
    shell = sandbox.run(spec("echo $((6 * 7))", language="shell"))
    assert shell.ok and shell.stdout == "42\n"


def test_failure_message_is_the_exit_code_and_last_stderr_line(sandbox, spec):
    result = sandbox.run(spec("echo first >&2\necho 'last words' >&2\nexit 3", language="shell"))
    assert result.exit_code == 3
    assert result.failure == "exit code 3: last words"


def test_python_exception_shows_its_last_line(sandbox, spec):
    result = sandbox.run(spec("raise ValueError('bad input')"))
    assert result.exit_code == 1
    assert result.failure == "exit code 1: ValueError: bad input"


def test_timeout_kills_the_container(sandbox, spec, docker_client):
    result = sandbox.run(spec("import time\nprint('started', flush=True)\ntime.sleep(60)", timeout=1))
    assert result.timed_out
    assert result.failure == "timed out after 1s"
    assert result.stdout == "started\n"


@pytest.mark.parametrize("status", [0, 3])
def test_a_shell_task_ends_with_its_main_process(sandbox, spec, status):
    result = sandbox.run(spec(f"sleep 30 & echo started; exit {status}", language="shell", timeout=5))
    print(f"{result.failure or 'ok'}: exit code {result.exit_code} after {result.duration:.1f}s")
    assert not result.timed_out
    assert result.exit_code == status
    assert result.stdout == "started\n"
    assert result.duration < 5  # the limit a task that waited for `sleep 30` would reach


LEAVES_PRINTERS_BEHIND = """
import os, subprocess, sys, threading, time

def tick():  # os.write: one line, one write, whatever the other writers do meanwhile
    while True:
        os.write(1, b"thread tick\\n")
        time.sleep(0.05)

threading.Thread(target=tick, daemon=True).start()
subprocess.Popen([sys.executable, "-c", "import os, time\\nwhile True:\\n os.write(1, b'child tick\\\\n')\\n time.sleep(0.05)"])
time.sleep(0.5)
os.write(1, b"main done\\n")
"""


def test_a_python_task_ends_with_its_main_process_while_others_print(sandbox, spec):
    result = sandbox.run(spec(LEAVES_PRINTERS_BEHIND, timeout=5))
    print(f"{result.failure or 'ok'}: exit code {result.exit_code} after {result.duration:.1f}s")
    assert result.ok and result.exit_code == 0
    assert "main done\n" in result.stdout
    assert "thread tick" in result.stdout and "child tick" in result.stdout
    assert result.duration < 5


def test_memory_limit_kills(sandbox, spec):
    result = sandbox.run(spec("x = bytearray(200 * 1024 * 1024)\nprint('survived')", memory=64 * MB))
    assert result.oom_killed
    assert result.failure == "killed: memory limit 64MB exceeded"
    assert "survived" not in result.stdout


def test_pids_limit(sandbox, spec):
    source = """
import subprocess
procs = []
try:
    for _ in range(40):
        procs.append(subprocess.Popen(["sleep", "5"]))
except OSError as exc:
    print("refused after", len(procs), type(exc).__name__)
    raise SystemExit(7)
"""
    result = sandbox.run(spec(source, pids=16))
    assert result.exit_code == 7, result.stderr
    assert "refused after" in result.stdout


def test_runs_as_non_root_with_no_capabilities(sandbox, spec):
    result = sandbox.run(
        spec(
            "id -u; id -G; grep -E '^(Uid|CapEff|CapPrm|CapAmb|NoNewPrivs)' /proc/self/status;"
            "grep -E '^Uid' /proc/1/status | sed 's/^/supervisor /'",
            language="shell",
        )
    )
    print(result.stdout)
    lines = result.stdout.split("\n")
    assert lines[0] == "10001" and lines[1] == "10001"  # and no supplementary group
    assert "\nUid:\t10001\t10001\t10001\t10001\n" in result.stdout
    assert "CapPrm:\t0000000000000000" in result.stdout
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "CapAmb:\t0000000000000000" in result.stdout
    assert "NoNewPrivs:\t1" in result.stdout
    assert "supervisor Uid:\t0\t0\t0\t0" in result.stdout  # another user than the code


@pytest.mark.parametrize("user", ["0:0", "0:10001", "10001:0", "sandbox", "10001"])
def test_the_code_user_is_a_uid_and_gid_never_root(spec, user):
    with pytest.raises(ValidationError, match="user"):
        spec("print(1)", user=user)


REACH_THE_SUPERVISOR = """
import os

def attempt(what, action):
    try:
        action()
        print(what, "allowed")
    except OSError as exc:
        print(what, type(exc).__name__)

attempt("memory", lambda: open("/proc/1/mem", "rb").close())
attempt("fds", lambda: os.listdir("/proc/1/fd"))
attempt("stdout", lambda: open("/proc/1/fd/1", "wb").close())
attempt("environ", lambda: open("/proc/1/environ", "rb").read())
attempt("signal", lambda: os.kill(1, 0))
"""


def test_the_code_cannot_reach_the_supervisor(sandbox, spec):
    result = sandbox.run(spec(REACH_THE_SUPERVISOR))
    print(result.stdout, result.stderr)
    assert result.ok, result.failure
    assert result.stdout == (
        "memory PermissionError\nfds PermissionError\nstdout PermissionError\n"
        "environ PermissionError\nsignal PermissionError\n"
    )


def test_output_written_past_the_supervisor_does_not_arrive(sandbox, spec):
    arrived = {"stdout": 0, "stderr": 0}

    def count(stream: str, data: bytes) -> None:
        arrived[stream] += len(data)

    source = """
try:
    with open("/proc/1/fd/1", "wb") as supervisors_stdout:
        for _ in range(20):
            supervisors_stdout.write(b"x" * 1024 * 1024)
    print("wrote 20 MiB")
except OSError as exc:
    print("refused:", type(exc).__name__)
"""
    result = sandbox.run(spec(source), on_output=count)
    print(f"arrived {arrived}; result stdout_bytes={result.stdout_bytes}: {result.stdout!r}")
    assert result.stdout == "refused: PermissionError\n"
    assert arrived == {"stdout": len(result.stdout), "stderr": 0}
    assert result.stdout_bytes == len(result.stdout)


def test_root_file_system_is_read_only_and_tmp_is_writable(sandbox, spec):
    result = sandbox.run(
        spec(
            "touch /etc/probe 2>&1 || true; touch /probe 2>&1 || true; echo x > /tmp/ok && cat /tmp/ok",
            language="shell",
        )
    )
    assert result.ok
    assert result.stdout.count("Read-only file system") == 2
    assert result.stdout.strip().endswith("x")


def test_tmp_is_a_tmpfs_of_the_specs_size(sandbox, spec):
    source = """
import os
[kind] = [line.split()[2] for line in open("/proc/mounts") if line.split()[1] == "/tmp"]
size = os.statvfs("/tmp")
print(kind, size.f_blocks * size.f_frsize)
"""
    result = sandbox.run(spec(source, tmp_size=24 * MB))
    print(result.stdout, result.stderr)
    assert result.ok, result.failure
    assert result.stdout == f"tmpfs {24 * MB}\n"


def test_workspace_is_shared_and_read_only_without_write(sandbox, spec):
    wrote = sandbox.run(spec("echo data > shared.txt", language="shell", workspace_writable=True))
    assert wrote.ok
    read = sandbox.run(
        spec(
            "cat shared.txt; touch other 2>&1 || echo refused",
            language="shell",
            workspace_writable=False,
        )
    )
    assert read.ok
    assert read.stdout.startswith("data\n") and "Read-only file system" in read.stdout
    assert read.stdout.strip().endswith("refused")


def test_output_is_capped_and_says_so(sandbox, spec):
    source = (
        "import sys\nfor i in range(20000): print(f'line {i:05d}')\nprint('the end', file=sys.stderr)"
    )
    result = sandbox.run(spec(source, output_limit=1000))
    assert len(result.stdout) == 1000
    assert result.stdout_truncated and not result.stderr_truncated
    assert result.stdout_bytes == 20000 * len("line 00000\n")
    assert result.stdout_tail.endswith("line 19999\n")
    assert result.stderr == "the end\n"


def test_output_streams_while_the_code_runs(sandbox, spec):
    seen: list[tuple[str, bytes, float]] = []
    result = sandbox.run(
        spec("import time\nprint('early', flush=True)\ntime.sleep(1)\nprint('late')"),
        on_output=lambda stream, data: seen.append((stream, data, time.monotonic())),
    )
    assert result.ok
    text = b"".join(data for _, data, _ in seen)
    assert text == b"early\nlate\n"
    # "early" (whose newline an unbuffered print writes apart) arrived before "late" was printed
    late = next(index for index, (_, data, _) in enumerate(seen) if b"late" in data)
    assert b"".join(data for _, data, _ in seen[:late]) == b"early\n"


def test_container_settings_come_from_the_spec(sandbox, spec, docker_client):
    inspected = {}

    def look(stream: str, data: bytes) -> None:
        if not inspected:
            [cid] = [c for c in toka_containers(docker_client) if c in sandbox._live]
            inspected.update(docker_client.api.inspect_container(cid))

    result = sandbox.run(
        spec("print('hi')", memory=96 * MB, cpus=0.25, pids=33, workspace_writable=False), on_output=look
    )
    assert result.ok
    host = inspected["HostConfig"]
    assert host["Memory"] == 96 * MB and host["MemorySwap"] == 96 * MB
    assert host["NanoCpus"] == 250_000_000
    assert host["PidsLimit"] == 33
    assert host["ReadonlyRootfs"] is True
    assert host["CapDrop"] == ["ALL"]
    # the supervisor's: to start the code as 10001, and to kill it at its limit and its end
    assert host["CapAdd"] == ["SETUID", "SETGID", "KILL"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["NetworkMode"] == "none"
    assert "/tmp" in host["Tmpfs"]
    [mount] = inspected["Mounts"]
    assert mount["Destination"] == "/workspace" and mount["RW"] is False
    assert inspected["Config"]["User"] == "0:0"  # the supervisor; the code runs as 10001:10001


@pytest.fixture
def private_network(docker_client, sandbox_image):
    """A Docker network of this test's own with a small HTTP server container on it."""
    name = f"toka-test-{secrets.token_hex(4)}"
    network = docker_client.networks.create(name, internal=True, labels={"org.toka-agents.test": "1"})
    server = docker_client.containers.run(
        sandbox_image,
        ["python3", "-m", "http.server", "8000", "--directory", "/usr/share"],
        detach=True,
        network=name,
        labels={"org.toka-agents.test": "1"},
    )
    try:
        for _ in range(50):
            server.reload()
            address = server.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
            if address:
                break
            time.sleep(0.1)
        yield name, address
    finally:
        server.remove(force=True)
        network.remove()


PROBE = """
import os, socket, sys, time
print("interfaces:", sorted(os.listdir("/sys/class/net")))
for attempt in range(50):
    try:
        socket.create_connection(("{address}", 8000), timeout=2).close()
        print("connected")
        break
    except OSError as exc:
        if exc.errno != 111:  # not yet listening: try again; anything else is the answer
            print("connect failed:", exc.strerror)
            break
        time.sleep(0.1)
"""


def test_no_network_without_the_capability(sandbox, spec, private_network):
    name, address = private_network
    result = sandbox.run(spec(PROBE.format(address=address), network=None))
    assert result.ok, result.stderr
    assert "interfaces: ['lo']" in result.stdout
    assert "connect failed: Network is unreachable" in result.stdout


def test_network_with_the_capability(sandbox, spec, private_network):
    name, address = private_network
    result = sandbox.run(spec(PROBE.format(address=address), network=name))
    assert result.ok, result.stderr
    assert "'eth0'" in result.stdout and "connected" in result.stdout


def test_cancel_kills_running_containers(sandbox, spec):
    threading.Timer(1.0, sandbox.cancel).start()
    result = sandbox.run(spec("import time\nprint('waiting', flush=True)\ntime.sleep(60)"))
    assert result.cancelled and result.failure == "cancelled: the run was cancelled"
    with pytest.raises(SandboxError, match="cancelled"):
        sandbox.run(spec("print(1)"))


def container_events(docker_client, token: str, since: int) -> list[str]:
    """What the engine did to the containers labelled with this test's token, in order."""
    until = int(time.time()) + 1
    filters = {"type": "container", "label": f"org.toka-agents.test={token}"}
    events = docker_client.events(since=since, until=until, filters=filters, decode=True)
    return [event["Action"] for event in events]


class CancelledWhileCreating(Sandbox):
    """A cancel that lands just after the engine created the container."""

    def _create(self, *args):
        container = super()._create(*args)
        self.cancel()
        return container


class CancelledBeforeStart(Sandbox):
    """A cancel that lands after the container is created and registered, before it starts."""

    def _attach_and_run(self, *args):
        self.cancel()
        return super()._attach_and_run(*args)


@pytest.mark.parametrize("sandbox_type", [CancelledWhileCreating, CancelledBeforeStart])
def test_a_cancel_before_the_start_means_the_container_never_starts(docker_client, spec, sandbox_type):
    token = secrets.token_hex(4)
    sandbox = sandbox_type(docker_client, {"org.toka-agents.test": token})
    since = int(time.time()) - 1
    began = time.monotonic()
    try:
        outcome = sandbox.run(spec("import time\ntime.sleep(60)", timeout=20)).failure
    except SandboxCancelled as exc:
        outcome = f"SandboxCancelled: {exc}"
    took = time.monotonic() - began
    actions = container_events(docker_client, token, since)
    print(f"outcome {outcome!r} after {took:.1f}s; engine events {actions}")
    assert outcome == "SandboxCancelled: the run was cancelled"
    assert took < 15  # a container that started would run to its 20 s limit
    assert "create" in actions and "destroy" in actions
    assert "start" not in actions


def test_an_exception_in_our_code_still_removes_the_container(sandbox, spec):
    def explode(stream: str, data: bytes) -> None:
        raise RuntimeError("a bug in the caller")

    with pytest.raises(RuntimeError, match="a bug in the caller"):
        sandbox.run(spec("import time\nprint('hi', flush=True)\ntime.sleep(30)"), on_output=explode)


@pytest.mark.parametrize("remover_thread", [True, False], ids=["from-another-thread", "before-the-wait"])
def test_a_container_removed_under_its_task_is_a_sandbox_error_naming_it(
    sandbox, spec, docker_client, remover_thread
):
    """Removed by another thread (which engine call notices first is a race), or removed
    completely before the host goes on reading and waits (the engine answers 'no such
    container'): either way one line naming the container, never the engine's exception."""
    mine = {"label": [f"org.toka-agents.test={sandbox.labels['org.toka-agents.test']}"]}
    removed: list[str] = []

    def remove_it() -> None:
        [found] = docker_client.api.containers(filters=mine)
        removed.append(found["Id"])
        docker_client.api.remove_container(found["Id"], force=True)

    remover = threading.Thread(target=remove_it if remover_thread else lambda: None)

    def on_output(stream: str, data: bytes) -> None:
        if data.startswith(b"started") and remover.ident is None:
            remover.start()
            if not remover_thread:
                remove_it()

    began = time.monotonic()
    try:
        task = spec("echo started; sleep 60", language="shell", name="toka-test-removed", timeout=60)
        outcome = f"returned: {sandbox.run(task, on_output).failure}"
    except SandboxError as exc:
        outcome = f"SandboxError: {exc}"
    except Exception as exc:  # what must not happen: an engine error escaping as itself
        outcome = f"{type(exc).__name__} escaped: {str(exc)[:200]}"
    took = time.monotonic() - began
    print(outcome)
    remover.join(15)
    [container_id] = removed
    assert re.fullmatch(
        rf"SandboxError: [^\n]*container toka-test-removed-[0-9a-f]{{8}} \({container_id[:12]}\)[^\n]*",
        outcome,
    )
    assert took < 15  # the task would sleep for 60 s
    assert docker_client.api.containers(all=True, filters=mine) == []


def test_missing_image_is_a_clear_error(sandbox, spec):
    with pytest.raises(
        SandboxError, match=r"sandbox image 'toka-no-such-image:0' is not on the Docker engine"
    ):
        sandbox.run(spec("print(1)", image="toka-no-such-image:0"))


def test_unreachable_engine_is_a_clear_error(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    with pytest.raises(SandboxError, match="^Docker engine not reachable at unix://.*absent.sock: no "):
        connect()
