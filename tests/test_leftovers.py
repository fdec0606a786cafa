"""Containers of a toka-agents process that was killed outright (SIGKILL): they stop at their
time limit on their own, and the next run or `toka sandbox clean` removes them."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid

import docker
import pytest
from conftest import REPO, TOKA, run_toka, write_config
from own_runs import TEST_LABEL, THIS_SESSION, flow_run_id_of, run_containers

from toka_agents import run
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import LABEL_MANAGED
from toka_agents.sandbox.egress import LABEL_EGRESS
from toka_agents.sandbox.owners import LABEL_OWNER, current_owner, is_orphaned

# Its orphans must wait for its own sweep, and `toka sandbox clean` counts all of them.
pytestmark = [pytest.mark.usefixtures("no_leftover_run_containers"), pytest.mark.alone]


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


def park(docker_client, image: str, owner: str, flow_run_id: str | None = None) -> str:
    """A container that looks like one of a run's, owned by `owner`."""
    labels = {LABEL_MANAGED: "1", LABEL_OWNER: owner, TEST_LABEL: THIS_SESSION}
    if flow_run_id is not None:
        labels[RUN_LABEL] = flow_run_id
    return docker_client.containers.run(
        image, ["sleep", "300"], detach=True, network_mode="none", labels=labels
    ).id


def exists(docker_client, container_id: str) -> bool:
    try:
        docker_client.api.inspect_container(container_id)
    except docker.errors.NotFound:
        return False
    return True


def remove(container_ids: list[str]) -> None:
    for container_id in container_ids:
        subprocess.run(["docker", "rm", "-f", container_id], capture_output=True)


def test_sandbox_clean_removes_only_what_killed_processes_left(docker_client, sandbox_image):
    # Orphans belong to nobody alive, whichever suite or run made them; a live owner's stay.
    orphan = park(docker_client, sandbox_image, dead_owner())
    alive = park(docker_client, sandbox_image, current_owner())
    try:
        cleaned = run_toka("sandbox", "clean")
        assert cleaned.returncode == 0, cleaned.stderr
        assert re.fullmatch(r"removed [1-9]\d* container\(s\)", cleaned.stdout.strip()), cleaned.stdout
        assert not exists(docker_client, orphan)
        assert exists(docker_client, alive)
    finally:
        remove([orphan, alive])


def test_sandbox_clean_run_removes_that_runs_containers_whoever_owns_them(docker_client, sandbox_image):
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    live = park(docker_client, sandbox_image, current_owner(), mine)
    orphaned = park(docker_client, sandbox_image, dead_owner(), mine)
    bystander = park(docker_client, sandbox_image, current_owner(), other)
    egress_labels = {
        LABEL_EGRESS: "1",
        LABEL_MANAGED: "1",
        LABEL_OWNER: current_owner(),
        TEST_LABEL: "1",
    }
    networks = {
        run_id: docker_client.networks.create(
            f"toka-egress-test-{run_id[:8]}", internal=True, labels={**egress_labels, RUN_LABEL: run_id}
        )
        for run_id in (mine, other)
    }
    try:
        cleaned = run_toka("sandbox", "clean", "--run", mine)
        assert cleaned.returncode == 0, cleaned.stderr
        assert cleaned.stdout.strip() == "removed 2 container(s)"
        assert not exists(docker_client, live) and not exists(docker_client, orphaned)
        assert exists(docker_client, bystander)
        names = {network.name for network in docker_client.networks.list()}
        assert networks[mine].name not in names, "the run's egress network was left"
        assert networks[other].name in names

        both = run_toka("sandbox", "clean", "--run", other, "--all")
        assert (both.returncode, both.stderr.strip()) == (1, "error: give --run or --all, not both")
        not_an_id = run_toka("sandbox", "clean", "--run", "yesterday")
        assert not_an_id.returncode != 0
        assert 'Invalid value for --run: unable to convert "yesterday" into UUID' in not_an_id.stderr
        assert "Traceback" not in not_an_id.stdout + not_an_id.stderr
        assert exists(docker_client, bystander)
    finally:
        remove([live, orphaned, bystander])
        for network in networks.values():
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()


def test_a_killed_runs_container_stops_by_itself_and_the_next_run_removes_it(
    tmp_path, docker_client, sandbox_image, prefect_api, workspace_root
):
    name = f"killed-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path,
        f"name: {name}\n"
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
    containers = run_containers(docker_client, flow_run_id_of(name))
    # The task's container, and the warm pool's: those wait for code, and end when the
    # socket of the process that would send it closes.
    [container_id] = [
        c
        for c in containers
        if docker_client.api.inspect_container(c)["Config"]["Labels"].get("org.toka-agents.task")
        == "long/wait"
    ]

    # Nobody is left to kill it at its time limit: its supervisor ends it a little later.
    deadline = time.monotonic() + 60
    while any(docker_client.api.inspect_container(c)["State"]["Running"] for c in containers):
        assert time.monotonic() < deadline, "a container outlived its time limit"
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
    assert not [c for c in containers if exists(docker_client, c)]
