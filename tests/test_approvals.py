"""Approvals: a task with `approval: required` waits for a person before it starts, and one with
`approval: {tools: [...]}` before each call of those tools; `toka agent approve|reject` (CLI) and
`approve`/`reject` (Python) resume it. Answers and approvals given are kept: a resumed run does
not ask again. Real Prefect server, real Docker engine, the scripted model server on 127.0.0.1."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from uuid import UUID

import pytest
from conftest import EXAMPLES, run_toka, start_toka, write_config
from llm_server import scripted_server, server_error, tool_call
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.input.actions import read_flow_run_input
from test_llm_runs import llm_config, model_from_environment, prompts
from test_resume import agent_task_runs
from waiting import human_events, next_pause, paused_run, run_in_background

from toka_agents import TokaError, answer, approve, reject, run
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import LABEL_MANAGED

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


def shipping(tmp_path, name: str, extra: str = ""):
    return write_config(
        tmp_path,
        f"name: {name}\n{extra}agents:\n"
        "  - name: deployer\n"
        "    capabilities: [filesystem-write]\n"
        "    tasks:\n"
        "      - name: ship\n"
        "        approval: required\n"
        '        code: {language: shell, source: "echo shipped > shipped.txt"}\n',
    )


def running_containers(docker_client, flow_run_id: UUID) -> list[str]:
    labels = [f"{LABEL_MANAGED}=1", f"{RUN_LABEL}={flow_run_id}"]
    found = docker_client.api.containers(filters={"label": labels, "status": "running"})
    return [c["Names"][0] for c in found]


def test_a_task_waits_for_approval_shown_in_the_form_and_listed_and_the_cli_approves(
    tmp_path, workspace_root, prefect_api
):
    api = {"PREFECT_API_URL": prefect_api}
    since = datetime.now(UTC)
    name = f"approving-{uuid.uuid4().hex[:8]}"
    config = shipping(tmp_path, name)
    thread, results = run_in_background(config, workspace_root)
    flow_run_id = paused_run(name)
    key, description = next_pause(flow_run_id)
    pause = key.rpartition("-")[2]
    with get_client(sync_client=True) as client:
        keyset = client.read_flow_run(flow_run_id).state.state_details.run_input_keyset  # type: ignore[union-attr]
    schema = read_flow_run_input(keyset["schema"], flow_run_id)
    assert (
        "**deployer** waits for your approval to run its shell code, in its task `ship`" in description
    )
    assert "```shell\necho shipped > shipped.txt\n```" in description
    assert f"`toka agent approve {flow_run_id} --pause {pause}`" in description
    assert list(schema["properties"]) == ["decision", "comment"]

    # `toka agent list` names what waits, and the commands that answer it.
    listed = run_toka("agent", "list", str(config), env=api)
    assert listed.returncode == 0, listed.stderr
    assert (
        f"flow run {flow_run_id}: ? deployer/ship waits for approval to: run its shell code: "
        f"echo shipped > shipped.txt → toka agent approve {flow_run_id} --pause {pause}, "
        f"or toka agent reject {flow_run_id} --pause {pause} --comment 'WHY'"
    ) in listed.stdout

    # The wrong reply, or a rejection without a reason: one line, exit 1, the run still waits.
    wrong = run_toka("agent", "answer", str(flow_run_id), "yes", env=api)
    assert (wrong.returncode, wrong.stderr.strip()) == (
        1,
        f"error: flow run {flow_run_id} waits for an approval: toka agent approve {flow_run_id} "
        f"--pause {pause}, or toka agent reject {flow_run_id} --pause {pause} --comment 'WHY'",
    )
    blank = run_toka("agent", "reject", str(flow_run_id), "--comment", " ", env=api)
    assert blank.returncode == 1
    assert blank.stderr.strip().startswith("error: a rejection needs a comment")
    assert run_toka("agent", "reject", str(flow_run_id), env=api).returncode != 0  # --comment required

    approve_it = ("agent", "approve", str(flow_run_id), "--pause", pause, "--comment", "ship it")
    approved = run_toka(*approve_it, env=api)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout.strip() == (
        f"Approved deployer/ship: run its shell code: echo shipped > shipped.txt; "
        f"flow run {flow_run_id} resumes"
    )
    thread.join(120)
    [result] = results
    assert result.ok, result.state.message
    assert (result.workspace / "shipped.txt").read_text() == "shipped\n"
    events = human_events(since, 2)
    assert [kind for kind, _ in events] == ["toka.human.approval-requested", "toka.human.approved"]
    assert events[1][1]["comment"] == "ship it"
    assert events[0][1]["detail"] == "echo shipped > shipped.txt"

    # Answered, the run waits for nothing: a reply now (the same command again) is refused.
    late = run_toka(*approve_it, env=api)
    assert (late.returncode, late.stderr.strip()) == (
        1,
        f"error: flow run {flow_run_id} waits for no approval: it is Completed",
    )


def test_a_rejected_task_fails_with_the_comment_and_never_starts(tmp_path, workspace_root):
    name = f"rejecting-{uuid.uuid4().hex[:8]}"
    thread, results = run_in_background(shipping(tmp_path, name), workspace_root)
    flow_run_id = paused_run(name)
    next_pause(flow_run_id)
    with pytest.raises(TokaError, match="waits for an approval"):
        answer(flow_run_id, "yes")
    reject(flow_run_id, "not on a Friday")
    thread.join(120)
    [result] = results
    assert result.state.is_failed()
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("failed", "rejected by a person: not on a Friday")
    assert not (result.workspace / "shipped.txt").exists()


def test_an_approval_nobody_gives_fails_its_task_after_human_timeout(tmp_path, workspace_root):
    config = shipping(tmp_path, f"unapproved-{uuid.uuid4().hex[:8]}", extra="human_timeout: 3s\n")
    started = time.monotonic()
    result = run(config, workspace_root=workspace_root)
    assert time.monotonic() - started < 60
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("failed", "not approved within 3s")
    assert not (result.workspace / "shipped.txt").exists()


SECOND = (
    "access = 'user'\n"
    "flag = access != 'user'  # \u202e admin only\n"
    + "# padding\n" * 1_500
    + "open('b.txt', 'w').write('b')"
)
"""A second program with a bidi override in it, longer than an event carries."""

CODER = """
- name: coder
  capabilities: [filesystem-write]
  tasks:
    - name: build
      instruction: Write the files.
      approval: {tools: [run_code]}
"""


def test_each_call_of_a_held_tool_waits_and_a_rejected_call_is_an_error_the_model_reads(
    tmp_path, workspace_root, api_key, docker_client
):
    script = (
        tool_call("run_code", language="python", source="open('a.txt', 'w').write('a')"),
        tool_call("run_code", language="python", source=SECOND),
        tool_call("list_files"),  # not held: runs without asking
        tool_call("finish", success=True, summary="Wrote b.txt."),
    )
    name = f"held-calls-{uuid.uuid4().hex[:8]}"
    since = datetime.now(UTC)
    with scripted_server(*script, api_key=api_key) as server:
        thread, results = run_in_background(
            llm_config(tmp_path, server, CODER, name=name), workspace_root
        )
        flow_run_id = paused_run(name)
        first, description = next_pause(flow_run_id)
        assert "waits for your approval to call run_code (python), in its task `build`" in description
        assert "```python\nopen('a.txt', 'w').write('a')\n```" in description
        # While the call waits for a person, the run keeps no container but the task's session
        # (started by the listing of the workspace for its first prompt): its warm pool is
        # emptied within seconds of the pause.
        deadline = time.monotonic() + 15
        while not (
            len(running := running_containers(docker_client, flow_run_id)) == 1
            and running[0].startswith("/toka-coder-build-")
        ):
            assert time.monotonic() < deadline, running
            time.sleep(0.5)
        reject(flow_run_id, "not a.txt")
        _, description = next_pause(flow_run_id, after=first)
        # Shown as it runs: the bidi override visible, the whole source (its event has a part).
        assert "access != 'user'  # \\u202e admin only" in description
        assert SECOND.splitlines()[-1] in description
        # A reply bound to the first pause cannot land on this one, unseen.
        with pytest.raises(TokaError, match=f"no longer waits on pause {first.rpartition('-')[2]}"):
            approve(flow_run_id, pause=first.rpartition("-")[2])
        approve(flow_run_id)
        thread.join(120)
        sent = prompts(server)
    [result] = results
    assert result.ok, result.state.message
    assert not (result.workspace / "a.txt").exists()
    assert (result.workspace / "b.txt").read_text() == "b"
    # The model read the rejection as the first call's result.
    rejected = [m for m in sent[1] if m.get("role") == "tool"]
    assert "rejected by a person: not a.txt" in rejected[-1]["content"]
    # The events carry the first 10,000 characters of a long proposal, the cut named.
    [second] = [
        p
        for kind, p in human_events(since, 4)
        if kind.endswith("approval-requested") and "padding" in p["detail"]
    ]
    assert second["detail"].startswith(SECOND[:10_000]) and second["detail"].endswith("more characters)")


ASKS_AFTER_APPROVAL = """
- name: asker
  human: ask
  tasks:
    - name: choose
      instruction: Choose a colour for the report.
      approval: required
"""


def test_a_resumed_run_asks_no_question_and_no_approval_a_person_already_answered(
    tmp_path, workspace_root, api_key
):
    """The first attempt's approval and answer come from storage: asked again, the resumed run
    would wait (and fail after human_timeout) instead of completing."""
    script = (
        tool_call("ask_human", question="Which colour?"),
        server_error(500),  # the provider fails after the answer: the first attempt fails
        tool_call("finish", success=True, summary="Blue, as asked."),
    )
    name = f"resume-asked-{uuid.uuid4().hex[:8]}"
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, ASKS_AFTER_APPROVAL, name=name, max_retries=0)
        config.write_text(config.read_text().replace("agents:", "human_timeout: 30s\nagents:", 1))
        thread, results = run_in_background(config, workspace_root)
        flow_run_id = paused_run(name)
        approval, _ = next_pause(flow_run_id)
        approve(flow_run_id)
        next_pause(flow_run_id, after=approval)
        answer(flow_run_id, "Blue.")
        thread.join(120)
        [first] = results
        assert first.state.is_failed(), first.state

        second = run(config, workspace_root=workspace_root, resume=flow_run_id)
        sent = prompts(server)
    assert second.ok, second.state.message
    assert len(sent) == 3
    assert [m["content"] for m in sent[2] if m.get("role") == "tool"] == ["Blue."]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])), limit=200
        )
    held = sorted(r.state.name for r in runs if r.name.endswith("· approval"))
    assert held == ["Cached", "Completed"]
    assert [(r.name, r.state.name) for r in agent_task_runs(flow_run_id)] == [
        ("asker/choose", "Failed"),
        ("asker/choose", "Completed"),
    ]


NOTES = "# Release Aurora\nA release note says what changed.\nAnd what to do about it.\n"


def test_the_approve_and_ask_example_asks_one_question_and_needs_one_approval(
    workspace_root, api_key, monkeypatch, prefect_api
):
    script = (
        tool_call("ask_human", question="What is this release called?"),
        tool_call("write_file", path="release-notes.md", content=NOTES),
        tool_call("finish", success=True, summary="Release Aurora: notes written."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        model_from_environment(monkeypatch, server, api_key)
        thread, results = run_in_background(EXAMPLES / "approve-and-ask.yaml", workspace_root)
        flow_run_id = paused_run("approve-and-ask")
        question, description = next_pause(flow_run_id)
        assert "**writer** asks, in its task `notes`" in description
        answer(flow_run_id, "Aurora")
        _, description = next_pause(flow_run_id, after=question)
        assert "**publisher** waits for your approval to run its shell code" in description
        approved = run_toka("agent", "approve", str(flow_run_id), env={"PREFECT_API_URL": prefect_api})
        assert approved.returncode == 0, approved.stderr
        thread.join(120)
        sent = prompts(server)
    [result] = results
    assert result.ok, result.state.message
    assert [m["content"] for m in sent[1] if m.get("role") == "tool"] == ["Aurora"]
    assert result.outcomes[-1].stdout_tail == "published: # Release Aurora\n"
    assert (result.workspace / "published" / "release-notes.md").read_text() == NOTES


def test_orchestrate_watch_shows_what_the_run_waits_for_and_how_to_answer(tmp_path, prefect_api):
    name = f"watched-{uuid.uuid4().hex[:8]}"
    config = shipping(tmp_path, name)
    env = {"PREFECT_API_URL": prefect_api}
    watching = start_toka(
        "orchestrate", str(config), "--watch", "--workspace-dir", str(tmp_path / "runs"), env=env
    )
    try:
        flow_run_id = paused_run(name)
        assert watching.stdout is not None
        wanted = f"? deployer/ship waits for approval to: run its shell code: echo shipped > shipped.txt → toka agent approve {flow_run_id}"
        deadline = threading.Timer(60, watching.kill)  # a watch that never shows it ends
        deadline.start()
        lines = []
        for line in watching.stdout:  # the watch prints the line once the run waits
            lines.append(line)
            if line.startswith(wanted):
                break
        deadline.cancel()
        assert lines and lines[-1].startswith(wanted), lines
        approve(flow_run_id)
        rest, errors = watching.communicate(timeout=120)
    finally:
        watching.kill()
    assert watching.returncode == 0, errors
    assert "Run: Completed" in rest


def test_a_run_set_running_without_a_reply_fails_the_waiting_task_in_one_line(tmp_path, workspace_root):
    """As the UI's "change state" does: the run goes on, the task that waited does not start."""
    from prefect.states import Running

    name = f"forced-{uuid.uuid4().hex[:8]}"
    thread, results = run_in_background(shipping(tmp_path, name), workspace_root)
    flow_run_id = paused_run(name)
    next_pause(flow_run_id)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Running(), force=True)
    thread.join(120)
    [result] = results
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("failed", "the run was set Running without a reply")
    assert not (result.workspace / "shipped.txt").exists()


def test_bad_approval_settings_get_one_line_each(tmp_path):
    config = write_config(
        tmp_path,
        """
name: bad-approvals
agents:
  - name: a
    tasks:
      - {name: t1, instruction: x, approval: yes}
      - {name: t2, instruction: x, approval: {tools: []}}
      - {name: t3, instruction: x, approval: {tools: [run_cod]}}
      - {name: t4, instruction: x, approval: {tools: [run_code, run_code]}}
      - {name: t5, code: {language: shell, source: "true"}, approval: {tools: [run_code]}}
      - {name: t6, instruction: x, approval: required}
      - {name: t7, instruction: x, approval: {tools: [run_code, time__get_current_time]}}
""",
    )
    checked = run_toka("validate", str(config))
    forms = (
        "`approval` is `required` (the task waits for a person before it starts) or, on an LLM "
        "task, `{tools: [run_code, ...]}` (each call of those tools waits)"
    )
    assert checked.returncode == 1
    assert checked.stderr.splitlines() == [
        f"{config}: agents.0.tasks.0.approval: {forms} (got True)",
        f"{config}: agents.0.tasks.1.approval.tools: List should have at least 1 item after "
        "validation, not 0",
        f"{config}: agents.0.tasks.2.approval.tools.0: 'run_cod' is not a tool an approval can "
        "hold: one of run_code, list_files, read_file, write_file, or an MCP server's tool as "
        "SERVER__TOOL",
        f"{config}: agents.0.tasks.3.approval.tools: run_code named more than once",
        f"{config}: agents.0.tasks.4.approval: a code task waits before it starts (`approval: "
        "required`); tool approvals are for LLM tasks",
        "5 problem(s) found",
    ]
