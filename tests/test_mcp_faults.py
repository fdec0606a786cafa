"""MCP stdio servers that fail: a server whose process dies is started again once for the next
call (its tools stay the task's), a second death leaves it down with a named reason; a server
that floods its stdout with a line that never ends, or writes what is not JSON-RPC, is cut off
with a named reason while the runner's memory stays bounded. Servers of the test's own (built
with the `mcp` SDK the MCP image has) in the agent's sandbox, driven by the scripted LLM server;
real Prefect server, real Docker engine."""

from __future__ import annotations

import contextlib
import functools
import threading
import tracemalloc

import pytest
from llm_server import scripted_server, tool_call
from own_runs import TEST_LABEL, THIS_SESSION
from support import MB, sandbox_spec
from test_llm_runs import llm_config, prompts

from toka_agents import run
from toka_agents.errors import McpServerError
from toka_agents.llm.mcp import McpServers
from toka_agents.sandbox import Sandbox, create_workspace

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

STARTS = """
import os
import pathlib
import sys

from mcp.server.mcpserver import MCPServer

state = pathlib.Path("/workspace/{name}-starts")
with state.open("a") as record:
    record.write("start\\n")
STARTS = state.read_text().count("start")
server = MCPServer("{name}")
"""

CRASHY_SERVER = (
    STARTS.format(name="crashy")
    + '''

@server.tool()
def work() -> str:
    """Does its work; its first process dies on its first call."""
    if STARTS == 1:
        sys.stderr.write("crashing on purpose\\n")
        sys.stderr.flush()
        os._exit(3)
    return f"worked, in process {STARTS}"


if STARTS == 1:

    @server.tool()
    def gone() -> str:
        """Only its first process has this tool."""
        return "here"


server.run()
'''
)

DOOMED_SERVER = (
    STARTS.format(name="doomed")
    + '''

@server.tool()
def work() -> str:
    """Dies, every time."""
    sys.stderr.write(f"dying in process {STARTS}\\n")
    sys.stderr.flush()
    os._exit(4)


server.run()
'''
)

WRITES_ON_THE_WIRE = """
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("{name}")
WIRE = os.dup(1)  # the SDK's server diverts fd 1 to stderr while it serves: a copy of the wire
"""

FLOOD_SERVER = (
    WRITES_ON_THE_WIRE.format(name="flood")
    + '''

@server.tool()
def flood() -> str:
    """Writes 50 MB on its stdout with no newline."""
    chunk = b"x" * (1024 * 1024)
    for _ in range(50):
        os.write(WIRE, chunk)
    return "flooded"


server.run()
'''
)

CHATTY_SERVER = (
    WRITES_ON_THE_WIRE.format(name="chatty")
    + '''

@server.tool()
def chat() -> str:
    """Says hello on its stdout, as no MCP server may."""
    os.write(WIRE, b"hello, this is not JSON\\n")
    return "chatted"


server.run()
'''
)


def run_with_servers(tmp_path, workspace_root, api_key, monkeypatch, image, servers, script):
    """Run one agent with `servers` ({name: source}, run in `image`) in its seeded, writable
    workspace; return the run's result and the tool results the model read, in order."""
    seed = tmp_path / "seed"
    seed.mkdir()
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))
    entries = []
    for name, source in servers.items():
        (seed / f"{name}_server.py").write_text(source)
        entries.append(
            f"    - {{name: {name}, image: {image}, "
            f"command: [python3, /workspace/{name}_server.py], timeout: 60s}}"
        )
    agents = (
        "- name: worker\n  capabilities: [filesystem-write]\n  mcp_servers:\n"
        + "\n".join(entries)
        + "\n  tasks: [{name: work, instruction: Use your tools.}]\n"
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, agents, name=f"mcp-{'-'.join(servers)}")
        config.write_text(
            config.read_text().replace("agents:", f"workspace: {{from: {seed}}}\nagents:", 1)
        )
        result = run(config, workspace_root=workspace_root)
        sent = prompts(server)
    read = [[m for m in request if m.get("role") == "tool"][-1]["content"] for request in sent[1:]]
    return result, read


def test_a_server_that_dies_is_started_again_once_and_a_second_death_leaves_it_down(
    tmp_path, workspace_root, api_key, monkeypatch, time_image
):
    script = (
        tool_call("crashy__work"),  # its first process dies
        tool_call("crashy__gone"),  # started again: the tool is offered still, but gone
        tool_call("crashy__work"),  # the second process works
        tool_call("doomed__work"),  # dies
        tool_call("doomed__work"),  # started again, dies again
        tool_call("doomed__work"),  # stays down
        tool_call("finish", success=True, summary="Survived."),
    )
    servers = {"crashy": CRASHY_SERVER, "doomed": DOOMED_SERVER}
    result, read = run_with_servers(
        tmp_path, workspace_root, api_key, monkeypatch, time_image, servers, script
    )
    assert result.ok, result.state.message
    assert read == [
        "error: mcp server 'crashy' exited with code 3: crashing on purpose",
        "error: mcp server 'crashy' no longer has tool 'gone' (since its restart)",
        "worked, in process 2",
        "error: mcp server 'doomed' exited with code 4: dying in process 1",
        "error: mcp server 'doomed' exited with code 4: dying in process 2",
        "error: mcp server 'doomed' exited with code 4: dying in process 2; it ended once before and is "
        "not started again",
    ]
    assert result.workspace is not None
    assert (result.workspace / "crashy-starts").read_text() == "start\n" * 2
    assert (result.workspace / "doomed-starts").read_text() == "start\n" * 2


def test_a_server_that_floods_or_writes_what_is_not_json_rpc_is_cut_off_naming_why(
    tmp_path, workspace_root, api_key, monkeypatch, time_image
):
    script = (
        tool_call("flood__flood"),
        tool_call("chatty__chat"),
        tool_call("finish", success=True, summary="Cut off."),
    )
    servers = {"flood": FLOOD_SERVER, "chatty": CHATTY_SERVER}
    result, read = run_with_servers(
        tmp_path, workspace_root, api_key, monkeypatch, time_image, servers, script
    )
    assert result.ok, result.state.message
    assert read == [
        "error: mcp server 'flood' wrote a line over 4 MiB: cut off",
        "error: mcp server 'chatty' wrote something that is not JSON-RPC: hello, this is not JSON",
    ]


def test_a_flood_of_50_mb_keeps_the_runners_memory_bounded(docker_client, time_image, tmp_path):
    """The host side of a server that writes 50 MB with no newline holds at most its line bound
    (4 MiB) of it: Python's allocations (every thread's) peak well under 64 MB."""
    workspace = create_workspace(tmp_path, "flood")
    (workspace / "flood_server.py").write_text(FLOOD_SERVER)
    spec = sandbox_spec(image=time_image, workspace=workspace, memory=256 * MB, timeout=60)
    command = ["python3", "/workspace/flood_server.py"]
    with Sandbox(docker_client, {TEST_LABEL: THIS_SESSION}) as sandbox, McpServers() as servers:
        launch = functools.partial(
            sandbox.process, spec.model_copy(update={"name": "toka-mcp-flood"}), command
        )
        servers.start("flood", launch, timeout=60)
        tracemalloc.start()
        try:
            said, failed = servers.call("flood__flood", {})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 64 * MB, f"the runner's allocations peaked at {peak / MB:.0f} MB"
    assert (said, failed) == ("mcp server 'flood' wrote a line over 4 MiB: cut off", True)


PLAIN_SERVER = r"""
import json
import sys


def send(message):
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def answer(ident, result):
    send({{"jsonrpc": "2.0", "id": ident, "result": result}})


with open("/workspace/{name}-starts", "a") as starts:
    starts.write("start\n")
TOOLS = {tools}
for line in sys.stdin:
    request = json.loads(line)
    method, ident = request.get("method"), request.get("id")
    if method == "initialize":
        info = {{"name": "{name}", "version": "1"}}
        version = request["params"]["protocolVersion"]
        answer(ident, {{"protocolVersion": version, "capabilities": {{"tools": {{}}}}, "serverInfo": info}})
    elif method == "tools/list":
        answer(ident, {{"tools": TOOLS}})
    elif method == "tools/call":
{on_call}
"""
"""An MCP server in plain Python (no SDK), named `name`, with `tools` (a Python expression) and
`on_call`, the body that answers `tools/call` (indented 8 spaces), for a server that breaks
the protocol as the SDK's servers cannot; it counts its starts in the workspace."""

ONE_TOOL = '[{"name": "work", "inputSchema": {"type": "object"}}]'

PINGER_SERVER = PLAIN_SERVER.format(
    name="pinger",
    tools=ONE_TOOL,
    on_call="""\
        number = 0
        while True:  # asks the host and asks again, and never reads an answer
            number += 1
            send({"jsonrpc": "2.0", "id": 10**6 + number, "method": "ping"})""",
)

FICKLE_SERVER = PLAIN_SERVER.format(
    name="fickle",
    tools=ONE_TOOL,
    on_call="""\
        for _ in range(2000):
            send({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
        answer(ident, {"content": [{"type": "text", "text": "worked"}]})""",
)

CROWDED_SERVER = PLAIN_SERVER.format(
    name="crowded",
    tools='[{"name": "x" * 80 + str(i), "inputSchema": {"type": "object"}} for i in range(2500)]',
    on_call="        pass",
)


@contextlib.contextmanager
def plain_server(docker_client, tmp_path, name: str, source: str):
    """The sandbox, servers and launch of the plain server `name`, and its workspace; the test
    starts it."""
    workspace = create_workspace(tmp_path, name)
    (workspace / f"{name}_server.py").write_text(source)
    spec = sandbox_spec(workspace=workspace, timeout=60)
    command = ["python3", f"/workspace/{name}_server.py"]
    with Sandbox(docker_client, {TEST_LABEL: THIS_SESSION}) as sandbox, McpServers() as servers:
        launch = functools.partial(
            sandbox.process, spec.model_copy(update={"name": f"toka-mcp-{name}"}), command
        )
        yield sandbox, servers, launch, workspace


def test_a_hung_server_fails_the_call_in_time_and_is_started_again_once(
    docker_client, sandbox_image, tmp_path
):
    """A server that floods the host with requests of its own and never reads stdin: the host's
    answers fill the pipe to it. Each call still ends at the server's timeout, named (a
    hostile probe's second call had waited forever); the next call starts it again, once, as
    for a server that died."""
    said: list[tuple[str, bool]] = []
    with plain_server(docker_client, tmp_path, "pinger", PINGER_SERVER) as started:
        sandbox, servers, launch, workspace = started
        servers.start("pinger", launch, timeout=3)

        def calls() -> None:
            said.extend(servers.call("pinger__work", {}) for _ in range(3))

        caller = threading.Thread(target=calls, daemon=True)
        caller.start()
        caller.join(60)  # a broken version waits forever
        alive = caller.is_alive()
        if alive:
            sandbox.cancel()  # what freed the probe's call: the test's containers go
    assert not alive, f"the calls had not ended after 60 s: {said}"
    assert said == [
        ("mcp server 'pinger': did not answer within 3s", True),
        ("mcp server 'pinger': did not answer within 3s", True),
        (
            "mcp server 'pinger' did not answer within 3s and was stopped; it ended once before "
            "and is not started again",
            True,
        ),
    ]
    assert (workspace / "pinger-starts").read_text() == "start\n" * 2


def test_a_changed_tool_list_changes_nothing_and_is_logged_once(docker_client, tmp_path, caplog):
    with plain_server(docker_client, tmp_path, "fickle", FICKLE_SERVER) as (_, servers, launch, _):
        [offered] = servers.start("fickle", launch, timeout=30)
        first = servers.call("fickle__work", {})
        second = servers.call("fickle__work", {})
        assert list(servers.tools) == ["fickle__work"] and servers.tools["fickle__work"] == offered
    assert first == second == ("worked", False)
    changed = [r.getMessage() for r in caplog.records if "says its tools changed" in r.getMessage()]
    assert changed == [
        "mcp server 'fickle' says its tools changed: the task keeps the tools it was offered "
        "(its further notices are not logged)"
    ]


def test_a_server_that_offers_too_many_tools_is_refused_at_its_start(docker_client, tmp_path):
    with plain_server(docker_client, tmp_path, "crowded", CROWDED_SERVER) as (_, servers, launch, _):
        with pytest.raises(McpServerError) as refused:
            servers.start("crowded", launch, timeout=30)
        assert servers.tools == {}
    assert str(refused.value) == (
        "mcp server 'crowded' offers 2500 tools, and a task may be offered 100 of all its servers' "
        "(0 so far): list the ones the agent needs in its entry's `tools`"
    )
