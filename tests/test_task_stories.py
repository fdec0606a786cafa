"""What a person reads on a task run's page: each LLM step tells its story, and a task that ends
as toka-agents means it to (failed, timed out, killed, refused) says why in one line, never
with a traceback or the repr of internal objects."""

from __future__ import annotations

import json
import re
import textwrap

import pytest
from conftest import write_config
from llm_server import Fault, scripted_server, tool_call
from prefect import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
from test_flows import task_runs
from test_llm_runs import WRITER, llm_config
from test_task_logs import logged_lines

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_containers")

NEVER_IN_A_LOG = ("Traceback", "TaskOutcome(", "NoneType: None", "result=")


def readable(lines: list[str]) -> None:
    for line in lines:
        assert not any(marker in line for marker in NEVER_IN_A_LOG), line


def test_tasks_that_fail_time_out_or_are_killed_say_why_in_one_line(tmp_path, workspace_root):
    config = write_config(
        tmp_path,
        textwrap.dedent(
            """
            name: endings
            agents:
              - name: broken
                tasks:
                  - {name: exit, code: {language: shell, source: "echo working; echo the disk is full >&2; exit 3"}}
              - name: slow
                limits: {timeout: 1s}
                tasks: [{name: sleep, code: {language: shell, source: "sleep 30"}}]
              - name: hog
                limits: {memory: 64MB}
                tasks:
                  - {name: alloc, code: {language: python, source: "b = [bytearray(10**7) for _ in range(100)]"}}
              - name: retried
                retries: 1
                tasks: [{name: flaky, code: {language: shell, source: "exit 4"}}]
            """
        ),
    )
    result = run(config, workspace_root=workspace_root)
    assert result.state.is_failed()
    runs = task_runs(result.flow_run_id)
    reasons = {
        "broken/exit": "exit code 3: the disk is full",
        "slow/sleep": "timed out after 1s",
        "hog/alloc": "killed: memory limit 64MB exceeded",
        "retried/flaky": "exit code 4",
    }
    for name, reason in reasons.items():
        state = runs[name].state
        assert state.is_failed() and state.message.startswith(reason), (name, state.message)
        lines = logged_lines(runs[name].id)
        readable(lines)
        assert f"Finished in state Failed({state.message!r})" in lines, (name, lines)
    # Its output, both streams (lines of two streams may be logged in either order).
    assert sorted(logged_lines(runs["broken/exit"].id)[:2]) == ["[stderr] the disk is full", "working"]
    # What each task used is on its own task run's page.
    with get_client(sync_client=True) as client:
        [usage] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["broken-exit-usage"])),
            sort="CREATED_DESC",
            limit=1,
        )
    assert usage.task_run_id == runs["broken/exit"].id and usage.type == "table"
    used = {row["what"]: row["used"] for row in json.loads(usage.data)}
    assert list(used) == [
        "duration",
        "peak memory",
        "cpu time",
        "peak pids",
        "stdout / stderr",
        "workspace written",
    ]
    assert used["stdout / stderr"] == "8B / 17B" and used["duration"].endswith("s"), used
    # A retry names its reason, and the attempt after it starts.
    retry = [line for line in logged_lines(runs["retried/flaky"].id) if "Retry 1/1" in line]
    assert retry and retry[0].startswith("Task run failed: exit code 4 - Retry 1/1 will start"), retry


def test_each_llm_step_tells_its_story_and_a_refused_request_is_one_line(
    tmp_path, workspace_root, api_key
):
    source = "print(sum(range(1, 11)))"
    script = (
        tool_call("run_code", language="python", source=source),
        Fault(400, "the model does not exist"),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, WRITER), workspace_root=workspace_root)
    assert result.state.is_failed()
    runs = task_runs(result.flow_run_id)

    asked = logged_lines(runs["writer/compute · model 1"].id)
    readable(asked)
    [story] = [line for line in asked if line.startswith("the model asks for")]
    assert story.startswith('the model asks for run_code({"language": "python", "source": "print(')
    assert re.search(r" \([1-9][0-9]* tokens in, [1-9][0-9]* out\)$", story), story

    ran = logged_lines(runs["writer/compute · run_code 1"].id)
    readable(ran)
    assert f"run_code runs python:\n{source}" in ran, ran
    assert "exit code 0\n--- stdout ---\n55" in ran, ran

    refused = runs["writer/compute · model 2"]
    assert refused.state.is_failed()
    lines = logged_lines(refused.id)
    readable(lines)
    assert any(
        line.startswith("Task run failed: ") and "refused the request: 400" in line for line in lines
    ), lines
    readable(logged_lines(runs["writer/compute"].id))

    # The conversation artifact was written after each model step, not only at the end.
    with get_client(sync_client=True) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["writer-compute-conversation"]))
        )
    mine = [a for a in versions if a.flow_run_id == result.flow_run_id]
    assert any("# writer/compute: running" in str(a.data) for a in mine), [a.data for a in mine]
    # ... and after each tool call: its result shows before the next model call answers.
    running = [str(a.data) for a in mine if "# writer/compute: running" in str(a.data)]
    assert any("## tool result: run_code" in data for data in running), running
