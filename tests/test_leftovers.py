"""Containers of a toka-agents process that was killed outright (SIGKILL): they stop at their
time limit on their own, and the next run or `toka sandbox clean` removes them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
from conftest import REPO, TOKA, run_toka, toka_containers, write_config

from toka_agents import run
from toka_agents.sandbox.owners import LABEL_OWNER, current_owner, is_orphaned

pytestmark = pytest.mark.usefixtures("no_leftover_containers")


def dead_owner() -> str:
    """The owner label of a process of this host that has ended."""
    script = "from toka_agents.sandbox.owners import current_owner; print(current_owner())"
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_an_owner_is_orphaned_only_when_its_process_on_this_host_is_gone():
    me = current_owner()
    host, pid, started = me.rsplit(":", 2)
    assert (host, int(pid)) == (socket.gethostname(), os.getpid()) and started.isdigit()
    assert not is_orphaned(me)
    assert is_orphaned(dead_owner())
    assert is_orphaned(f"{host}:{pid}:{int(started) + 1}")  # the pid now belongs to another process
    assert not is_orphaned(f"elsewhere:{pid}:1")  # another host's: cannot be told from here
    assert not is_orphaned("not a label of ours")


def park(docker_client, image: str, owner: str) -> str:
    """A container that looks like one of a run's, owned by `owner`."""
    return docker_client.containers.run(
        image,
        ["sleep", "300"],
        detach=True,
        network_mode="none",
        labels={"org.toka-agents.managed": "1", LABEL_OWNER: owner},
    ).id


def test_sandbox_clean_removes_only_what_killed_processes_left(docker_client, sandbox_image):
    orphan = park(docker_client, sandbox_image, dead_owner())
    alive = park(docker_client, sandbox_image, current_owner())
    try:
        cleaned = run_toka("sandbox", "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert cleaned.stdout.strip() == "removed 1 container(s)"
        assert toka_containers(docker_client) == [alive]

        everything = run_toka("sandbox", "clean", "--all")
        assert everything.stdout.strip() == "removed 1 container(s)"
        assert toka_containers(docker_client) == []
    finally:
        for container_id in (orphan, alive):
            subprocess.run(["docker", "rm", "-f", container_id], capture_output=True)


def test_a_killed_runs_container_stops_by_itself_and_the_next_run_removes_it(
    tmp_path, docker_client, sandbox_image, prefect_api, workspace_root
):
    path = write_config(
        tmp_path,
        "name: killed\n"
        "agents:\n"
        "  - name: long\n"
        "    capabilities: [filesystem-write]\n"
        "    limits: {timeout: 3s}\n"
        "    tasks: [{name: wait, code: {language: shell, source: 'touch started; sleep 300'}}]\n",
    )
    process = subprocess.Popen(
        [TOKA, "orchestrate", str(path), "--workspace-dir", str(workspace_root)],
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 120
        while not list(workspace_root.glob("*/workspace/started")):
            assert time.monotonic() < deadline, "the task never started"
            time.sleep(0.05)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    [container_id] = toka_containers(docker_client)

    # Nobody is left to kill it at its time limit: its supervisor ends it a little later.
    deadline = time.monotonic() + 60
    while docker_client.api.inspect_container(container_id)["State"]["Running"]:
        assert time.monotonic() < deadline, "the container outlived its time limit"
        time.sleep(0.2)
    assert docker_client.api.inspect_container(container_id)["State"]["ExitCode"] == 124

    # The next run on this host removes it before it starts.
    other = write_config(
        tmp_path,
        f"name: next-{uuid.uuid4().hex[:6]}\nagents:\n"
        "  - name: one\n    tasks: [{name: echo, code: {language: shell, source: 'echo hi'}}]\n",
        name="next.yaml",
    )
    result = run(other, workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert container_id not in toka_containers(docker_client)
