"""The agent loop against the scripted server over real HTTP, with a plain-function step runner
and a `run_code` that needs no Docker: the prompt, tool results fed back, `finish` deciding
success, the step and token bounds, malformed replies fed back once, paths kept in the
workspace, secrets redacted, provider errors and cancellation named.
"""

from __future__ import annotations

import json
import subprocess
import threading
from pathlib import Path

import pytest
from llm_server import (
    ANTHROPIC_PATH,
    OPENAI_PATH,
    Reply,
    bad_arguments,
    scripted_server,
    text,
    tool_call,
)

from toka_agents.config.models import LlmSettings, TokenPrice
from toka_agents.llm import Gateway, ToolMessage
from toka_agents.llm.loop import LoopResult, TaskBrief, run_loop
from toka_agents.llm.tools import Toolbox
from toka_agents.sandbox import SandboxResult

KEY = "sk-loop-test-77aa"
PATHS = {"openai": OPENAI_PATH, "anthropic": ANTHROPIC_PATH}
BRIEF = TaskBrief(agent="analyst", task="count", instruction="Count to 42.", may_write=True)


class LocalCode:
    """`run_code` for tests without Docker: runs the (scripted, known) code in a subprocess whose
    working directory is the test's workspace, and records each call."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls: list[tuple[str, str]] = []

    def __call__(self, language: str, source: str) -> SandboxResult:
        self.calls.append((language, source))
        command = ["python3", "-c", source] if language == "python" else ["sh", "-c", source]
        done = subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=30)
        return SandboxResult(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr)


class Steps:
    """A plain-function step runner that records the steps it ran."""

    def __init__(self) -> None:
        self.ran: list[tuple[str, str]] = []

    def __call__(self, kind, name, fn, *args):
        self.ran.append((kind, name))
        return fn(*args)


def run(
    server, provider, tmp_path, brief=BRIEF, *, max_steps=10, runner=None, api_key=KEY, **bounds
) -> LoopResult:
    base_url = server.openai_base_url if provider == "openai" else server.anthropic_base_url
    settings = LlmSettings(provider=provider, model="test-model", base_url=base_url, max_retries=0)
    toolbox = Toolbox(LocalCode(tmp_path), may_write=brief.may_write, root=str(tmp_path))
    with Gateway(settings, api_key=api_key) as gateway:
        return run_loop(
            brief, gateway.complete, toolbox, max_steps=max_steps, runner=runner or Steps(), **bounds
        )


def bodies(server, provider) -> list[dict]:
    return [r.body for r in server.requests_to(PATHS[provider])]


def said_to_model(body: dict) -> str:
    """Everything a request tells the model, as one text."""
    return json.dumps(body.get("system", "")) + json.dumps(body["messages"])


def tool_results(result: LoopResult) -> list[ToolMessage]:
    return [m for m in result.transcript if isinstance(m, ToolMessage)]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_task_runs_code_sees_its_output_and_finishes(provider, tmp_path):
    script = (
        tool_call("run_code", language="python", source="print(6 * 7)"),
        Reply(
            calls=tool_call("finish", success=True, summary="It prints 42.").calls,
            input_tokens=50,
            output_tokens=5,
        ),
    )
    steps = Steps()
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, provider, tmp_path, runner=steps)
        sent = bodies(server, provider)
    assert (result.success, result.summary, result.ended_by) == (True, "It prints 42.", "finish")
    assert steps.ran == [
        ("tool", "list_files 1"),
        ("model", "model 1"),
        ("tool", "run_code 1"),
        ("model", "model 2"),
        ("tool", "finish 1"),
    ]
    assert (result.steps, result.tool_calls) == (2, 2)
    # The code's output went back to the model in the second request.
    assert len(sent) == 2 and "exit code 0\\n--- stdout ---\\n42" in said_to_model(sent[1])
    assert result.input_tokens > 50 and result.output_tokens > 5
    price = TokenPrice(input=1.0, output=2.0)
    assert result.cost(price) == pytest.approx((result.input_tokens + 2 * result.output_tokens) / 1e6)


def test_the_prompt_carries_the_agents_context(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    brief = TaskBrief(
        agent="architect",
        task="design",
        instruction="Design the storage layer.",
        description="Designs Toka's storage.",
        objectives=["Keep writes durable"],
        capabilities=["filesystem-read"],
        directives=["Prefer simple designs"],
        success_criteria=["A design document exists"],
        upstream={"researcher": "SQLite fits; see notes.md"},
    )
    with scripted_server(tool_call("finish", success=True, summary="designed"), api_key=KEY) as server:
        result = run(server, "anthropic", tmp_path, brief)
        (first,) = bodies(server, "anthropic")
    assert result.success
    system, task = first["system"], first["messages"][0]["content"][0]["text"]
    for expected in (
        "You are architect",
        "Designs Toka's storage.",
        "- Keep writes durable",
        "- filesystem-read",
    ):
        assert expected in system
    assert "- Prefer simple designs" in system and "- A design document exists" in system
    assert "you may read it, not write it" in system and "finish(success, summary)" in system
    assert task.startswith("Task design: Design the storage layer.")
    assert "- researcher: SQLite fits; see notes.md" in task
    assert "data.csv  (8 bytes)" in task  # the workspace listing
    assert [t["name"] for t in first["tools"]] == ["run_code", "list_files", "read_file", "finish"]


def test_finish_decides_success_never_the_words(tmp_path):
    script = (text("Task complete. SUCCESS, all done!"), text("Success."), text("Done, succeeded."))
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, "openai", tmp_path, max_steps=3)
        sent = bodies(server, "openai")
    assert not result.success and result.ended_by == "max_steps"
    assert result.summary == "the model did not finish within llm.max_steps 3 steps"
    assert len(sent) == 3 and "call finish(success, summary)" in sent[1]["messages"][-1]["content"]

    with scripted_server(
        tool_call("finish", success=False, summary="The data was missing."), api_key=KEY
    ) as server:
        result = run(server, "openai", tmp_path)
    assert (result.success, result.summary, result.ended_by) == (
        False,
        "The data was missing.",
        "finish",
    )


def test_the_token_bound_ends_the_task_and_names_it(tmp_path):
    script = [Reply(text="Thinking.", input_tokens=400, output_tokens=200)] * 3
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, "anthropic", tmp_path, max_tokens=1000)
        sent = bodies(server, "anthropic")
    assert not result.success and result.ended_by == "max_tokens"
    assert result.summary == "the task used 1200 tokens, reaching llm.max_tokens_per_task 1000"
    assert len(sent) == 2 and (result.input_tokens, result.output_tokens) == (800, 400)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_malformed_reply_is_fed_back_once(provider, tmp_path):
    script = (
        tool_call("launch_rockets", target="moon"),
        tool_call("finish", success=True, summary="ok"),
    )
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, provider, tmp_path)
        sent = bodies(server, provider)
    assert result.success and result.steps == 2
    note = said_to_model(sent[1])
    assert "Your last reply could not be used (unknown tool)" in note and "launch_rockets" in note


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_malformed_reply_twice_ends_the_task_naming_it(provider, tmp_path):
    script = (
        bad_arguments("run_code", raw="{oops" if provider == "openai" else "oops"),
        tool_call("run_code", language="cobol", source=""),
    )
    with scripted_server(
        *script, tool_call("finish", success=True, summary="never"), api_key=KEY
    ) as server:
        result = run(server, provider, tmp_path)
        assert len(bodies(server, provider)) == 2
    assert not result.success and result.ended_by == "malformed"
    assert result.summary.startswith(
        "the model's reply was malformed twice in a row: malformed reply (arguments off schema)"
    )


def test_file_tools_refuse_paths_outside_the_workspace_before_any_container(tmp_path):
    script = (
        tool_call("read_file", path="../../etc/passwd"),
        tool_call("read_file", path="/etc/passwd"),
        tool_call("list_files", path="/"),
        tool_call("finish", success=True, summary="refused"),
    )
    code = LocalCode(tmp_path)
    with scripted_server(*script, api_key=KEY) as server:
        settings = LlmSettings(provider="openai", model="m", base_url=server.openai_base_url)
        with Gateway(settings, api_key=KEY) as gateway:
            result = run_loop(
                BRIEF, gateway.complete, Toolbox(code, may_write=True, root=str(tmp_path)), max_steps=10
            )
    refused = tool_results(result)[:3]
    assert all(
        m.is_error and "outside /workspace: the file tools see only /workspace" in m.content
        for m in refused
    )
    assert len(code.calls) == 1  # the prompt's workspace listing, nothing for the refused paths


def test_write_file_is_offered_only_to_agents_that_may_write(tmp_path):
    reader = BRIEF.model_copy(update={"may_write": False})
    script = (
        tool_call("write_file", path="x.txt", content="y"),
        tool_call("finish", success=True, summary="read only"),
    )
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, "openai", tmp_path, reader)
        sent = bodies(server, "openai")
    assert [t["function"]["name"] for t in sent[0]["tools"]] == [
        "run_code",
        "list_files",
        "read_file",
        "finish",
    ]
    assert "'write_file', which is no tool here" in said_to_model(sent[1])
    assert result.success and not (tmp_path / "x.txt").exists()


def test_secrets_are_redacted_from_the_transcript(tmp_path):
    secret = "tok-very-secret-31337"
    brief = BRIEF.model_copy(update={"upstream": {"vault": f"the token is {secret}"}})
    script = (
        tool_call("run_code", language="shell", source=f"echo {secret}"),
        tool_call("finish", success=True, summary=f"echoed {secret}"),
    )
    with scripted_server(*script, api_key=KEY) as server:
        base_url = server.openai_base_url
        settings = LlmSettings(provider="openai", model="m", base_url=base_url)
        with Gateway(settings, api_key=KEY) as gateway:
            toolbox = Toolbox(LocalCode(tmp_path), may_write=True, root=str(tmp_path))
            result = run_loop(brief, gateway.complete, toolbox, max_steps=5, secrets=[secret, KEY])
    dumped = result.model_dump_json()
    assert secret not in dumped and KEY not in dumped
    assert dumped.count("[redacted]") >= 4 and result.summary == "echoed [redacted]"


def test_a_provider_error_ends_the_task_with_its_reason(tmp_path):
    with scripted_server(text("never"), api_key="sk-another-key") as server:
        result = run(server, "anthropic", tmp_path)
    assert not result.success and result.ended_by == "llm_error"
    assert "refused the request: 401 Unauthorized: invalid x-api-key: [redacted]" in result.summary
    assert KEY not in result.model_dump_json()


def test_cancel_ends_the_loop_between_steps(tmp_path):
    cancel = threading.Event()

    def runner(kind, name, fn, *args):
        value = fn(*args)
        if name == "model 1":
            cancel.set()
        return value

    script = (tool_call("run_code", language="python", source="print(1)"), text("never"))
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, "openai", tmp_path, runner=runner, cancel=cancel)
        assert len(bodies(server, "openai")) == 1
    assert (result.ended_by, result.summary) == ("cancelled", "cancelled: the run was cancelled")


def test_the_time_limit_ends_the_loop_and_names_it(tmp_path):
    with scripted_server(text("never"), api_key=KEY) as server:
        result = run(server, "openai", tmp_path, timeout=1e-9)
        assert bodies(server, "openai") == []
    assert (result.ended_by, result.summary) == ("timeout", "the task ran past its time limit of 1e-09s")
