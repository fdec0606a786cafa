"""Toka specs as Prefect flow runs: dry runs, workstreams, optional dependencies, refusals."""

from __future__ import annotations

import json
import re
import textwrap
import time
from pathlib import Path

import pytest
from conftest import write_config
from test_flows import artifacts, task_runs
from test_toka_specs import BASE, V03, V10_SPEC

from toka_agents import ExecutionError, orchestrate, run

pytestmark = pytest.mark.usefixtures("prefect_api")


def test_v03_dry_run_walks_all_78_tasks_in_prefect():
    result = run(V03, dry_run=True)
    assert result.ok, result.state.message
    assert result.state.message == "9 agents, 78 of 78 tasks done"
    assert result.workspace is None  # a dry run touches nothing

    # Task runs and their states reach the server as events, which it records a moment after
    # the flow returns.
    def settled(runs) -> bool:
        return len(runs) == 78 and all(r.state is not None and r.state.is_final() for r in runs.values())

    deadline = time.monotonic() + 30
    while not settled(runs := task_runs(result.flow_run_id)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(runs) == 78
    for task_run in runs.values():
        assert task_run.state.is_completed() and task_run.state.name == "DryRun"
        assert task_run.state.message == "dry run: would run an LLM task"
    build = runs["build-system-stabilization/01-analyze-current-base64ct-dependency"]
    assert set(build.tags) >= {
        "agent:build-system-stabilization",
        "workstream:Build System Stabilization",
        "priority:critical",
    }

    progress = [a for a in artifacts(result.flow_run_id) if a.type == "progress"]
    agents = [a for a in progress if not a.description.startswith("workstream ")]
    workstreams = [a for a in progress if a.description.startswith("workstream ")]
    assert len(agents) == 9 and all(a.data == 100.0 for a in agents)
    assert len(workstreams) == 9 and all(a.data == 100.0 for a in workstreams)
    assert any(
        a.description == "workstream Build System Stabilization: 8/8 tasks of 1 agents done"
        for a in workstreams
    )
    notes = [a for a in artifacts(result.flow_run_id) if a.type == "markdown"]
    assert (
        notes and "## testing-infrastructure" in notes[0].data and "**test_scenarios**" in notes[0].data
    )


def test_dry_run_and_conditions_are_flow_parameters(tmp_path):
    write_config(tmp_path, V10_SPEC, "mapped.yaml")
    write_config(tmp_path, BASE, "base.yaml")
    state = orchestrate(
        paths=[str(tmp_path)], dry_run=True, conditions=["on_failure"], return_state=True
    )
    assert state.is_completed(), state.message
    ids = [o.task_id for o in state.result().outcomes]
    assert "mapped-agent/on-failure-01-open-an-incident" in ids
    assert not any("on-release" in i for i in ids)


def test_llm_tasks_without_a_provider_refuse_before_any_task():
    state = orchestrate(paths=[str(V03)], return_state=True)
    assert state.is_failed()
    assert state.message.startswith("refused before starting any task: 78 LLM task(s) of agents ")
    with pytest.raises(ExecutionError, match="need an LLM provider"):
        run(V03)


SHOW_UPSTREAM = "import json, os; print(json.dumps(json.loads(os.environ['TOKA_UPSTREAM'])))"


def optional_config(tmp_path: Path, mode: str) -> Path:
    return write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: optional-run
            max_concurrent_agents: 1
            optional_dependencies: {mode}
            agents:
              - name: helper
                priority: {"critical" if mode == "ignore" else "low"}
                tasks: [{{name: speak, code: {{language: shell, source: "echo helper says hi"}}}}]
              - name: user
                priority: {"low" if mode == "ignore" else "critical"}
                optional_requires: [helper, absent]
                tasks: [{{name: listen, code: {{language: python, source: "{SHOW_UPSTREAM}"}}}}]
            """
        ),
    )


@pytest.mark.usefixtures("sandbox_image", "no_leftover_run_containers")
@pytest.mark.parametrize("mode", ["ignore", "order"])
def test_a_finished_optional_dependency_hands_on_its_result(tmp_path, workspace_root, mode):
    # ignore: priority runs the helper first; order: the optional edge does, against priority.
    result = run(optional_config(tmp_path, mode), workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert [o.task_id for o in result.outcomes] == ["helper/speak", "user/listen"]
    helper = result.outcomes[0]
    assert re.fullmatch(r"exit code 0 in \d+\.\d\ds", helper.message), helper.message
    handed_on = json.loads(result.outcomes[1].stdout_tail)
    assert handed_on == {
        "helper": {
            "task": "helper/speak",
            "status": "completed",
            "message": helper.message,
            "stdout_tail": "helper says hi\n",
        }
    }
    runs = task_runs(result.flow_run_id)
    assert {ref.id for ref in runs["user/listen"].task_inputs["upstream"]} == {runs["helper/speak"].id}
