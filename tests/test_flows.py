"""Orchestrations as Prefect flow runs, on a real Prefect server and the real Docker engine."""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from conftest import EXAMPLES, QUICKSTART_TASKS, REPO, run_toka, write_config
from own_runs import (
    flow_run_id_of,
    remove_run_containers,
    seconds_until_gone,
    signal_mid_run,
    wait_for_running_container,
)
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.states import Cancelling

from toka_agents import orchestrate, run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


def task_runs(flow_run_id: UUID) -> dict[str, TaskRun]:
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {task_run.name: task_run for task_run in runs}


def artifacts(flow_run_id: UUID):
    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )


def config(tmp_path: Path, body: str) -> Path:
    return write_config(tmp_path, textwrap.dedent(body))


def test_quickstart_end_to_end(workspace_root):
    result = run(EXAMPLES / "quickstart.yaml", workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert result.state.message == "5 agents, 6 of 6 tasks done"

    # Data went from agent to agent through the workspace.
    report = (result.workspace / "report.md").read_text()
    assert report.startswith("# Sensor report")
    assert "| north | 1440 |" in report and "## Outliers" in report
    assert (result.workspace / "readings.csv").read_text().count("\n") == 3 * 1440 + 1

    # Each task's result is its Prefect task's return value.
    assert [o.task_id for o in result.outcomes] == QUICKSTART_TASKS
    for outcome in result.outcomes:
        assert outcome.status == "completed" and outcome.exit_code == 0
        assert outcome.duration and outcome.duration > 0
        assert outcome.peak_memory and outcome.peak_memory > 1024**2
        assert outcome.cpu_seconds is not None
    assert "workspace is read-only for this agent" in result.outcomes[-1].stdout_tail

    runs = task_runs(result.flow_run_id)
    assert set(runs) == {o.task_id for o in result.outcomes}
    summarize = runs["describe/summarize"]
    assert summarize.state.is_completed()
    assert set(summarize.tags) >= {"agent:describe", "workstream:analysis", "priority:high"}

    # Dependencies are real Prefect upstream relations: the UI graph draws them.
    def upstream(name: str) -> set[UUID]:
        return {ref.id for ref in runs[name].task_inputs["upstream"]}

    assert upstream("describe/summarize") == {runs["generate/make-data"].id}
    assert upstream("outliers/top-readings") == {runs["outliers/find-outliers"].id}
    assert upstream("report/write-report") == {
        runs["describe/summarize"].id,
        runs["outliers/top-readings"].id,
    }
    assert upstream("generate/make-data") == set()

    found = artifacts(result.flow_run_id)
    progress = [a for a in found if a.type == "progress"]
    assert all(a.data == 100.0 for a in progress)
    by_agent = sorted(a.description for a in progress if not a.description.startswith("workstream "))
    assert by_agent == [
        "describe (analysis, high): 1/1 tasks done",
        "generate (data, critical): 1/1 tasks done",
        "outliers (analysis, high): 2/2 tasks done",
        "report (reporting, medium): 1/1 tasks done",
        "review (reporting, low): 1/1 tasks done",
    ]
    by_workstream = sorted(a.description for a in progress if a.description.startswith("workstream "))
    assert by_workstream == [
        "workstream analysis: 3/3 tasks of 2 agents done",
        "workstream data: 1/1 tasks of 1 agents done",
        "workstream reporting: 2/2 tasks of 2 agents done",
    ]
    [table] = [a for a in found if a.key == "quickstart-summary"]
    assert table.type == "table"
    # Each task that ran has a table of what it used, on its own task run.
    usage = {a.key for a in found if a.key and a.key.endswith("-usage")}
    assert usage == {f"{task.replace('/', '-')}-usage" for task in QUICKSTART_TASKS}
    rows = table.data if isinstance(table.data, list) else __import__("json").loads(table.data)
    assert [row["task"] for row in rows] == [o.task_id for o in result.outcomes]
    assert {"status", "duration", "peak memory", "cpu time"} <= set(rows[0])


FAILING = """
name: failing
agents:
  - name: breaks
    priority: high
    tasks:
      - name: first
        code: {language: shell, source: "echo fine"}
      - name: second
        code: {language: shell, source: "echo 'disk on fire' >&2; exit 3"}
      - name: third
        code: {language: shell, source: "echo never"}
  - name: downstream
    requires: [breaks]
    tasks: [{name: use, code: {language: shell, source: "echo never"}}]
  - name: further
    requires: [downstream]
    tasks: [{name: use, code: {language: shell, source: "echo never"}}]
  - name: independent
    tasks: [{name: work, code: {language: shell, source: "echo independent"}}]
  - name: slow
    limits: {timeout: 1s}
    tasks: [{name: sleep, code: {language: python, source: "import time; time.sleep(30)"}}]
  - name: greedy
    limits: {memory: 64MB}
    tasks: [{name: eat, code: {language: python, source: "x = bytearray(300 * 1024 * 1024)"}}]
  - name: chatty
    tasks: [{name: talk, code: {language: python, source: "print('x' * 3_000_000)"}}]
"""


def test_failures_become_failed_states_with_reasons(tmp_path, workspace_root):
    result = run(config(tmp_path, FAILING), workspace_root=workspace_root)
    assert result.state.is_failed()
    status = {o.task_id: (o.status, o.message) for o in result.outcomes}
    assert status["breaks/first"][0] == "completed"
    assert status["breaks/second"] == ("failed", "exit code 3: disk on fire")
    assert status["breaks/third"] == (
        "skipped",
        "not run: earlier task breaks/second failed: exit code 3: disk on fire",
    )
    assert status["downstream/use"] == (
        "skipped",
        "not run: required agent 'breaks' failed: breaks/second: exit code 3: disk on fire",
    )
    assert status["further/use"] == (
        "skipped",
        "not run: required agent 'downstream' did not run: breaks/second: exit code 3: disk on fire",
    )
    assert status["independent/work"][0] == "completed"
    assert status["slow/sleep"] == ("failed", "timed out after 1s")
    assert status["greedy/eat"] == ("failed", "killed: memory limit 64MB exceeded")
    chatty_status, chatty_message = status["chatty/talk"]
    assert chatty_status == "completed"
    assert re.fullmatch(r"exit code 0 in \d+\.\d\ds \(stdout cut at 1MB of 2\.861MB\)", chatty_message)

    runs = task_runs(result.flow_run_id)
    second = runs["breaks/second"].state
    assert second.is_failed() and second.message == "exit code 3: disk on fire"
    assert runs["slow/sleep"].state.message == "timed out after 1s"
    assert runs["greedy/eat"].state.message == "killed: memory limit 64MB exceeded"
    skipped = runs["downstream/use"].state
    assert skipped.is_cancelled() and skipped.name == "Skipped"
    assert "required agent 'breaks' failed" in skipped.message
    assert {ref.id for ref in runs["downstream/use"].task_inputs["upstream"]} == {
        runs["breaks/third"].id
    }

    assert result.state.message.startswith("3 task(s) failed: breaks/second: exit code 3: disk on fire")
    # `breaks` failed (its later task was skipped): it is named as failed, not as skipped.
    assert result.state.message.endswith("; skipped agents: downstream, further")
    progress = {
        a.description.split(" ")[0]: a.data
        for a in artifacts(result.flow_run_id)
        if a.type == "progress" and not a.description.startswith("workstream ")
    }
    assert progress["breaks"] == pytest.approx(100 / 3)
    assert progress["independent"] == 100
    assert "downstream" not in progress  # an agent that never started has no progress to show


def test_config_limits_reach_the_container(tmp_path, workspace_root):
    path = config(
        tmp_path,
        """
        name: limits
        defaults: {limits: {memory: 96MB, cpu: 25%, pids: 40}}
        agents:
          - name: probe
            tasks:
              - name: read-cgroup
                code:
                  language: shell
                  source: |
                    cat /sys/fs/cgroup/memory/memory.limit_in_bytes
                    cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us
                    cat /sys/fs/cgroup/pids/pids.max
        """,
    )
    result = run(path, workspace_root=workspace_root)
    assert result.ok, result.state.message
    memory, quota, period, pids = result.outcomes[0].stdout_tail.split()
    assert int(memory) == 96 * 1024**2
    assert int(quota) / int(period) == pytest.approx(0.25)
    assert pids == "40"


def agents_running(
    tmp_path: Path, script: str, names: list[str], bound: int, name: str = "together"
) -> Path:
    """A config of independent agents that all run `script` (a Python file)."""
    (tmp_path / "script.py").write_text(textwrap.dedent(script))
    agents = "".join(
        f"""
  - name: {agent}
    capabilities: [filesystem-write]
    tasks: [{{name: run, code: {{language: python, file: script.py}}}}]"""
        for agent in names
    )
    return write_config(tmp_path, f"name: {name}\nmax_concurrent_agents: {bound}\nagents:{agents}\n")


def test_independent_agents_run_concurrently(tmp_path, workspace_root):
    # Each agent waits for the other's marker: both complete only if they overlap.
    rendezvous = """
    import os, sys, time
    me = os.environ["TOKA_AGENT"]
    other = {"left": "right", "right": "left"}[me]
    open(me, "w").close()
    for _ in range(300):
        if os.path.exists(other):
            print("met", other)
            sys.exit(0)
        time.sleep(0.1)
    sys.exit("never met " + other)
    """
    result = run(
        agents_running(tmp_path, rendezvous, ["left", "right"], 2), workspace_root=workspace_root
    )
    assert result.ok, result.state.message
    assert [o.stdout_tail for o in result.outcomes] == ["met right\n", "met left\n"]


def test_concurrency_is_bounded_by_max_concurrent_agents(tmp_path, workspace_root):
    # Each agent waits until it sees a second one running (or every other agent is done),
    # then notes the most agents it sees at once for a while. Only the bound decides the
    # figures, not how fast Prefect starts task runs: a late partner is waited for.
    count = """
    import os, time
    for folder in ("running", "done"):
        os.makedirs(folder, exist_ok=True)
    me = os.environ["TOKA_AGENT"]
    open(f"running/{me}", "w").close()
    deadline = time.monotonic() + 60
    while len(os.listdir("running")) < 2 and len(os.listdir("done")) < 4:
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    most = 0
    for _ in range(10):
        most = max(most, len(os.listdir("running")))
        time.sleep(0.05)
    os.remove(f"running/{me}")
    open(f"done/{me}", "w").close()
    print(most)
    """
    names = [f"a{i}" for i in range(5)]
    result = run(agents_running(tmp_path, count, names, 2), workspace_root=workspace_root)
    assert result.ok, result.state.message
    seen = [int(o.stdout_tail) for o in result.outcomes]
    assert max(seen) == 2, seen
    assert seen.count(2) >= 4, seen  # everyone but possibly the last agent had company


def test_an_agent_starts_only_after_its_requirements_completed(tmp_path, workspace_root):
    path = config(
        tmp_path,
        """
        name: order
        defaults: {capabilities: [filesystem-write]}
        agents:
          - name: late
            priority: critical
            requires: [early]
            tasks: [{name: check, code: {language: shell, source: "cat early.txt"}}]
          - name: early
            priority: low
            tasks:
              - {name: one, code: {language: shell, source: "sleep 1; echo one > early.txt"}}
              - {name: two, code: {language: shell, source: "echo two >> early.txt"}}
        """,
    )
    result = run(path, workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert result.outcomes[-1].task_id == "late/check"
    assert result.outcomes[-1].stdout_tail == "one\ntwo\n"


def test_unreachable_docker_engine_fails_every_task_with_the_reason(
    tmp_path, workspace_root, monkeypatch
):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/absent.sock")
    monkeypatch.setenv("TOKA_WORKSPACE", "bind")  # a volume would need the engine before any task
    path = config(
        tmp_path,
        """
        name: no-engine
        agents:
          - name: one
            tasks: [{name: work, code: {language: shell, source: "true"}}]
          - name: two
            tasks:
              - {name: first, code: {language: shell, source: "true"}}
              - {name: second, code: {language: shell, source: "true"}}
          - name: after
            requires: [one]
            tasks: [{name: use, code: {language: shell, source: "true"}}]
        """,
    )
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()
    reason = f"Docker engine not reachable at unix://{tmp_path}/absent.sock: no engine is listening"
    outcomes = {o.task_id: o for o in result.outcomes}
    assert list(outcomes) == ["one/work", "two/first", "two/second", "after/use"]
    # Every task that ran failed with the reason; every other one names it.
    for ran in ("one/work", "two/first"):
        assert outcomes[ran].status == "failed", outcomes[ran]
        assert outcomes[ran].message.startswith("sandbox error: ") and reason in outcomes[ran].message
    first_error = outcomes["two/first"].message
    assert (outcomes["two/second"].status, outcomes["two/second"].message) == (
        "skipped",
        f"not run: earlier task two/first failed: {first_error}",
    )
    assert (outcomes["after/use"].status, outcomes["after/use"].message) == (
        "skipped",
        f"not run: required agent 'one' failed: one/work: {outcomes['one/work'].message}",
    )
    states = {name: task_run.state for name, task_run in task_runs(result.flow_run_id).items()}
    assert states["one/work"].is_failed() and states["two/first"].is_failed()
    assert reason in states["one/work"].message
    assert states["two/second"].name == states["after/use"].name == "Skipped"


LONG_TASK = """
name: {name}
agents:
  - name: long
    limits: {{timeout: 10m}}
    tasks: [{{name: wait, code: {{language: shell, source: "echo started; sleep 600"}}}}]
  - name: after
    requires: [long]
    tasks: [{{name: never, code: {{language: shell, source: "true"}}}}]
"""
"""A task that would run for ten minutes unless the run's end kills it."""

GONE_WITHIN = 15.0
"""Seconds within which a cancelled or signalled run's containers must be gone."""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_cancelling_the_flow_run_removes_its_containers_within_seconds(
    tmp_path, workspace_root, docker_client, capfd
):
    name = unique("cancel-me")
    path = write_config(tmp_path, LONG_TASK.format(name=name))
    holder = {}
    # The thread must see this test's Prefect settings: a new thread starts with none.
    context = contextvars.copy_context()
    thread = threading.Thread(
        target=context.run,
        args=(lambda: holder.setdefault("result", run(path, workspace_root=workspace_root)),),
    )
    thread.start()
    flow_run_id = flow_run_id_of(name)
    try:
        wait_for_running_container(docker_client, flow_run_id)
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
        took = seconds_until_gone(docker_client, flow_run_id, GONE_WITHIN)
        assert took is not None, f"the run's containers outlived the cancel by {GONE_WITHIN:.0f} s"
        thread.join(timeout=60)
        assert not thread.is_alive()
    finally:
        remove_run_containers(docker_client, flow_run_id)  # lets a failed run end, too
        thread.join(timeout=60)
    result = holder["result"]
    assert result.flow_run_id == flow_run_id
    assert result.state.is_cancelled(), result.state
    assert {o.task_id: o.status for o in result.outcomes} == {
        "long/wait": "cancelled",
        "after/never": "cancelled",
    }
    [wait] = task_runs(flow_run_id).values()  # `after` never got a task run
    assert wait.name == "long/wait" and wait.state.is_cancelled(), wait.state
    assert wait.state.message == "cancelled: the run was cancelled"
    printed = capfd.readouterr()
    assert "Traceback" not in printed.out + printed.err, printed.err[-3000:]


def test_sigterm_removes_containers_within_seconds(tmp_path, docker_client, prefect_api):
    name = unique("terminate-me")
    path = write_config(tmp_path, LONG_TASK.format(name=name))
    ended = signal_mid_run(
        path, name, tmp_path / "runs", docker_client, prefect_api, signal.SIGTERM, GONE_WITHIN
    )
    took, flow_run_id = ended.seconds_until_gone, ended.flow_run_id
    printed = ended.stdout + ended.stderr
    assert took is not None, f"the run's containers outlived SIGTERM by {GONE_WITHIN:.0f} s: {printed}"
    assert ended.returncode != 0, printed
    assert "Traceback" not in printed, printed
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    assert state.is_final(), state  # the run says how it ended: Crashed, by the signal


def test_cli_orchestrate_prints_where_the_results_are(tmp_path, prefect_api):
    result = run_toka(
        "orchestrate",
        str(EXAMPLES / "quickstart.yaml"),
        "--workspace-dir",
        str(tmp_path / "runs"),
        env={"PREFECT_API_URL": prefect_api},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Run: Completed: 5 agents, 6 of 6 tasks done" in result.stdout
    workspace_line = next(line for line in result.stdout.splitlines() if line.startswith("Workspace"))
    workspace = Path(workspace_line.split(": ", 1)[1])
    assert (workspace / "report.md").is_file() and workspace.is_relative_to(tmp_path)
    assert f"In the Prefect UI: {prefect_api.removesuffix('/api')}/runs/flow-run/" in result.stdout


def test_cli_orchestrate_runs_on_the_embedded_server_by_default(tmp_path):
    # README's run command: no PREFECT_API_URL, so Prefect's embedded server (SQLite).
    result = run_toka(
        "orchestrate",
        str(EXAMPLES / "quickstart.yaml"),
        "--workspace-dir",
        str(tmp_path / "runs"),
        env={"PREFECT_SERVER_EPHEMERAL_ENABLED": "true", "PREFECT_HOME": str(tmp_path / "prefect")},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Run: Completed: 5 agents, 6 of 6 tasks done" in result.stdout
    assert (
        "Recorded by Prefect's embedded server; to browse it, run `prefect server start`"
        in result.stdout
    )
    assert (tmp_path / "prefect" / "prefect.db").is_file()
    assert len(list((tmp_path / "runs").glob("quickstart-*/workspace/report.md"))) == 1


def test_the_embedded_server_records_every_task_run_before_it_stops(tmp_path):
    # It stops with the process, and records task runs' states from events after the run has
    # ended: a run of Toka's 78 tasks had it stopped mid-record, printing its services'
    # tracebacks (`Error flushing 1 events`) and leaving task runs unfinished in its database.
    home = tmp_path / "prefect"
    result = run_toka(
        "orchestrate",
        str(REPO / "tests" / "data" / "toka-specs" / "v0.3"),
        "--dry-run",
        env={"PREFECT_SERVER_EPHEMERAL_ENABLED": "true", "PREFECT_HOME": str(home)},
    )
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    assert "Run: Completed: 9 agents, 78 of 78 tasks done" in result.stdout
    assert "Traceback" not in said and "Error flushing" not in said, said
    with contextlib.closing(sqlite3.connect(home / "prefect.db")) as database:
        recorded = database.execute(
            "SELECT state_type, count(*) FROM task_run GROUP BY state_type"
        ).fetchall()
    assert recorded == [("COMPLETED", 78)]


@pytest.mark.parametrize("told", [None, "true"])
def test_the_python_api_tells_the_embedded_server_not_to_send_usage_statistics(told):
    # The server Prefect starts for `toka_agents.run` without PREFECT_API_URL inherits this
    # environment; `toka` had set it, the Python API had not (a new user's run logged its
    # failed attempt to reach the internet). What a user sets is kept.
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    if told is not None:
        env["PREFECT_SERVER_ANALYTICS_ENABLED"] = told
    script = (
        "import os, toka_agents\ntoka_agents.run\nprint(os.environ['PREFECT_SERVER_ANALYTICS_ENABLED'])"
    )
    shown = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert shown.stdout == f"{told or 'false'}\n"


def test_cli_orchestrate_exits_1_when_the_run_fails(tmp_path, prefect_api):
    result = run_toka(
        "orchestrate",
        str(config(tmp_path, FAILING)),
        "--workspace-dir",
        str(tmp_path / "runs"),
        env={"PREFECT_API_URL": prefect_api},
    )
    assert result.returncode == 1
    assert "Run: Failed: 3 task(s) failed: breaks/second: exit code 3: disk on fire" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_deployment_flow_fails_with_the_config_problems(tmp_path):
    bad = config(
        tmp_path,
        "name: x\nagents:\n  - name: a\n    requires: [ghost]\n    tasks: [{name: t, code: {language: shell, source: 'true'}}]\n",
    )
    state = orchestrate(paths=[str(bad)], return_state=True)
    assert state.is_failed()
    assert state.message == (  # one line: problems joined by "; "
        f"1 config problem(s): {bad}: agents.0.requires.0: agent 'a' requires 'ghost', which is not "
        "defined (defined agents: a)"
    )


def test_deployment_flow_runs_the_quickstart():
    state = orchestrate(paths=[str(EXAMPLES / "quickstart.yaml")], return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert [o.status for o in summary.outcomes] == ["completed"] * 6
