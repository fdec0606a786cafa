"""What a task prints reaches its task run's log in Prefect: every line, a bounded number of
records, and a last line without a newline too."""

from __future__ import annotations

import textwrap
from uuid import UUID

import pytest
from conftest import _drain_prefect_workers, write_config
from own_runs import read_all
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterTaskRunId
from test_flows import task_runs

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_containers")


def logged_lines(task_run_id: UUID) -> list[str]:
    _drain_prefect_workers()
    with get_client(sync_client=True) as client:
        logs = read_all(
            client.read_logs,
            log_filter=LogFilter(task_run_id=LogFilterTaskRunId(any_=[task_run_id])),
        )
    return [log.message for log in logs]


def test_task_output_is_logged_whole_and_bounded(tmp_path, workspace_root):
    path = write_config(
        tmp_path,
        textwrap.dedent(
            """
            name: logs
            agents:
              - name: quiet
                tasks:
                  - {name: partial, code: {language: shell, source: "printf 'first\\nno newline at the end'"}}
              - name: chatty
                tasks:
                  - {name: lines, code: {language: shell, source: "seq 1 50000; echo done >&2"}}
            """
        ),
    )
    result = run(path, workspace_root=workspace_root)
    assert result.ok, result.state.message
    runs = task_runs(result.flow_run_id)

    quiet = logged_lines(runs["quiet/partial"].id)
    assert "first" in quiet
    assert "no newline at the end" in quiet

    chatty = logged_lines(runs["chatty/lines"].id)
    output = [line for line in chatty if line.isdigit()]
    assert output == [str(n) for n in range(1, 2001)]
    assert any(
        line.startswith("... 48001 more output line(s) not logged (at most 2000 are)") for line in chatty
    ), chatty[-5:]
    assert len(chatty) < 2010
    # The result keeps the tails whatever the log holds.
    chatty_outcome = next(o for o in result.outcomes if o.task_id == "chatty/lines")
    assert chatty_outcome.stdout_tail.endswith("49999\n50000\n")
    assert chatty_outcome.stderr_tail == "done\n"
