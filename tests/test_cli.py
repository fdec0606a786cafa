"""`toka orchestrate` from the command line, as a subprocess against the session's Prefect
server: Ctrl-C, --dry-run, --conditions and --max-concurrent-agents each do what README says."""

from __future__ import annotations

import re
import signal
import subprocess
import textwrap
import time
from uuid import UUID

import pytest
from conftest import EXAMPLES, run_toka, write_config
from own_runs import signal_mid_run
from test_flows import GONE_WITHIN, LONG_TASK, agents_running, task_runs, unique

from toka_agents.orchestration.flow import RUN_LABEL

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


def orchestrate(prefect_api: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_toka("orchestrate", *args, env={"PREFECT_API_URL": prefect_api})


def flow_run_of(printed: str) -> UUID:
    [flow_run_id] = re.findall(r"^Flow run: (\S+)$", printed, re.MULTILINE)
    return UUID(flow_run_id)


def test_ctrl_c_exits_130_says_interrupted_and_removes_the_runs_containers(
    tmp_path, docker_client, prefect_api
):
    name = unique("interrupt-me")
    path = write_config(tmp_path, LONG_TASK.format(name=name))
    ended = signal_mid_run(
        path, name, tmp_path / "runs", docker_client, prefect_api, signal.SIGINT, GONE_WITHIN
    )  # what Ctrl-C sends
    took = ended.seconds_until_gone
    printed, complaints = ended.stdout, ended.stderr
    assert took is not None, f"the run's containers outlived Ctrl-C by {GONE_WITHIN:.0f} s: {complaints}"
    assert ended.returncode == 130, printed + complaints
    assert complaints.splitlines()[-1] == "interrupted", complaints
    assert "Traceback" not in printed + complaints, complaints


def test_dry_run_walks_the_plan_in_prefect_and_runs_no_container(tmp_path, docker_client, prefect_api):
    path = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: {unique("dry")}
            agents:
              - name: first
                tasks: [{{name: say, code: {{language: shell, source: "echo hi"}}}}]
              - name: second
                requires: [first]
                tasks: [{{name: say, code: {{language: python, source: "print('hi')"}}}}]
            """
        ),
    )
    since = int(time.time()) - 1
    result = orchestrate(prefect_api, str(path), "--dry-run", "--workspace-dir", str(tmp_path / "runs"))
    until = int(time.time()) + 1
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Run: Completed: 2 agents, 2 of 2 tasks done" in result.stdout
    assert "Workspace" not in result.stdout and not (tmp_path / "runs").exists()
    flow_run_id = flow_run_of(result.stdout)

    runs = task_runs(flow_run_id)
    assert {name: (r.state.name, r.state.message) for name, r in runs.items()} == {
        "first/say": ("DryRun", "dry run: would run shell code in toka-sandbox:1"),
        "second/say": ("DryRun", "dry run: would run python code in toka-sandbox:1"),
    }
    # The engine saw no container of this run at all, not even one created and removed.
    events = docker_client.events(
        since=since,
        until=until,
        filters={"type": "container", "label": f"{RUN_LABEL}={flow_run_id}"},
        decode=True,
    )
    assert list(events) == []


CONDITIONAL = """
name: {name}
agents:
  - name: shipper
    tasks:
      - {{name: build, code: {{language: shell, source: "echo build"}}}}
      - name: publish
        condition: release
        code: {{language: shell, source: "echo publish"}}
"""


def test_conditions_choose_the_conditional_tasks_that_run(tmp_path, prefect_api):
    path = write_config(tmp_path, CONDITIONAL.format(name=unique("conditional")))
    workspaces = str(tmp_path / "runs")

    plain = orchestrate(prefect_api, str(path), "--workspace-dir", workspaces)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "Run: Completed: 1 agents, 1 of 1 tasks done" in plain.stdout
    assert list(task_runs(flow_run_of(plain.stdout))) == ["shipper/build"]

    release = orchestrate(
        prefect_api, str(path), "--conditions", "release", "--workspace-dir", workspaces
    )
    assert release.returncode == 0, release.stdout + release.stderr
    assert "Run: Completed: 1 agents, 2 of 2 tasks done" in release.stdout
    runs = task_runs(flow_run_of(release.stdout))
    assert sorted(runs) == ["shipper/build", "shipper/publish"]
    assert all(r.state.is_completed() for r in runs.values())


def test_agent_runs_only_the_agents_named_and_those_they_require(tmp_path, prefect_api):
    workspaces = str(tmp_path / "runs")
    quickstart = str(EXAMPLES / "quickstart.yaml")
    chosen = orchestrate(prefect_api, quickstart, "--agent", "outliers", "--workspace-dir", workspaces)
    assert chosen.returncode == 0, chosen.stdout + chosen.stderr
    assert "Run: Completed: 2 agents, 3 of 3 tasks done" in chosen.stdout
    ran = sorted(task_runs(flow_run_of(chosen.stdout)))
    assert ran == ["generate/make-data", "outliers/find-outliers", "outliers/top-readings"]
    # The outputs of agents that did not run are missing, and said so; the run stands.
    assert "Warning: output 'report.md': no such file in the workspace" in chosen.stdout

    unknown = orchestrate(prefect_api, quickstart, "--agent", "nobody", "--workspace-dir", workspaces)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[-1] == (
        "<run parameters>: agents: 'nobody' is not an agent of quickstart (its agents: generate, "
        "describe, outliers, report, review)"
    )


# Each agent waits a while for company: agents that are allowed to overlap do.
LOOK_FOR_COMPANY = """
import os, time
me = os.environ["TOKA_AGENT"]
os.makedirs("running", exist_ok=True)
open(f"running/{me}", "w").close()
deadline = time.monotonic() + 3
while time.monotonic() < deadline and os.listdir("running") == [me]:
    time.sleep(0.05)
company = sorted(set(os.listdir("running")) - {me})
os.remove(f"running/{me}")
print("company:", " ".join(company) or "none")
"""


def test_max_concurrent_agents_overrides_the_configs_bound(tmp_path, prefect_api):
    path = agents_running(tmp_path, LOOK_FOR_COMPANY, ["a", "b", "c"], bound=3, name=unique("bounded"))
    result = orchestrate(
        prefect_api, str(path), "--max-concurrent-agents", "1", "--workspace-dir", str(tmp_path / "runs")
    )
    assert result.returncode == 0, result.stdout + result.stderr

    runs = sorted(task_runs(flow_run_of(result.stdout)).values(), key=lambda r: r.start_time)
    assert sorted(r.name for r in runs) == ["a/run", "b/run", "c/run"]
    for earlier, later in zip(runs, runs[1:], strict=False):
        assert later.start_time >= earlier.end_time, f"{earlier.name} and {later.name} overlapped"

    bad = orchestrate(prefect_api, str(path), "--max-concurrent-agents", "0")
    assert bad.returncode != 0
    assert 'Invalid value "0" for --max-concurrent-agents. Must be >= 1.' in bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr and "Flow run" not in bad.stdout


@pytest.mark.parametrize(
    "args",
    [
        ("validate", str(EXAMPLES / "quickstart.yaml")),
        ("plan", str(EXAMPLES / "quickstart.yaml")),
        ("sandbox", "check"),
        ("--version",),
    ],
)
def test_verbs_that_run_nothing_in_prefect_do_not_load_it(args):
    """They answer in half a second rather than three: Prefect's import alone takes more than
    a second here. Python's import profile (`PYTHONPROFILEIMPORTTIME`) lists each module the
    command loaded, on stderr."""
    done = run_toka(*args, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = {line.rpartition("|")[2].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "toka_agents.cli" in loaded
    assert not {name for name in loaded if name.split(".")[0] in ("prefect", "mcp")}
