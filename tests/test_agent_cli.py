"""`toka orchestrate --watch` and `toka agent list|spawn|monitor|stop`, as the real `toka`
executable in subprocesses against the session's Prefect server and the real Docker engine."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from uuid import UUID

import pytest
from conftest import REPO, TOKA, run_toka, start_toka, write_config
from own_runs import flow_run_id_of, remove_run_containers, run_containers, wait_for_running_container
from prefect import get_client
from support import process_pool
from test_flows import LONG_TASK, task_runs, unique

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

STOP_BOUND = 5.0
"""Seconds within which a stopped run's containers must be gone (a broken stop: 10 minutes)."""

TEAM = """
name: {name}
agents:
  - name: good
    tasks:
      - {{name: one, code: {{language: shell, source: "echo one"}}}}
      - {{name: two, code: {{language: shell, source: "echo two"}}}}
  - name: bad
    tasks:
      - {{name: boom, code: {{language: shell, source: "echo the disk is full >&2; exit 3"}}}}
  - name: later
    requires: [bad]
    tasks:
      - {{name: never, code: {{language: shell, source: "true"}}}}
"""


def toka(prefect_api: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return run_toka(*args, env={"PREFECT_API_URL": prefect_api}, timeout=timeout)


def test_watch_shows_each_task_as_it_ends_failures_with_reasons_and_exits_1(tmp_path, prefect_api):
    path = write_config(tmp_path, TEAM.format(name=unique("watched")))
    result = toka(prefect_api, "orchestrate", str(path), "--watch", "--workspace-dir", str(tmp_path))
    printed = result.stdout
    assert result.returncode == 1, printed + result.stderr
    lines = printed.splitlines()
    # Not a terminal: one plain line per change, from the task runs' states on the server.
    assert "good/one: Completed" in lines and "good/two: Completed" in lines, printed
    assert "✗ bad/boom failed: exit code 3: the disk is full" in lines, printed
    assert (
        "later/never: Skipped: not run: required agent 'bad' failed: bad/boom: exit code 3: "
        "the disk is full" in lines
    ), printed
    [end] = [line for line in lines if line.startswith("Run: ")]
    assert end.startswith("Run: Failed: 1 task(s) failed: bad/boom"), printed
    # The view replaces Prefect's log lines, and the summary table.
    assert "Task run 'good/one'" not in result.stderr + printed and "┃" not in printed, result.stderr
    assert "Traceback" not in printed + result.stderr


def test_watch_on_a_terminal_draws_a_bar_per_agent(tmp_path, prefect_api):
    path = write_config(tmp_path, TEAM.format(name=unique("drawn")))
    command = [TOKA, "orchestrate", str(path), "--watch", "--workspace-dir", str(tmp_path)]
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "COLUMNS": "120", "TERM": "xterm"}
    pid, fd = pty.fork()
    if pid == 0:  # the child: `toka` with the pty as its terminal
        os.chdir(REPO)
        os.execve(TOKA, command, env)
    chunks = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal: it has ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    drawn = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", b"".join(chunks).decode(errors="replace"))
    assert os.waitstatus_to_exitcode(status) == 1, drawn
    for agent, count, status_word in (("good", "2/2", "completed"), ("bad", "0/1", "failed")):
        assert re.search(rf"{agent}\s+━+\s+{count}\s+{status_word}", drawn), drawn
    assert "✗ bad/boom failed: exit code 3: the disk is full" in drawn
    assert "Run: Failed" in drawn


TWO = """
name: {name}
agents:
  - name: first
    workstream: base
    priority: high
    tasks: [{{name: say, code: {{language: shell, source: "echo hi"}}}}]
  - name: second
    requires: [first]
    tasks: [{{name: say, code: {{language: shell, source: "echo hi"}}}}]
  - name: alone
    tasks: [{{name: say, code: {{language: shell, source: "echo hi"}}}}]
"""


def test_spawn_runs_an_agent_with_its_requirements_and_list_shows_latest_states(tmp_path, prefect_api):
    config_name = unique("spawned")
    path = write_config(tmp_path, TWO.format(name=config_name))
    spawned = toka(prefect_api, "agent", "spawn", str(path), "--agent", "second", "--dry-run")
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    [flow_run_id] = re.findall(r"^Flow run: (\S+)$", spawned.stdout, re.MULTILINE)
    assert sorted(task_runs(UUID(flow_run_id))) == ["first/say", "second/say"]

    listed = toka(prefect_api, "agent", "list", str(path))
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {line.split()[1]: line for line in listed.stdout.splitlines() if line.startswith("│ ")}
    assert re.search(r"│ first\s+│ base\s+│ high\s+│ 1\s+│ -\s+│ DryRun\s+│ say", rows["first"]), rows
    assert re.search(r"│ first\s+│ DryRun\s+│ say", rows["second"]), rows
    assert re.search(r"│ never run\s+│ -\s+│ -", rows["alone"]), rows

    unknown = toka(prefect_api, "agent", "spawn", str(path), "--agent", "nobody")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [
        "<run parameters>: agents: 'nobody' is not an agent of "
        f"{config_name} (its agents: first, second, alone)"
    ], unknown.stderr


def test_spawn_on_a_deployment_asks_for_that_agent_and_stop_cancels_a_run_not_started(
    tmp_path, prefect_api
):
    from toka_agents import deploy

    path = write_config(tmp_path, TWO.format(name=unique("deployed")))
    name = unique("spawn-target")
    pool = process_pool(unique("spawn-pool"))
    deploy(path, name=name, work_pool=pool)

    spawned = toka(prefect_api, "agent", "spawn", "--deployment", name, "--agent", "second")
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    found = re.search(r"^Flow run: (\S+) \(.+\) on toka-orchestrate/(\S+)$", spawned.stdout, re.M)
    assert found and found[2] == name, spawned.stdout
    flow_run_id = UUID(found[1])
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.parameters["agents"] == ["second"]
    assert flow_run.parameters["paths"] == [str(path.resolve())]  # the deployment's own

    # No worker polls the pool: the run waits, and stopping it cancels it at once.
    stopped = toka(prefect_api, "agent", "stop", str(flow_run_id))
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"Flow run {flow_run_id}: Cancelled" in stopped.stdout

    missing = toka(prefect_api, "agent", "spawn", "--deployment", "no-such", "--agent", "x")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "error: no deployment 'toka-orchestrate/no-such' on this Prefect server "
        "(`prefect deployment ls` lists them)"
    )


def stop_and_see_containers_go(
    docker_client, flow_run_id: UUID, env: dict[str, str]
) -> tuple[subprocess.Popen[str], datetime | None]:
    """Start `toka agent stop`, and return it with the moment the run's containers were all
    gone (None if some outlived two minutes), watched while the stop runs."""
    stopping = start_toka("agent", "stop", str(flow_run_id), env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if not run_containers(docker_client, flow_run_id):
            return stopping, datetime.now(UTC)
        time.sleep(0.05)
    return stopping, None


def test_monitor_follows_a_running_run_and_stop_removes_its_containers_within_5s(
    tmp_path, docker_client, prefect_api
):
    name = unique("stop-me")
    path = write_config(tmp_path, LONG_TASK.format(name=name))
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    running = start_toka("orchestrate", str(path), "--workspace-dir", str(tmp_path / "runs"), env=env)
    flow_run_id = None
    monitor = stopping = None
    try:
        flow_run_id = flow_run_id_of(name)
        monitor = start_toka("agent", "monitor", str(flow_run_id), env=env)
        wait_for_running_container(docker_client, flow_run_id)
        stopping, gone_at = stop_and_see_containers_go(docker_client, flow_run_id, env)
        stop_out, stop_err = stopping.communicate(timeout=60)
        watched_out, watched_err = monitor.communicate(timeout=60)
        running.communicate(timeout=60)
    finally:
        for process in (running, monitor, stopping):
            if process is not None:
                process.kill()
                process.wait()
        if flow_run_id is not None:
            remove_run_containers(docker_client, flow_run_id)
    assert stopping.returncode == 0, stop_out + stop_err
    assert f"Flow run {flow_run_id}: Cancelled" in stop_out
    with get_client(sync_client=True) as client:
        states = client.read_flow_run_states(flow_run_id)
    [cancelling] = [state.timestamp for state in states if state.name == "Cancelling"]
    assert gone_at is not None, "the run's containers outlived the stop by two minutes"
    took = (gone_at - cancelling).total_seconds()
    assert took <= STOP_BOUND, f"containers gone {took:.1f} s after the cancel"

    assert monitor.returncode == 1, watched_out + watched_err
    lines = watched_out.splitlines()
    assert "long/wait: Running" in lines, watched_out
    assert "long/wait: Cancelled: the run was cancelled" in lines or any(
        line.startswith("long/wait: Cancelled") for line in lines
    ), watched_out
    assert lines[-1].startswith("Run: Cancelled"), watched_out
    assert running.returncode == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["agent", "monitor", "not-a-run"], "error: 'not-a-run' is not a flow run id"),
        (
            ["agent", "stop", "00000000-0000-0000-0000-000000000000"],
            "error: no flow run 00000000-0000-0000-0000-000000000000 on this Prefect server",
        ),
        (["agent", "spawn", "--agent", "x"], "error: give config paths, or --deployment NAME"),
        (["agent", "spawn", "x.yaml"], 'error: Command "agent spawn" parameter --agent requires'),
    ],
)
def test_bad_arguments_are_one_line_and_a_non_zero_exit(prefect_api, args, message):
    result = toka(prefect_api, *args)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_an_api_that_does_not_answer_is_one_line(tmp_path):
    path = write_config(tmp_path, TWO.format(name=unique("away")))
    result = run_toka("agent", "list", str(path), env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("error: the Prefect API at http://127.0.0.1:9/api failed: "), line


@pytest.mark.parametrize(
    ("verb", "example"),
    [
        (["orchestrate"], "toka orchestrate flows/examples/quickstart.yaml --watch"),
        (["agent", "list"], "toka agent list flows/examples/quickstart.yaml"),
        (["agent", "spawn"], "toka agent spawn flows/examples/quickstart.yaml --agent report --watch"),
        (["agent", "monitor"], "toka agent monitor 0a1b2c3d-"),
        (["agent", "stop"], "toka agent stop 0a1b2c3d-"),
    ],
)
def test_every_verbs_help_shows_an_example(verb, example):
    from rich.console import Console

    from toka_agents.cli import app

    shown = io.StringIO()
    app.help_print(verb, console=Console(file=shown, width=120))
    assert example in shown.getvalue(), shown.getvalue()


def test_stop_cancels_a_run_on_a_process_worker_and_its_containers_go_within_5s(
    tmp_path, docker_client, prefect_api, background
):

    from toka_agents import deploy

    name = unique("worker-stop")
    pool = process_pool(unique("stop-pool"))
    deploy(write_config(tmp_path, LONG_TASK.format(name=name)), name=name, work_pool=pool)
    spawned = toka(prefect_api, "agent", "spawn", "--deployment", name, "--agent", "long")
    assert spawned.returncode == 0, spawned.stdout + spawned.stderr
    flow_run_id = UUID(re.search(r"^Flow run: (\S+) ", spawned.stdout, re.M)[1])  # type: ignore[index]
    worker = background.start(
        "worker",
        [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool],
        env={"PREFECT_API_URL": prefect_api},
    )
    try:
        wait_for_running_container(docker_client, flow_run_id)  # the worker's run reached its task
        env = {**os.environ, "PREFECT_API_URL": prefect_api}
        stopping, gone_at = stop_and_see_containers_go(docker_client, flow_run_id, env)
        stop_out, stop_err = stopping.communicate(timeout=60)
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                flow_run = client.read_flow_run(flow_run_id)
                if flow_run.state is not None and flow_run.state.is_final():
                    break
                time.sleep(0.5)
            states = client.read_flow_run_states(flow_run_id)
    finally:
        remove_run_containers(docker_client, flow_run_id)
    assert worker.poll() is None, background.log("worker")  # the worker outlives its run's cancel
    assert stopping.returncode == 0, stop_out + stop_err
    assert f"Flow run {flow_run_id}: Cancelled" in stop_out
    assert flow_run.state is not None and flow_run.state.is_cancelled(), flow_run.state
    [cancelling] = [state.timestamp for state in states if state.name == "Cancelling"]
    assert gone_at is not None, "the worker's run kept its containers two minutes after the stop"
    took = (gone_at - cancelling).total_seconds()
    assert took <= STOP_BOUND, f"containers gone {took:.1f} s after the cancel"
