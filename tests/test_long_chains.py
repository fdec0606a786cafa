"""Chains deeper than Python's recursion limit: a failure or a cancel at the head settles
every agent below it, on a real Prefect server."""

from __future__ import annotations

import contextvars
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
from conftest import own_labels, write_config
from prefect import get_client
from prefect.states import Cancelling

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_containers")

DEEP = 5000
"""Deep enough for any recursion to fail; a cancelled agent costs one event, no task run."""
FAILURE_DEPTH = 600
"""The chain of the issue's report, which crashed the old scheduler. Each skipped agent costs
a task run and an event on the SQLite server (about 60 ms here), so the suite stays at 600;
5,000 was checked by hand (see the closing note of issue 12)."""


def chain(tmp_path: Path, head_code: str, depth: int) -> Path:
    """`a1` requires `a0`, `a2` requires `a1`, ... each with one task."""
    lines = [
        "name: deep-chain",
        "max_concurrent_agents: 4",
        "agents:",
        "  - name: a0",
        "    tasks:",
        f"      - {{name: t, code: {{language: shell, source: '{head_code}'}}}}",
    ]
    for i in range(1, depth):
        lines += [
            f"  - name: a{i}",
            f"    requires: [a{i - 1}]",
            "    tasks:",
            "      - {name: t, code: {language: shell, source: 'true'}}",
        ]
    return write_config(tmp_path, "\n".join(lines) + "\n")


def test_a_failure_at_the_head_skips_every_agent_below_it(tmp_path, workspace_root):
    result = run(chain(tmp_path, "exit 3", FAILURE_DEPTH), workspace_root=workspace_root)

    assert result.state.is_failed()
    assert result.state.message.startswith("1 task(s) failed: a0/t: exit code 3")
    assert len(result.outcomes) == FAILURE_DEPTH
    head, *below = result.outcomes
    assert head.status == "failed"
    assert [o.status for o in below] == ["skipped"] * (FAILURE_DEPTH - 1)
    assert below[0].message == "not run: required agent 'a0' failed: a0/t: exit code 3"
    assert below[-1].message == (
        f"not run: required agent 'a{FAILURE_DEPTH - 2}' did not run: a0/t: exit code 3"
    )


def test_a_cancel_at_the_head_cancels_every_agent_below_it(tmp_path, workspace_root, docker_client):
    path = chain(tmp_path, "sleep 600", DEEP)
    finished: dict[str, object] = {}
    # The thread must see this test's Prefect settings: a new thread starts with none.
    context = contextvars.copy_context()
    worker = threading.Thread(
        target=context.run,
        args=(lambda: finished.update(result=run(path, workspace_root=workspace_root)),),
    )
    worker.start()
    deadline = time.monotonic() + 180
    head = own_labels("org.toka-agents.task=a0/t")
    while not (running := docker_client.api.containers(filters=head)):
        assert time.monotonic() < deadline, "the head agent's container never started"
        time.sleep(0.2)
    run_id = running[0]["Labels"]["org.toka-agents.run"]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(UUID(run_id), Cancelling(), force=True)
    worker.join(timeout=120)
    assert not worker.is_alive(), "the run did not end after the cancel"

    result = finished["result"]
    assert result.state.is_cancelled(), result.state.message
    assert len(result.outcomes) == DEEP
    assert {o.status for o in result.outcomes} == {"cancelled"}
    assert result.outcomes[-1].message == "not run: the run was cancelled"
