"""LLM tasks run for real, end to end: through Prefect (the session's server) and the real Docker
sandbox, with the scripted provider of `llm_server` as the model. Each model call and each tool
call is a task run nested under its agent task's run.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from conftest import write_config
from llm_server import OPENAI_PATH, scripted_server, text, tool_call
from own_runs import no_leftover_containers  # noqa: F401 (this module's leak check)
from test_flows import artifacts, task_runs

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_containers")

KEY_ENV = "TOKA_TEST_LLM_KEY"


@pytest.fixture
def api_key(monkeypatch) -> str:
    key = f"sk-planted-{os.urandom(8).hex()}"
    monkeypatch.setenv(KEY_ENV, key)
    return key


def llm_config(directory: Path, server, agents: str, **llm: object) -> Path:
    settings = {
        "provider": "openai",
        "model": "scripted-1",
        "base_url": server.openai_base_url,
        "api_key_env": KEY_ENV,
        **llm,
    }
    body = f"name: llm-run\nllm: {json.dumps(settings)}\nagents:\n" + textwrap.indent(
        textwrap.dedent(agents), "  "
    )
    return write_config(directory, body)


def prompts(server) -> list[list[dict]]:
    """The messages of each request the model server received, in order."""
    return [r.body["messages"] for r in server.requests_to(OPENAI_PATH)]


WRITER = """
- name: writer
  capabilities: [filesystem-write]
  tasks: [{name: compute, instruction: Compute the sum of 1 to 10 and write it down.}]
"""


def test_a_model_writes_code_runs_it_reads_its_output_writes_a_file_and_finishes(
    tmp_path, workspace_root, api_key
):
    script = (
        tool_call("run_code", language="python", source="print(sum(range(1, 11)))"),
        tool_call("write_file", path="sum.txt", content="55\n"),
        tool_call("read_file", path="sum.txt"),
        tool_call("finish", success=True, summary="The sum of 1 to 10 is 55; it is in sum.txt."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, WRITER), workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    [outcome] = result.outcomes
    assert outcome.status == "completed"
    assert outcome.summary == "The sum of 1 to 10 is 55; it is in sum.txt."
    assert outcome.steps == 4 and outcome.input_tokens > 0 and outcome.output_tokens > 0
    assert (result.workspace / "sum.txt").read_text() == "55\n"
    # The model read what its code printed, and what the file held.
    tool_results = [m["content"] for m in sent[-1] if m["role"] == "tool"]
    assert tool_results[:3] == ["exit code 0\n--- stdout ---\n55", "wrote 3 bytes to sum.txt", "55\n"]

    runs = task_runs(result.flow_run_id)
    agent_run = runs["writer/compute"]
    steps = {name: r for name, r in runs.items() if name.startswith("writer/compute · ")}
    assert sorted(steps) == sorted(
        [
            "writer/compute · list_files 1",  # the workspace listing for the prompt
            *(f"writer/compute · model {i}" for i in range(1, 5)),
            "writer/compute · run_code 1",
            "writer/compute · write_file 1",
            "writer/compute · read_file 1",
            "writer/compute · finish 1",
        ]
    )
    for step in steps.values():
        assert step.state.is_completed(), (step.name, step.state)
        assert {p.id for p in step.task_inputs["__parents__"]} == {agent_run.id}, step.name

    [conversation] = [a for a in artifacts(result.flow_run_id) if a.key == "writer-compute-conversation"]
    assert "The sum of 1 to 10 is 55" in conversation.data and "print(sum(range(1, 11)))" in conversation.data


def test_a_downstream_agents_prompt_holds_its_upstream_agents_summary_and_its_spec(
    tmp_path, workspace_root, api_key
):
    agents = """
    - name: scout
      tasks: [{name: look, instruction: Look around.}]
    - name: planner
      description: Plans the next steps from what the scout found.
      requires: [scout]
      extra:
        objectives: [{description: Make a plan, deliverable: plan.md}]
        behavioral_directives: {coordination: [Wait for the scout]}
        success_criteria: {final: [The plan names every finding]}
      tasks: [{name: plan, instruction: Make a plan.}]
    """
    script = (
        tool_call("finish", success=True, summary="Found three rooms and a locked door."),
        tool_call("finish", success=True, summary="Planned."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, agents), workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    assert [o.summary for o in result.outcomes] == ["Found three rooms and a locked door.", "Planned."]
    system, user = sent[1][0]["content"], sent[1][1]["content"]
    assert "scout: Found three rooms and a locked door." in user
    assert "Task plan: Make a plan." in user
    assert "Plans the next steps from what the scout found." in system
    assert "- description: Make a plan; deliverable: plan.md" in system
    assert "- coordination: Wait for the scout" in system
    assert "- final: The plan names every finding" in system
    assert "Found three rooms" not in json.dumps(sent[0])  # the scout's own prompt had no such thing


def test_a_model_that_never_finishes_hits_the_step_bound_and_the_task_fails_naming_it(
    tmp_path, workspace_root, api_key
):
    with scripted_server(*[text("Thinking...")] * 3, api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, max_steps=3)
        result = run(config, workspace_root=workspace_root)
        assert len(prompts(server)) == 3
    assert not result.ok
    [outcome] = result.outcomes
    assert outcome.status == "failed" and outcome.steps == 3
    assert outcome.message == "the model did not finish within llm.max_steps 3 steps"
    assert result.state.message == (
        "1 task(s) failed: writer/compute: the model did not finish within llm.max_steps 3 steps"
    )
    agent_run = task_runs(result.flow_run_id)["writer/compute"]
    assert agent_run.state.is_failed() and "llm.max_steps 3" in agent_run.state.message
