"""Agent task runs ask Prefect for tag concurrency slots only when a limit exists for a tag, and
still carry every agent/workstream/priority tag; a limit a user sets still holds (real server)."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Iterator

import pytest
from conftest import write_config
from prefect import get_client
from test_flows import task_runs, unique

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image")

SKIPPED_ASK = "do not exist - skipping acquisition"
"""What Prefect's client logs (at DEBUG) when the server had no limit for the slots it asked."""


class SlotAsks(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.asked: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if SKIPPED_ASK in record.getMessage():
            self.asked.append(record.getMessage())


@pytest.fixture
def slot_asks() -> Iterator[SlotAsks]:
    handler = SlotAsks()
    loggers = [logging.getLogger(name) for name in ("prefect.task_runs", "prefect.concurrency")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    yield handler
    for logger, level in zip(loggers, levels, strict=True):
        logger.removeHandler(handler)
        logger.setLevel(level)


def config(tmp_path, workstream: str, agents: int = 3):
    members = "".join(
        f"""
  - name: worker-{i}
    workstream: {workstream if i < 2 else "elsewhere"}
    priority: high
    tasks: [{{name: nap, code: {{language: shell, source: "sleep 1"}}}}]"""
        for i in range(agents)
    )
    text = f"name: {unique('slots')}\nmax_concurrent_agents: {agents}\nagents:{members}\n"
    return write_config(tmp_path, textwrap.dedent(text))


def test_without_a_limit_no_slot_is_asked_and_every_tag_is_on_the_task_runs(
    tmp_path, workspace_root, slot_asks
):
    workstream = unique("free")
    result = run(config(tmp_path, workstream), workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert slot_asks.asked == []  # before: one ask per task run, each a write on the server

    runs = task_runs(result.flow_run_id)
    assert sorted(runs) == ["worker-0/nap", "worker-1/nap", "worker-2/nap"]
    for name, task_run in runs.items():
        agent = name.split("/")[0]
        stream = workstream if agent != "worker-2" else "elsewhere"
        assert set(task_run.tags) >= {f"agent:{agent}", f"workstream:{stream}", "priority:high"}


def test_a_tag_concurrency_limit_a_user_sets_still_holds(tmp_path, workspace_root):
    workstream = unique("limited")
    tag = f"workstream:{workstream}"
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    try:
        result = run(config(tmp_path, workstream), workspace_root=workspace_root)
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
    assert result.ok, result.state.message

    runs = task_runs(result.flow_run_id)
    first, second = sorted((runs["worker-0/nap"], runs["worker-1/nap"]), key=lambda r: r.start_time)
    assert second.start_time >= first.end_time, "the two task runs of the limited workstream overlapped"
    for task_run in (first, second):
        assert tag in task_run.tags and "priority:high" in task_run.tags
