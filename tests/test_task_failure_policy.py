"""What a failed task does to its agent: `on_task_failure: stop | continue` with
`min_success_ratio`, per orchestration and per agent, and a failed `critical` task, which always
fails its agent. Run through the session's Prefect server and the real Docker engine, with code
tasks; Toka's default (`continue` at 0.8) is checked on its real specs.
"""

from __future__ import annotations

import textwrap
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import write_config
from test_events import agent_events
from test_flows import task_runs
from test_toka_specs import AGENTS_TOML, V03

from toka_agents import load, plan, run, validate

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

OK = '{code: {language: shell, source: "true"}}'
FAILS = '{code: {language: shell, source: "echo broken >&2; exit 3"}}'


def tasks(*bodies: str) -> str:
    """A flow-style task list, the tasks named t1, t2, ..."""
    return "[" + ", ".join(f"{{name: t{i}, {b[1:-1]}}}" for i, b in enumerate(bodies, 1)) + "]"


CRITICAL = '{priority: critical, code: {language: shell, source: "echo broken >&2; exit 3"}}'


@pytest.fixture(scope="module")
def policies(tmp_path_factory, prefect_api, sandbox_image):
    """One run whose independent agents each show one policy, and the `toka.agent.*` events."""
    directory = tmp_path_factory.mktemp("policies")
    name = f"policies-{uuid.uuid4().hex[:8]}"
    body = f"""
        name: {name}
        max_concurrent_agents: 5
        agents:
          - {{name: stops, tasks: {tasks(OK, FAILS, OK)}}}
          - {{name: stops-written, on_task_failure: stop, min_success_ratio: 0.1, tasks: {tasks(FAILS, OK)}}}
          - {{name: after-stops, requires: [stops], tasks: {tasks(OK)}}}
          - name: above
            on_task_failure: continue
            min_success_ratio: 0.8
            tasks: {tasks(OK, FAILS, OK, OK, OK)}
          - {{name: after-above, requires: [above], tasks: {tasks(OK)}}}
          - name: below
            on_task_failure: continue
            tasks: {tasks(OK, FAILS, OK, FAILS, OK)}
          - {{name: after-below, requires: [below], tasks: {tasks(OK)}}}
          - name: critical
            on_task_failure: continue
            min_success_ratio: 0
            tasks: {tasks(OK, CRITICAL, OK)}
          - {{name: after-critical, requires: [critical], tasks: {tasks(OK)}}}
    """
    # The orchestration's own setting, under the agents' (`below` takes its 0.8 from here).
    path = write_config(directory, textwrap.dedent(body) + "min_success_ratio: 0.8\n")
    since = datetime.now(UTC) - timedelta(seconds=5)
    result = run(path, workspace_root=directory / "runs")
    events = {e.resource.name: e for e in agent_events(result.flow_run_id, since, expected=9)}
    return result, events


def messages_of(result, *agents: str) -> dict[str, str]:
    return {o.task_id: o.message for o in result.outcomes if o.agent in agents}


def statuses_of(result, *agents: str) -> dict[str, str]:
    return {o.task_id: o.status for o in result.outcomes if o.agent in agents}


def test_stop_written_or_by_default_skips_the_agents_later_tasks_and_its_downstream(policies):
    result, events = policies
    messages = messages_of(result, "stops", "stops-written", "after-stops")
    assert statuses_of(result, "stops", "stops-written", "after-stops") == {
        "stops/t1": "completed",
        "stops/t2": "failed",
        "stops/t3": "skipped",
        "stops-written/t1": "failed",
        "stops-written/t2": "skipped",
        "after-stops/t1": "skipped",
    }
    assert messages["stops/t3"] == "not run: earlier task stops/t2 failed: exit code 3: broken"
    assert messages["after-stops/t1"] == (
        "not run: required agent 'stops' failed: stops/t2: exit code 3: broken"
    )
    assert events["stops"].event == events["stops-written"].event == "toka.agent.failed"


def test_continue_above_the_ratio_runs_every_task_completes_the_agent_and_its_downstream(policies):
    result, events = policies
    assert statuses_of(result, "above", "after-above") == {
        **{f"above/t{i}": "completed" for i in (1, 3, 4, 5)},
        "above/t2": "failed",
        "after-above/t1": "completed",
    }
    runs = task_runs(result.flow_run_id)
    assert runs["above/t3"].state.is_completed() and runs["after-above/t1"].state.is_completed()
    assert events["above"].event == "toka.agent.completed"
    assert events["above"].payload["message"] == "4 of 5 tasks done, meeting min_success_ratio 0.8"
    assert events["after-above"].event == "toka.agent.completed"


def test_continue_below_the_ratio_fails_the_agent_naming_the_ratio_and_skips_downstream(policies):
    result, events = policies
    messages = messages_of(result, "below", "after-below")
    assert statuses_of(result, "below", "after-below") == {
        **{f"below/t{i}": "completed" for i in (1, 3, 5)},
        **{f"below/t{i}": "failed" for i in (2, 4)},
        "after-below/t1": "skipped",
    }
    below = "3 of 5 tasks done, below min_success_ratio 0.8"
    assert messages["after-below/t1"] == f"not run: required agent 'below' failed: {below}"
    assert events["below"].event == "toka.agent.failed"
    assert events["below"].payload["message"] == below
    assert events["after-below"].event == "toka.agent.skipped"
    # A task failed: the flow run says so, whichever agents completed.
    assert result.state.is_failed()


def test_a_failed_critical_task_fails_its_agent_and_stops_it_even_under_continue(policies):
    result, events = policies
    messages = messages_of(result, "critical", "after-critical")
    assert statuses_of(result, "critical", "after-critical") == {
        "critical/t1": "completed",
        "critical/t2": "failed",
        "critical/t3": "skipped",
        "after-critical/t1": "skipped",
    }
    assert messages["after-critical/t1"] == (
        "not run: required agent 'critical' failed: critical task critical/t2: exit code 3: broken"
    )
    assert task_runs(result.flow_run_id)["critical/t3"].state.name == "Skipped"
    assert events["critical"].event == "toka.agent.failed"


def test_tokas_specs_continue_at_0_8_by_default_and_settings_override_it(tmp_path):
    for agent in plan(load(V03)).agents + plan(load(AGENTS_TOML)).agents:
        assert (agent.on_task_failure, agent.min_success_ratio) == ("continue", 0.8), agent.name
    shown = plan(load(AGENTS_TOML)).to_json()["agents"][0]  # as `toka plan --json` prints it
    assert (shown["on_task_failure"], shown["min_success_ratio"]) == ("continue", 0.8)
    assert shown["tasks"][0]["priority"] == "critical"
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
