"""The agent loop's tools in the real Docker sandbox: the scripted model writes a file, runs code
over it, reads and lists the workspace, is refused a symlink that points out of it, and
finishes; a reader's workspace stays unwritten. No container is left behind.
"""

from __future__ import annotations

import secrets

import pytest
from llm_server import scripted_server, tool_call
from support import sandbox_spec

from toka_agents.config.models import LlmSettings
from toka_agents.llm import Gateway, ToolMessage
from toka_agents.llm.loop import TaskBrief, run_loop
from toka_agents.llm.tools import Toolbox, sandbox_runner
from toka_agents.sandbox import Sandbox, SandboxSpec, create_workspace

MB = 1024**2
KEY = "sk-sandbox-loop-5150"
pytestmark = pytest.mark.usefixtures("no_leftover_containers")


@pytest.fixture
def sandbox(docker_client):
    return Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)})


def spec(image: str, workspace, writable: bool) -> SandboxSpec:
    return sandbox_spec(
        image=image,
        memory=128 * MB,
        timeout=30,
        workspace=workspace,
        workspace_writable=writable,
        env={"TOKA_WORKSPACE": "/workspace"},
        name="toka-llm-tools-test",
    )


def run(server, brief: TaskBrief, sandbox: Sandbox, sandbox_spec: SandboxSpec):
    settings = LlmSettings(provider="openai", model="m", base_url=server.openai_base_url)
    toolbox = Toolbox(sandbox_runner(sandbox, sandbox_spec), may_write=brief.may_write)
    with Gateway(settings, api_key=KEY) as gateway:
        return run_loop(brief, gateway.complete, toolbox, max_steps=10)


def test_the_model_works_in_the_sandbox_and_stays_in_the_workspace(sandbox, sandbox_image, tmp_path):
    workspace = create_workspace(tmp_path, "llm-tools")
    (workspace / "escape").symlink_to("/etc")
    script = (
        tool_call("write_file", path="data/numbers.txt", content="1\n2\n3\n"),
        tool_call(
            "run_code", language="python", source="print(sum(int(x) for x in open('data/numbers.txt')))"
        ),
        tool_call("read_file", path="escape/passwd"),
        tool_call("write_file", path="escape/planted", content="no"),
        tool_call("list_files", path="data"),
        tool_call("read_file", path="/workspace/data/numbers.txt"),
        tool_call("finish", success=True, summary="The numbers sum to 6."),
    )
    brief = TaskBrief(agent="counter", task="sum", instruction="Sum the numbers.", may_write=True)
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, brief, sandbox, spec(sandbox_image, workspace, writable=True))
    assert (result.success, result.summary, result.ended_by) == (True, "The numbers sum to 6.", "finish")
    results = [(m.name, m.is_error, m.content) for m in result.transcript if isinstance(m, ToolMessage)]
    assert results[0] == ("write_file", False, "wrote 6 bytes to data/numbers.txt")
    assert results[1] == ("run_code", False, "exit code 0\n--- stdout ---\n6")
    for name, is_error, content in results[2:4]:
        assert is_error and "leads outside /workspace: the file tools see only /workspace" in content, (
            name,
            content,
        )
    assert results[4] == ("list_files", False, "data/numbers.txt  (6 bytes)")
    assert results[5] == ("read_file", False, "1\n2\n3\n")
    assert (workspace / "data" / "numbers.txt").read_text() == "1\n2\n3\n"
    assert not (workspace / "escape" / "planted").exists()


def test_a_reader_sees_the_workspace_but_cannot_write_it(sandbox, sandbox_image, tmp_path):
    workspace = create_workspace(tmp_path, "llm-reader")
    (workspace / "notes.md").write_text("# Notes\n")
    script = (
        tool_call("run_code", language="shell", source="echo changed > notes.md"),
        tool_call("finish", success=False, summary="The workspace is read-only."),
    )
    brief = TaskBrief(agent="reader", task="look", instruction="Look around.", may_write=False)
    with scripted_server(*script, api_key=KEY) as server:
        result = run(server, brief, sandbox, spec(sandbox_image, workspace, writable=False))
        prompt = server.requests[0].body["messages"][1]["content"]
    assert "notes.md  (8 bytes)" in prompt
    code = [m for m in result.transcript if isinstance(m, ToolMessage) and m.name == "run_code"][0]
    assert code.is_error and "Read-only file system" in code.content
    assert (workspace / "notes.md").read_text() == "# Notes\n"
    assert (result.success, result.ended_by) == (False, "finish")
