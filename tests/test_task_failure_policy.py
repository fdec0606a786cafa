"""What a failed task does to its agent: `on_task_failure: stop | continue` with
`min_success_ratio`, per orchestration and per agent, and a failed `critical` task, which always
fails its agent. Run through the session's Prefect server and the real Docker engine, with code
tasks; Toka's default (`continue` at 0.8) is checked on its real specs.
"""

from __future__ import annotations

import textwrap
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import write_config
from own_runs import no_leftover_containers  # noqa: F401 (this module's leak check)
from test_events import agent_events
from test_flows import task_runs
from test_toka_specs import AGENTS_TOML, V03

from toka_agents import load, plan, run, validate

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_containers")

OK = '{code: {language: shell, source: "true"}}'
FAILS = '{code: {language: shell, source: "echo broken >&2; exit 3"}}'


def tasks(*bodies: str) -> str:
    """A flow-style task list, the tasks named t1, t2, ..."""
    return "[" + ", ".join(f"{{name: t{i}, {b[1:-1]}}}" for i, b in enumerate(bodies, 1)) + "]"


def policy_config(tmp_path: Path, body: str) -> tuple[Path, str]:
    name = f"policy-{uuid.uuid4().hex[:8]}"
    return write_config(tmp_path, f"name: {name}\n" + textwrap.dedent(body)), name


def statuses(result) -> dict[str, str]:
    return {o.task_id: o.status for o in result.outcomes}


def test_stop_written_or_by_default_skips_the_agents_later_tasks_and_its_downstream(
    tmp_path, workspace_root
):
    path, _ = policy_config(
        tmp_path,
        f"""
        agents:
          - {{name: default, tasks: {tasks(OK, FAILS, OK)}}}
          - {{name: written, on_task_failure: stop, min_success_ratio: 0.1, tasks: {tasks(FAILS, OK)}}}
          - {{name: after, requires: [default], tasks: {tasks(OK)}}}
        """,
    )
    result = run(path, workspace_root=workspace_root)
    assert statuses(result) == {
        "default/t1": "completed",
        "default/t2": "failed",
        "default/t3": "skipped",
        "written/t1": "failed",
        "written/t2": "skipped",
        "after/t1": "skipped",
    }
    messages = {o.task_id: o.message for o in result.outcomes}
    assert messages["default/t3"] == "not run: earlier task default/t2 failed: exit code 3: broken"
    assert messages["after/t1"] == (
        "not run: required agent 'default' failed: default/t2: exit code 3: broken"
    )


def test_continue_above_the_ratio_runs_every_task_completes_the_agent_and_its_downstream(
    tmp_path, workspace_root
):
    path, _ = policy_config(
        tmp_path,
        f"""
        agents:
          - name: worker
            on_task_failure: continue
            min_success_ratio: 0.8
            tasks: {tasks(OK, FAILS, OK, OK, OK)}
          - {{name: after, requires: [worker], tasks: {tasks(OK)}}}
        """,
    )
    since = datetime.now(UTC) - timedelta(seconds=5)
    result = run(path, workspace_root=workspace_root)
    assert statuses(result) == {
        **{f"worker/t{i}": "completed" for i in (1, 3, 4, 5)},
        "worker/t2": "failed",
        "after/t1": "completed",
    }
    runs = task_runs(result.flow_run_id)
    assert runs["worker/t3"].state.is_completed() and runs["after/t1"].state.is_completed()
    events = {e.resource.name: e for e in agent_events(result.flow_run_id, since, expected=2)}
    assert events["worker"].event == "toka.agent.completed"
    assert events["worker"].payload["message"] == "4 of 5 tasks done, meeting min_success_ratio 0.8"


def test_continue_below_the_ratio_fails_the_agent_naming_the_ratio_and_skips_downstream(
    tmp_path, workspace_root
):
    path, _ = policy_config(
        tmp_path,
        f"""
        on_task_failure: continue
        min_success_ratio: 0.8
        agents:
          - {{name: worker, tasks: {tasks(OK, FAILS, OK, FAILS, OK)}}}
          - {{name: after, requires: [worker], tasks: {tasks(OK)}}}
        """,
    )
    since = datetime.now(UTC) - timedelta(seconds=5)
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()
    assert statuses(result) == {
        **{f"worker/t{i}": "completed" for i in (1, 3, 5)},
        **{f"worker/t{i}": "failed" for i in (2, 4)},
        "after/t1": "skipped",
    }
    below = "3 of 5 tasks done, below min_success_ratio 0.8"
    assert result.outcomes[-1].message == f"not run: required agent 'worker' failed: {below}"
    events = {e.resource.name: e for e in agent_events(result.flow_run_id, since, expected=2)}
    assert events["worker"].event == "toka.agent.failed"
    assert events["worker"].payload["message"] == below
    assert events["after"].event == "toka.agent.skipped"


def test_a_failed_critical_task_fails_its_agent_and_stops_it_even_under_continue(
    tmp_path, workspace_root
):
    critical = '{priority: critical, code: {language: shell, source: "echo broken >&2; exit 3"}}'
    path, _ = policy_config(
        tmp_path,
        f"""
        agents:
          - name: worker
            on_task_failure: continue
            min_success_ratio: 0
            tasks: {tasks(OK, critical, OK)}
          - {{name: after, requires: [worker], tasks: {tasks(OK)}}}
        """,
    )
    result = run(path, workspace_root=workspace_root)
    assert statuses(result) == {
        "worker/t1": "completed",
        "worker/t2": "failed",
        "worker/t3": "skipped",
        "after/t1": "skipped",
    }
    assert result.outcomes[-1].message == (
        "not run: required agent 'worker' failed: critical task worker/t2: exit code 3: broken"
    )
    assert task_runs(result.flow_run_id)["worker/t3"].state.name == "Skipped"


def test_tokas_specs_continue_at_0_8_by_default_and_settings_override_it(tmp_path):
    for agent in plan(load(V03)).agents + plan(load(AGENTS_TOML)).agents:
        assert (agent.on_task_failure, agent.min_success_ratio) == ("continue", 0.8), agent.name
    native = write_config(tmp_path, f"agents: [{{name: a, tasks: {tasks(OK)}}}]\n")
    [agent] = plan(load(native)).agents
    assert (agent.on_task_failure, agent.min_success_ratio) == ("stop", 1.0)

    # The orchestration's setting is over Toka's default, an agent's over the orchestration's.
    spec = write_config(
        tmp_path,
        textwrap.dedent(
            """
            metadata: {name: speccy}
            spec: {priority: high, min_success_ratio: 0.5}
            tasks: {default: [{description: Do the thing}]}
            """
        ),
        "speccy.yaml",
    )
    native = write_config(
        tmp_path,
        f"name: mixed\non_task_failure: stop\nagents: [{{name: b, tasks: {tasks(OK)}}}]\n",
        "settings.yaml",
    )
    agents = {agent.name: agent for agent in plan(load(spec, native)).agents}
    assert (agents["speccy"].on_task_failure, agents["speccy"].min_success_ratio) == ("stop", 0.5)
    assert (agents["b"].on_task_failure, agents["b"].min_success_ratio) == ("stop", 1.0)


def test_bad_policy_values_are_all_reported_at_once_with_their_keys(tmp_path):
    path = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            on_task_failure: retry
            min_success_ratio: 1.5
            agents:
              - {{name: a, on_task_failure: later, min_success_ratio: -0.1, tasks: {tasks(OK)}}}
              - {{name: b, tasks: [{{name: t, priority: urgent, code: {{language: shell, source: "true"}}}}]}}
            """
        ),
    )
    issues = {issue.path: issue.message for issue in validate([path]).issues}
    assert issues == {
        "on_task_failure": "Input should be 'stop' or 'continue' (got 'retry')",
        "min_success_ratio": "Input should be less than or equal to 1 (got 1.5)",
        "agents.0.on_task_failure": "Input should be 'stop' or 'continue' (got 'later')",
        "agents.0.min_success_ratio": "Input should be greater than or equal to 0 (got -0.1)",
        "agents.1.tasks.0.priority": (
            "Input should be 'critical', 'high', 'medium' or 'low' (got 'urgent')"
        ),
    }
