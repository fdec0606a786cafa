"""Resuming a failed or cancelled run without paying twice: the same flow run runs again, its
completed agent tasks come from Prefect's result storage, the model calls that completed inside
an unfinished LLM task are answered from storage, and the first attempt's workspace is reused.
Counted at the scripted model server, through the session's Prefect server and the real Docker
engine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import run_prefect, run_toka, write_config
from llm_server import OPENAI_PATH, scripted_server, server_error, slow, text, tool_call
from own_runs import remove_run_containers
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.states import Cancelling, Scheduled
from support import wait_final
from test_deploy_api import make_pool, start_run
from test_llm_runs import llm_config, wait_for_requests

from toka_agents import ExecutionError, deploy, run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


AGENTS = """
- name: maker
  capabilities: [filesystem-write]
  tasks: [{name: make, code: {language: shell, source: "echo made >> made.txt"}}]
- name: scout
  requires: [maker]
  tasks: [{name: look, instruction: Look at made.txt.}]
- name: writer
  requires: [scout]
  capabilities: [filesystem-write]
  tasks: [{name: compute, instruction: Compute the sum of 1 to 10.}]
- name: checker
  requires: [writer]
  capabilities: [filesystem-write]
  tasks: [{name: check, code: {language: shell, source: "echo checked >> checked.txt"}}]
"""

SUM = "print(sum(range(1, 11)))"


def agent_task_runs(flow_run_id) -> list:
    """The flow run's agent task runs of every attempt (steps left out), oldest first."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
    return sorted((r for r in runs if " · " not in r.name), key=lambda r: r.created)


def test_a_resumed_run_sends_only_the_model_calls_not_done_and_reruns_no_completed_task(
    tmp_path, workspace_root, api_key
):
    name = f"resume-{uuid.uuid4().hex[:8]}"
    script = (
        tool_call("finish", success=True, summary="made.txt says made."),  # scout
        tool_call("run_code", language="python", source=SUM),  # writer, model 1
        server_error(500),  # writer, model 2: the provider fails, the first attempt with it
        tool_call("finish", success=True, summary="The sum is 55."),  # writer, model 2 again
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, AGENTS, name=name, max_retries=0)
        first = run(config, workspace_root=workspace_root)
        assert first.state.is_failed(), first.state
        assert len(server.requests_to(OPENAI_PATH)) == 3
        assert [o.status for o in first.outcomes] == ["completed", "completed", "failed", "skipped"]

        second = run(config, workspace_root=workspace_root, resume=first.flow_run_id)
        sent = server.requests_to(OPENAI_PATH)
    assert second.ok, second.state.message
    assert second.flow_run_id == first.flow_run_id
    # One request more: the writer's second model call. The scout's call and the writer's
    # first one were answered from storage; the request carries the first attempt's tool result.
    assert len(sent) == 4
    resent = sent[3].body["messages"]
    assert [m["role"] for m in resent] == ["system", "user", "assistant", "tool"]
    assert resent[3]["content"] == "exit code 0\n--- stdout ---\n55"
    assert resent == sent[2].body["messages"]
    assert [o.status for o in second.outcomes] == ["completed"] * 4
    assert second.outcomes[2].summary == "The sum is 55."

    # The first attempt's workspace, where the maker's line was written once and not again.
    assert second.workspace == first.workspace
    assert (second.workspace / "made.txt").read_text() == "made\n"
    assert (second.workspace / "checked.txt").read_text() == "checked\n"

    runs = agent_task_runs(first.flow_run_id)
    by_attempt = [(r.name, r.state.name) for r in runs]
    assert by_attempt == [
        ("maker/make", "Completed"),
        ("scout/look", "Completed"),
        ("writer/compute", "Failed"),
        ("checker/check", "Skipped"),
        ("maker/make", "Cached"),
        ("scout/look", "Cached"),
        ("writer/compute", "Completed"),
        ("checker/check", "Completed"),
    ]


ONE_TASK = 'agents: [{name: a, tasks: [{name: t, code: {language: shell, source: "true"}}]}]\n'


def test_runs_that_cannot_be_resumed_get_one_line_answers(tmp_path, workspace_root, prefect_api):
    name = f"done-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, f"name: {name}\n{ONE_TASK}")
    done = run(config, workspace_root=workspace_root)
    assert done.ok
    with pytest.raises(ExecutionError) as refused:
        run(config, workspace_root=workspace_root, resume=done.flow_run_id)
    assert str(refused.value) == (
        f"cannot resume {done.flow_run_id}: it is Completed; "
        "only a failed, cancelled or crashed run can be resumed"
    )
    other = write_config(tmp_path, f"name: other\n{ONE_TASK}", "other.yaml")
    with pytest.raises(ExecutionError) as refused:
        run(other, resume=done.flow_run_id)
    assert str(refused.value) == (
        f"cannot resume {done.flow_run_id}: it is a run of {name!r}, and this config is 'other'"
    )

    absent = uuid.uuid4()
    with pytest.raises(ExecutionError) as refused:
        run(config, resume=absent)
    assert str(refused.value) == f"cannot resume {absent}: Prefect has no such flow run"
    printed = run_toka(
        "orchestrate", str(config), "--resume", "not-a-run", env={"PREFECT_API_URL": prefect_api}
    )
    assert printed.returncode == 1, printed.stderr
    assert printed.stderr.strip() == "error: cannot resume 'not-a-run': it is not a flow run id"


def test_prefects_retry_of_a_cancelled_deployment_run_resumes_it_on_a_worker(
    tmp_path, prefect_api, api_key, docker_client
):
    """The UI's Retry: the run goes back to Scheduled (AwaitingRetry) and a worker runs it again.
    The first attempt is cancelled while the model is answering its second call."""
    name = f"retried-{uuid.uuid4().hex[:8]}"
    writer = """
    - name: writer
      capabilities: [filesystem-write]
      tasks: [{name: compute, instruction: Compute the sum of 1 to 10 and write it down.}]
    """
    script = (
        tool_call("write_file", path="sum.txt", content="55\n"),
        slow(600, text("never sent back")),  # the model hangs; the run is cancelled meanwhile
        tool_call("finish", success=True, summary="Wrote sum.txt."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, writer, name=name)
        pool = make_pool(name, prefect_api)
        deploy(config, name=name, work_pool=pool)
        flow_run_id = start_run(f"toka-orchestrate/{name}", prefect_api, tmp_path)
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("prefect")),
                "worker",
                "start",
                "--pool",
                pool,
                "--run-once",
            ],
            cwd=tmp_path,
            env={**os.environ, "PREFECT_API_URL": prefect_api},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_for_requests(server, 2)
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Cancelling())
            worker.wait(timeout=300)
            first = wait_final(flow_run_id, 60).state
            assert first is not None and first.is_cancelled(), first
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    flow_run_id, Scheduled(name="AwaitingRetry", message="Retry from the UI")
                )
            for _ in range(3):  # a worker's one poll may come before the run is due
                again = run_prefect(
                    "worker", "start", "--pool", pool, "--run-once", api=prefect_api, cwd=tmp_path
                )
                assert again.returncode == 0, again.stdout + again.stderr
                second = wait_final(flow_run_id, 60).state
                if second is None or not second.is_scheduled():
                    break
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
            remove_run_containers(docker_client, flow_run_id)
        sent = server.requests_to(OPENAI_PATH)
    assert second is not None and second.is_completed(), second
    # Model call 1 was answered from storage; call 2, cut by the cancel, was sent again.
    assert len(sent) == 3
    assert sent[2].body["messages"] == sent[1].body["messages"]
    assert sent[2].body["messages"][3]["content"] == "wrote 3 bytes to sum.txt"
