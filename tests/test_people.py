"""People in the loop: an agent with `human: ask` asks a person through a paused flow run, and
`answer` (Python) or `toka agent answer` (CLI) resumes it; a question nobody answers ends its
task after `human_timeout`. Real Prefect server, real Docker engine, the scripted model server
on 127.0.0.1."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from conftest import run_toka
from llm_server import scripted_server, tool_call
from prefect import get_client
from prefect.input.actions import read_flow_run_input
from test_flows import artifacts
from test_llm_runs import llm_config, prompts
from waiting import human_events, next_pause, paused_run, run_in_background

from toka_agents import TokaError, answer, run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

ASKER = """
- name: asker
  human: ask
  tasks: [{name: choose, instruction: Choose a colour for the report.}]
"""


def assert_the_model_read(result, sent: list, answer_text: str) -> None:
    """The asker's run completed, and the answer, exactly as given, was the `ask_human`
    call's result in the model's next request."""
    assert result.ok, result.state.message
    assert result.outcomes[0].summary == "Chose blue, as asked."
    [answer_message] = [
        m for m in sent[-1] if m.get("role") == "tool" and "Blue" in str(m.get("content"))
    ]
    assert answer_message["content"] == answer_text


def test_an_agent_asks_a_person_who_answers_and_the_model_reads_the_answer(
    tmp_path, workspace_root, api_key, prefect_api
):
    api = {"PREFECT_API_URL": prefect_api}
    since = datetime.now(UTC)
    script = (
        tool_call("ask_human", question="Which colour, <b>red</b> or blue?"),
        tool_call("finish", success=True, summary="Chose blue, as asked."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, ASKER, name="asking")
        thread, results = run_in_background(config, workspace_root)
        flow_run_id = paused_run("asking")
        # The Resume form: who asks what, the question as text, and one field, the answer.
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
        keyset = state.state_details.run_input_keyset  # type: ignore[union-attr]
        description = read_flow_run_input(keyset["description"], flow_run_id)
        schema = read_flow_run_input(keyset["schema"], flow_run_id)
        assert "**asker** asks, in its task `choose`" in description
        assert "```\nWhich colour, <b>red</b> or blue?\n```" in description
        assert list(schema["properties"]) == ["answer"]

        # A bad answer changes nothing; the CLI answers.
        with pytest.raises(TokaError, match="the answer is empty"):
            answer(flow_run_id, "  ")
        answered = run_toka("agent", "answer", str(flow_run_id), "Blue, please.", env=api)
        assert answered.returncode == 0, answered.stderr
        assert answered.stdout.strip() == (
            f"Answered asker/choose: Which colour, <b>red</b> or blue?; flow run {flow_run_id} resumes"
        )
        thread.join(120)
        sent = prompts(server)
    [result] = results
    assert_the_model_read(result, sent, "Blue, please.")
    # The question and the answer are in the conversation artifact and in two events.
    versions = [a for a in artifacts(result.flow_run_id) if a.key == "asker-choose-conversation"]
    conversation = max(versions, key=lambda a: a.created)
    assert "ask_human" in conversation.data and "Blue, please." in conversation.data
    payloads = dict(human_events(since, 2))
    assert payloads["toka.human.asked"]["question"] == "Which colour, <b>red</b> or blue?"
    assert payloads["toka.human.answered"]["answer"] == "Blue, please."

    # A run that waits for nothing, a run that does not exist, no run id: one line each, exit 1.
    for given, said in (
        (
            str(result.flow_run_id),
            f"error: flow run {result.flow_run_id} waits for no answer: it is Completed",
        ),
        (
            "0a1b2c3d-1111-2222-3333-444455556666",
            "error: no flow run 0a1b2c3d-1111-2222-3333-444455556666 on this Prefect server",
        ),
        ("not-a-run", "error: 'not-a-run' is not a flow run id (a UUID such as 0a1b2c3d-...)"),
    ):
        refused = run_toka("agent", "answer", given, "anything", env=api)
        assert (refused.returncode, refused.stderr.strip().splitlines()) == (1, [said])


def test_a_question_nobody_answers_fails_its_task_after_human_timeout(tmp_path, workspace_root, api_key):
    script = (tool_call("ask_human", question="Anyone there?"),)
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, ASKER, name="unanswered")
        config.write_text(config.read_text().replace("agents:", "human_timeout: 3s\nagents:", 1))
        started = time.monotonic()
        result = run(config, workspace_root=workspace_root)
    assert time.monotonic() - started < 60
    assert result.state.is_failed()
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("failed", "no answer within 3s")
    assert result.state.message == "1 task(s) failed: asker/choose: no answer within 3s"


def test_a_run_cancelled_while_a_question_waits_ends_at_once(
    tmp_path, workspace_root, api_key, prefect_api
):
    """The wait is ours, so a cancel ends it within a poll, not at `human_timeout` (an hour)."""
    script = (tool_call("ask_human", question="Still there?"),)
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, ASKER, name="cancelled-asking")
        thread, results = run_in_background(config, workspace_root)
        flow_run_id = paused_run("cancelled-asking")
        stopped = run_toka("agent", "stop", str(flow_run_id), env={"PREFECT_API_URL": prefect_api})
        assert stopped.stdout.startswith(f"Flow run {flow_run_id}: Cancel"), stopped.stdout
        thread.join(60)
    assert not thread.is_alive(), "the run still waits for its answer after a cancel"
    [result] = results
    assert result.state.is_cancelled(), result.state
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("cancelled", "cancelled: the run was cancelled")


TWO_ASKERS = """
- name: alpha
  human: ask
  tasks: [{name: pick, instruction: Pick a colour.}]
- name: beta
  human: ask
  tasks: [{name: pick, instruction: Pick a shape.}]
- name: worker
  capabilities: [filesystem-write]
  tasks: [{name: work, code: {language: shell, source: "echo worked > worked.txt"}}]
"""


def test_two_agents_asking_at_once_are_asked_one_after_the_other_while_others_run(
    tmp_path, workspace_root, api_key
):
    script = (
        tool_call("ask_human", question="First question?"),
        tool_call("ask_human", question="Second question?"),
        tool_call("finish", success=True, summary="Done with the first answer."),
        tool_call("finish", success=True, summary="Done with the second answer."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, TWO_ASKERS, name="two-askers")
        thread, results = run_in_background(config, workspace_root)
        flow_run_id = paused_run("two-askers")
        first, description = next_pause(flow_run_id)
        # While the first question waits, the agent that asks nothing runs to its end.
        deadline = time.monotonic() + 60
        while not list(workspace_root.glob("two-askers-*/workspace/worked.txt")):
            assert time.monotonic() < deadline, "the worker did not run while a question waited"
            time.sleep(0.5)
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(flow_run_id).state.is_paused()  # type: ignore[union-attr]
        asked = [description]
        answer(flow_run_id, "Answer one")
        _, description = next_pause(flow_run_id, after=first)
        asked.append(description)
        answer(flow_run_id, "Answer two")
        thread.join(120)
    [result] = results
    assert result.ok, result.state.message
    # One form per agent, each naming its own agent and question.
    # (Whichever agent reaches the lock first is asked first, whichever question it got.)
    named = sorted(("**alpha** asks" in d, "**beta** asks" in d) for d in asked)
    assert named == [(False, True), (True, False)]
    questions = sorted(("First question?" in d, "Second question?" in d) for d in asked)
    assert questions == [(False, True), (True, False)]
