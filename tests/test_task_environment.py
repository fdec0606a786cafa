"""What task code sees of its run: TOKA_AGENT, TOKA_TASK, TOKA_RUN_ID, TOKA_WORKSPACE, and in
TOKA_UPSTREAM the last result of each agent it requires (README: The sandbox)."""

from __future__ import annotations

import json
import re
import textwrap
import uuid

import pytest
from conftest import write_config

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

SHOW = (
    "import json, os; print(json.dumps({key: os.environ.get(key) for key in ("
    "'TOKA_AGENT', 'TOKA_TASK', 'TOKA_RUN_ID', 'TOKA_WORKSPACE', 'TOKA_UPSTREAM')} | "
    "{'cwd': os.getcwd(), 'marker': open(os.path.join(os.environ['TOKA_WORKSPACE'], 'marker.txt')).read()}))"
)


def test_task_code_sees_its_run_and_its_required_agents_last_results(tmp_path, workspace_root):
    path = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: environment-{uuid.uuid4().hex[:8]}
            agents:
              - name: maker
                capabilities: [filesystem-write]
                tasks:
                  - name: first
                    code: {{language: shell, source: "echo first; echo written > marker.txt"}}
                  - name: last
                    code: {{language: shell, source: "echo 'made it'; echo 'a note' >&2"}}
              - name: user
                requires: [maker]
                tasks: [{{name: look, code: {{language: python, source: "{SHOW}"}}}}]
              - name: third
                requires: [user]
                tasks: [{{name: look, code: {{language: python, source: "{SHOW}"}}}}]
            """
        ),
    )
    result = run(path, workspace_root=workspace_root)
    assert result.ok, result.state.message
    outcomes = {o.task_id: o for o in result.outcomes}
    last = outcomes["maker/last"]
    assert re.fullmatch(r"exit code 0 in \d+\.\d\ds", last.message), last.message
    assert (result.workspace / "marker.txt").read_text() == "written\n"

    seen = json.loads(outcomes["user/look"].stdout_tail)
    assert {key: value for key, value in seen.items() if key != "TOKA_UPSTREAM"} == {
        "TOKA_AGENT": "user",
        "TOKA_TASK": "look",
        "TOKA_RUN_ID": str(result.flow_run_id),
        "TOKA_WORKSPACE": "/workspace",
        "cwd": "/workspace",
        "marker": "written\n",  # the run's workspace, where `maker` wrote it
    }
    # The required agent's last task, not its first; what it printed to stdout only.
    assert json.loads(seen["TOKA_UPSTREAM"]) == {
        "maker": {
            "task": "maker/last",
            "status": "completed",
            "message": last.message,
            "stdout_tail": "made it\n",
        }
    }

    # Only the agents it requires itself, not theirs.
    further = json.loads(outcomes["third/look"].stdout_tail)
    assert (further["TOKA_AGENT"], further["TOKA_RUN_ID"]) == ("third", str(result.flow_run_id))
    assert json.loads(further["TOKA_UPSTREAM"]) == {
        "user": {
            "task": "user/look",
            "status": "completed",
            "message": outcomes["user/look"].message,
            "stdout_tail": outcomes["user/look"].stdout_tail,
        }
    }


def test_an_agent_that_requires_nobody_gets_an_empty_upstream(tmp_path, workspace_root):
    path = write_config(
        tmp_path,
        f"name: alone-{uuid.uuid4().hex[:8]}\n"
        "agents:\n"
        "  - name: alone\n"
        "    tasks: [{name: look, code: {language: shell, source: 'echo \"$TOKA_UPSTREAM\"'}}]\n",
    )
    result = run(path, workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert result.outcomes[0].stdout_tail == "{}\n"
