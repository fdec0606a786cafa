"""MCP servers as agent tools: a real reference server from the package index
(`mcp-server-time`), installed into an image by `toka sandbox build --mcp`, runs in the agent's
sandbox; the model calls its tools through the official `mcp` SDK, driven by the scripted LLM
server on 127.0.0.1. Real Prefect server, real Docker engine."""

from __future__ import annotations

import json
import uuid

import pytest
from conftest import EXAMPLES, REPO, run_toka
from llm_server import scripted_server, tool_call
from test_flows import artifacts, task_runs
from test_llm_runs import llm_config, model_from_environment, prompts

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

REPO_README = REPO / "README.md"


def clock_agent(image: str, tools: str = "") -> str:
    return f"""
- name: clock
  mcp_servers:
    - name: time
      image: {image}
      command: [python3, -m, mcp_server_time, --local-timezone, UTC]{tools}
  tasks: [{{name: tell, instruction: Say what time it is in Berlin.}}]
"""


def test_an_agent_calls_a_real_mcp_server_in_its_sandbox(tmp_path, workspace_root, api_key, time_image):
    script = (
        tool_call("time__get_current_time", timezone="Europe/Berlin"),
        tool_call("time__get_current_time", timezone="Nowhere/Bad"),
        tool_call("finish", success=True, summary="It is late in Berlin."),
    )
    name = f"mcp-time-{uuid.uuid4().hex[:8]}"
    with scripted_server(*script, api_key=api_key) as server:
        result = run(
            llm_config(tmp_path, server, clock_agent(time_image), name=name),
            workspace_root=workspace_root,
        )
        sent = prompts(server)
        offered = [t["function"]["name"] for t in server.requests[0].body["tools"]]
    assert result.ok, result.state.message
    assert "time__get_current_time" in offered and "time__convert_time" in offered
    # The server's answer, and its error, are the tools' results the model reads.
    first = [m for m in sent[1] if m.get("role") == "tool"][-1]
    answer = json.loads(first["content"])
    assert answer["timezone"] == "Europe/Berlin" and answer["datetime"][-6:] in ("+01:00", "+02:00")
    second = [m for m in sent[2] if m.get("role") == "tool"][-1]
    assert "Invalid timezone" in second["content"]
    # Each call is a task run of its own; the tools offered are on record.
    names = {r.name for r in task_runs(result.flow_run_id).values()}
    assert {"clock/tell · time__get_current_time 1", "clock/tell · time__get_current_time 2"} <= names
    [record] = [a for a in artifacts(result.flow_run_id) if a.key == "clock-tell-tools"]
    assert "## time\\_\\_get\\_current\\_time" in record.data and '"timezone"' in record.data


def test_a_tool_allowlist_naming_a_tool_the_server_lacks_fails_the_task_in_one_line(
    tmp_path, workspace_root, api_key, time_image
):
    with scripted_server(api_key=api_key) as server:
        agents = clock_agent(time_image, "\n      tools: [get_current_time, tell_the_future]")
        result = run(
            llm_config(tmp_path, server, agents, name="mcp-allow"), workspace_root=workspace_root
        )
        assert server.requests == []  # refused before any model call
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == (
        "failed",
        "mcp server 'time' has no tool 'tell_the_future' (mcp_servers.tools); its tools: "
        "convert_time, get_current_time",
    )


def test_a_server_that_cannot_start_fails_the_task_naming_why(
    tmp_path, workspace_root, api_key, time_image
):
    broken = clock_agent(time_image).replace("mcp_server_time", "no_such_module")
    with scripted_server(api_key=api_key) as server:
        result = run(
            llm_config(tmp_path, server, broken, name="mcp-broken"), workspace_root=workspace_root
        )
    [outcome] = result.outcomes
    assert outcome.status == "failed"
    assert outcome.message.startswith("mcp server 'time' did not start: ")
    assert "No module named no_such_module" in outcome.message


def test_toka_sandbox_build_mcp_refuses_what_is_not_a_requirement():
    built = run_toka("sandbox", "build", "--mcp", "not a req!!")
    assert (built.returncode, built.stderr.strip()) == (
        1,
        "error: 'not a req!!' is not a package to install: Expected semicolon (after name with "
        "no version specifier) or end",
    )


def test_toka_sandbox_build_deb_refuses_what_is_not_a_debian_package_and_goes_with_mcp():
    built = run_toka("sandbox", "build", "--mcp", "mcp-server-git", "--deb", "git;rm -rf /")
    assert (built.returncode, built.stderr.strip()) == (
        1,
        "error: 'git;rm -rf /' is not a Debian package name",
    )
    alone = run_toka("sandbox", "build", "--deb", "git")
    assert (alone.returncode, alone.stderr.strip()) == (1, "error: --deb goes with --mcp")


PROBE_SERVER = '''
import os
import pathlib

from mcp.server.mcpserver import MCPServer

server = MCPServer("probe")


@server.tool()
def interfaces() -> str:
    """The network interfaces this process sees."""
    return " ".join(sorted(os.listdir("/sys/class/net")))


@server.tool()
def whoami() -> str:
    """The user and group this process runs as."""
    return f"{os.getuid()}:{os.getgid()}"


@server.tool()
def exists(path: str) -> str:
    """Whether a path exists, as this process sees it."""
    return str(pathlib.Path(path).exists())


server.run()
'''


def test_a_servers_process_is_contained_as_the_agents_code_is(
    tmp_path, workspace_root, api_key, time_image, monkeypatch
):
    """Seen from inside, by a server of the test's own (built with the `mcp` SDK the image has):
    no network but `lo` for an agent without a network capability, not root, no host files."""
    seed = tmp_path / "seed"
    seed.mkdir()
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))
    (seed / "probe_server.py").write_text(PROBE_SERVER)
    agents = f"""
- name: prober
  mcp_servers:
    - {{name: probe, image: {time_image}, command: [python3, /workspace/probe_server.py]}}
  tasks: [{{name: look, instruction: Look around.}}]
"""
    script = (
        tool_call("probe__interfaces"),
        tool_call("probe__whoami"),
        tool_call("probe__exists", path=str(REPO_README)),
        tool_call("finish", success=True, summary="Looked."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, agents, name="mcp-probe")
        config.write_text(
            config.read_text().replace("agents:", f"workspace: {{from: {seed}}}\nagents:", 1)
        )
        result = run(config, workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    said = [[m for m in request if m.get("role") == "tool"][-1]["content"] for request in sent[1:]]
    assert said[0] == "lo"
    uid, gid = said[1].split(":")
    assert int(uid) >= 1000 and int(gid) >= 1000
    assert said[2] == "False"  # the host's files are not there


def test_the_world_clock_example_asks_its_time_server(workspace_root, api_key, monkeypatch, time_image):
    zones = ("Europe/Berlin", "America/New_York", "Asia/Tokyo")
    script = (
        *(tool_call("time__get_current_time", timezone=zone) for zone in zones),
        tool_call("write_file", path="times.md", content="Berlin: 10:00\n"),
        tool_call("finish", success=True, summary="Three times told."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        model_from_environment(monkeypatch, server, api_key)
        result = run(EXAMPLES / "world-clock.yaml", workspace_root=workspace_root)
        sent = prompts(server)
    assert time_image == "toka-mcp-server-time:1"  # the example's image, as README builds it
    assert result.ok, result.state.message
    results = [m["content"] for m in sent[-1] if m.get("role") == "tool"]
    told = [json.loads(content)["timezone"] for content in results[:3]]
    assert told == list(zones)
