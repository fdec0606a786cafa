"""`toka runtime exec`, the real command on the real engine: output, then resource use, the
code's exit status (124 on a timeout, 137 on a memory kill), the limits in the container,
the network only when asked, bad arguments in one line, and no container left behind."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import LABEL, start_toka

from toka_agents.sandbox.owners import LABEL_OWNER

pytestmark = pytest.mark.usefixtures("sandbox_image")


@dataclass
class Exec:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def toka_exec(docker_client, *args: str, timeout: float = 120) -> Exec:
    """`toka runtime exec ARGS` in a subprocess; fails the test if it leaves a container."""
    began = time.monotonic()
    process = start_toka("runtime", "exec", *args)
    stdout, stderr = process.communicate(timeout=timeout)
    took = time.monotonic() - began
    print(f"exit {process.returncode} after {took:.1f}s\n--- stdout\n{stdout}--- stderr\n{stderr}")
    owner = f"{socket.gethostname()}:{process.pid}:"
    containers = docker_client.api.containers(all=True, filters={"label": [LABEL]})
    left = [
        c["Id"][:12]
        for c in containers
        if (c.get("Labels") or {}).get(LABEL_OWNER, "").startswith(owner)
    ]
    assert left == [], f"containers left behind: {left}"
    assert "Traceback" not in stderr
    return Exec(process.returncode, stdout, stderr, took)


def test_python_prints_its_output_then_what_it_used_and_exits_with_its_status(docker_client):
    done = toka_exec(
        docker_client,
        "--language",
        "python",
        "--code",
        "import sys\nprint('to out')\nprint('to err', file=sys.stderr)\nsys.exit(3)",
    )
    assert done.returncode == 3
    assert done.stdout == "to out\n"
    lines = done.stderr.splitlines()
    assert lines[0] == "to err"
    assert lines[1] == "exit code 3: to err"
    assert lines[2].startswith("exit code 3 · wall ")
    assert " · cpu " in lines[2] and " of 64MB · stdout 7B, stderr 7B" in lines[2]


def test_shell_code_from_a_file(docker_client, tmp_path: Path):
    script = tmp_path / "task.sh"
    script.write_text("for i in 1 2 3; do echo line $i; done\nid -u\n")
    done = toka_exec(docker_client, "--language", "shell", "--file", str(script))
    assert done.returncode == 0
    assert done.stdout == "line 1\nline 2\nline 3\n10001\n"
    assert done.stderr.startswith("exit code 0 · wall ")


def test_a_timeout_exits_124(docker_client):
    done = toka_exec(
        docker_client, "--language", "shell", "--code", "echo started; sleep 60", "--timeout", "1s"
    )
    assert done.returncode == 124
    assert done.stdout == "started\n"
    assert done.stderr.splitlines()[0] == "timed out after 1s"
    assert done.seconds < 30  # the code would sleep for 60 s


def test_a_memory_kill_exits_137(docker_client):
    done = toka_exec(
        docker_client, "--language", "python", "--code", "x = bytearray(200 * 2**20)", "--memory", "32MB"
    )
    assert done.returncode == 137
    assert done.stderr.splitlines()[0] == "killed: memory limit 32MB exceeded"


def test_the_limits_reach_the_container(docker_client):
    cgroup = "/sys/fs/cgroup"
    done = toka_exec(
        docker_client,
        "--language",
        "shell",
        "--code",
        f"cat {cgroup}/memory/memory.limit_in_bytes {cgroup}/cpu/cpu.cfs_quota_us "
        f"{cgroup}/cpu/cpu.cfs_period_us {cgroup}/pids/pids.max",
        "--memory",
        "48MB",
        "--cpu",
        "25%",
        "--pids",
        "20",
    )
    assert done.returncode == 0
    memory, quota, period, pids = done.stdout.split()
    assert int(memory) == 48 * 1024**2
    assert int(quota) / int(period) == 0.25
    assert pids == "20"


@pytest.mark.parametrize(("flag", "interfaces"), [((), "lo\n"), (("--network",), "eth0\nlo\n")])
def test_the_network_only_with_the_flag(docker_client, flag, interfaces):
    done = toka_exec(docker_client, "--language", "shell", "--code", "ls /sys/class/net", *flag)
    assert done.returncode == 0
    assert done.stdout == interfaces


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--language", "python"], 2, "give the code with --code SRC or --file PATH, one of them"),
        (
            ["--language", "python", "--code", "1", "--file", "x.py"],
            2,
            "give the code with --code SRC or --file PATH, one of them",
        ),
        (
            ["--language", "python", "--file", "/no/such/file.py"],
            2,
            "cannot read --file /no/such/file.py: ",
        ),
        (["--language", "python", "--code", "1", "--memory", "12XB"], 2, "invalid memory '12XB'"),
        (["--language", "python", "--code", "1", "--cpu", "lots"], 2, "invalid cpu 'lots'"),
        (["--language", "python", "--code", "1", "--timeout", "soon"], 2, "invalid duration 'soon'"),
        (["--language", "python", "--code", "1", "--cpu", "64 cores"], 125, "Range of CPUs"),
        (
            ["--language", "python", "--code", "1", "--image", "toka-no-such-image:0"],
            125,
            "error: sandbox image 'toka-no-such-image:0' is not on the Docker engine: build it with "
            "`toka sandbox build`",
        ),
        (["--language", "ruby", "--code", "1"], 2, 'Invalid value "ruby" for --language'),
        (["--language", "python", "--code", "1", "--pids", "0"], 2, 'Invalid value "0" for --pids'),
    ],
)
def test_a_bad_argument_is_one_clear_line(docker_client, args, status, message):
    done = toka_exec(docker_client, *args)
    assert done.returncode == status
    assert message in done.stderr
    assert done.stderr.startswith("error: "), done.stderr  # as every error of toka's
    assert done.stdout == ""


def test_a_binary_file_is_refused(docker_client, tmp_path: Path):
    binary = tmp_path / "code.bin"
    binary.write_bytes(os.urandom(64) + b"\xff\xfe")
    done = toka_exec(docker_client, "--language", "python", "--file", str(binary))
    assert done.returncode == 2
    assert done.stderr == f"error: cannot read --file {binary}: it is not UTF-8 text\n"
