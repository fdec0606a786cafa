"""Every finished agent emits `toka.agent.completed|failed|skipped`, read back here through
Prefect's events API on the session's server."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import write_config
from own_runs import flow_events

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


def agent_events(flow_run_id: uuid.UUID, since: datetime, expected: int) -> list:
    """The run's `toka.agent.*` events, once the server has stored `expected` of them."""
    return flow_events(flow_run_id, since, "toka.agent.", expected)


def test_each_finished_agent_emits_an_event_with_its_outcome(tmp_path, workspace_root):
    name = f"events-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path,
        f"""\
name: {name}
agents:
  - name: good
    priority: high
    workstream: making
    tasks: [{{name: work, code: {{language: shell, source: "echo fine"}}}}]
  - name: bad
    tasks:
      - {{name: first, code: {{language: shell, source: "echo 'disk on fire' >&2; exit 3"}}}}
      - {{name: second, code: {{language: shell, source: "true"}}}}
  - name: blocked
    requires: [bad]
    tasks: [{{name: use, code: {{language: shell, source: "true"}}}}]
""",
    )
    since = datetime.now(UTC) - timedelta(seconds=5)
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()

    events = agent_events(result.flow_run_id, since, expected=3)
    seen = {
        event.resource.name: (
            event.event,
            event.resource.id,
            event.resource.get("toka.workstream"),
            event.resource.get("toka.priority"),
            event.payload,
        )
        for event in events
    }
    assert len(events) == 3, [event.event for event in events]
    cause = "bad/first: exit code 3: disk on fire"
    assert seen == {
        "good": (
            "toka.agent.completed",
            f"toka.agent.{name}.good",
            "making",
            "high",
            {"message": "1 tasks done", "tasks": 1},
        ),
        "bad": (
            "toka.agent.failed",
            f"toka.agent.{name}.bad",
            "bad",
            "medium",
            {"message": f"failed at {cause}", "tasks": 2},
        ),
        "blocked": (
            "toka.agent.skipped",
            f"toka.agent.{name}.blocked",
            "blocked",
            "medium",
            {"message": f"not run: required agent 'bad' failed: {cause}", "tasks": 1},
        ),
    }
    # Each event is tied to the flow run, so the run's page in the UI lists it.
    for event in events:
        related = {resource.id for resource in event.related}
        assert f"prefect.flow-run.{result.flow_run_id}" in related
