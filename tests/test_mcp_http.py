"""MCP servers over streamable HTTP (`mcp_servers: [{name, url, headers_env}]`): a server of the
test's own, built with the `mcp` SDK's `MCPServer`, runs in a container on a Docker network the
test made, published on 127.0.0.1 only; the runner reaches it only when the agent's
`network_allow` lets its host through, sends the headers `headers_env` names (read from the
environment at the task's start, never shown), and the model calls its tool through the
scripted LLM server. Config refusals in one line. Real Prefect server, real Docker engine."""

from __future__ import annotations

import contextlib
import secrets
import shlex
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from conftest import write_config
from llm_server import scripted_server, tool_call
from own_runs import TEST_LABEL, THIS_SESSION
from support import free_port
from test_flows import artifacts
from test_llm_runs import llm_config, prompts
from test_workspace_escape import flow_run_logs

from toka_agents import run, validate
from toka_agents.llm.mcp import McpServers

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

HTTP_SERVER = '''
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("notes")


@server.tool()
def has_header(name: str, ctx: Context) -> str:
    """Whether the request that called this tool carried the header `name` (never its value)."""
    sent = {key.lower() for key in (ctx.headers or {})}
    return "present" if name.lower() in sent else "absent"


@server.tool()
def echo_header(name: str, ctx: Context) -> str:
    """The value of the header `name` (a careless server that shows what it was sent)."""
    return {key.lower(): value for key, value in (ctx.headers or {}).items()}.get(name.lower(), "")


server.run("streamable-http", host="0.0.0.0", port=8000)
'''
TOKEN_ENV = "TOKA_TEST_NOTES_TOKEN"


@dataclass(frozen=True)
class HttpServer:
    port: int
    container: object

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def posts(self) -> int:
        """How many POSTs to its endpoint it has logged (uvicorn's access log)."""
        return self.container.logs().decode(errors="replace").count('"POST /mcp')

    def wait_until_it_answers(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while True:
            try:
                httpx.get(self.url, timeout=2)
                return
            except httpx.HTTPError:
                self.container.reload()
                assert self.container.status == "running", self.container.logs().decode(errors="replace")
                assert time.monotonic() < deadline, (
                    f"the HTTP MCP server did not listen within {within} s"
                )
                time.sleep(0.2)


@contextlib.contextmanager
def served(docker_client, image: str, command: list[str]) -> Iterator[HttpServer]:
    """`command` (a server on port 8000) in a container of `image` on a network of the test's
    own, published on 127.0.0.1 only, once it answers; both removed afterwards."""
    labels = {TEST_LABEL: THIS_SESSION}
    network = docker_client.networks.create(
        f"toka-test-mcp-http-{secrets.token_hex(4)}", driver="bridge", labels=labels
    )
    container = None
    try:
        port = free_port()
        container = docker_client.containers.run(
            image,
            command,
            detach=True,
            network=network.name,
            ports={"8000/tcp": ("127.0.0.1", port)},
            labels=labels,
            name=f"toka-test-mcp-http-{secrets.token_hex(4)}",
        )
        server = HttpServer(port, container)
        server.wait_until_it_answers()
        yield server
    finally:
        if container is not None:
            container.remove(force=True)
        network.remove()


@pytest.fixture(scope="module")
def http_server(docker_client, time_image) -> Iterator[HttpServer]:
    with served(docker_client, time_image, ["python3", "-c", HTTP_SERVER]) as server:
        yield server


def reader_agent(server: HttpServer, allow: str | None) -> str:
    allowed = f"\n  network_allow: [{allow!r}]" if allow else ""
    return f"""
- name: reader{allowed}
  mcp_servers:
    - name: notes
      url: {server.url}
      headers_env: {{X-Notes-Token: {TOKEN_ENV}}}
  tasks: [{{name: read, instruction: See whether your token reaches the notes server.}}]
"""


def test_an_agent_calls_an_http_mcp_server_its_network_allow_lists_with_headers_from_the_env(
    tmp_path, workspace_root, api_key, monkeypatch, http_server
):
    token = f"notes-token-{secrets.token_hex(8)}"
    monkeypatch.setenv(TOKEN_ENV, token)
    script = (
        tool_call("notes__has_header", name="X-Notes-Token"),
        tool_call("notes__has_header", name="X-Not-Sent"),
        tool_call("notes__echo_header", name="X-Notes-Token"),
        tool_call("finish", success=True, summary="The token arrives."),
    )
    agents = reader_agent(http_server, f"127.0.0.1:{http_server.port}")
    with scripted_server(*script, api_key=api_key) as server:
        result = run(
            llm_config(tmp_path, server, agents, name="mcp-http"), workspace_root=workspace_root
        )
        sent = prompts(server)
        offered = [t["function"]["name"] for t in server.requests[0].body["tools"]]
    assert result.ok, result.state.message
    assert "notes__has_header" in offered
    said = [[m for m in request if m.get("role") == "tool"][-1]["content"] for request in sent[1:]]
    assert said[:2] == ["present", "absent"]
    # The header's value is never shown, even when a server echoes it: not to the model, in the
    # logs, or in the artifacts (the stored step is redacted, as for the API key).
    assert said[2] == "[redacted]"
    assert token not in repr(sent)
    assert not [line for line in flow_run_logs(result.flow_run_id) if token in line]
    assert not [a.key for a in artifacts(result.flow_run_id) if token in str(a.data)]
    [record] = [a for a in artifacts(result.flow_run_id) if a.key == "reader-read-tools"]
    assert "notes\\_\\_has\\_header" in record.data


def test_an_http_server_whose_host_network_allow_does_not_list_fails_the_task_in_one_line(
    tmp_path, workspace_root, api_key, monkeypatch, http_server
):
    monkeypatch.setenv(TOKEN_ENV, "unused")
    before = http_server.posts()
    outcomes = {}
    for allow in (None, "127.0.0.1:1", "localhost"):
        with scripted_server(api_key=api_key) as server:
            agents = reader_agent(http_server, allow)
            config = llm_config(tmp_path, server, agents, name="mcp-http-refused")
            result = run(config, workspace_root=workspace_root)
            assert server.requests == []  # refused before any model call
        [outcome] = result.outcomes
        outcomes[allow] = (outcome.status, outcome.message)
    port = http_server.port
    expected = (
        "failed",
        f"mcp server 'notes' is at 127.0.0.1:{port}, which the agent may not reach: add "
        f"'127.0.0.1' (or '127.0.0.1:{port}') to its network_allow",
    )
    assert outcomes == {None: expected, "127.0.0.1:1": expected, "localhost": expected}
    assert http_server.posts() == before  # never reached


def test_a_header_variable_missing_from_the_environment_fails_the_task_naming_it(
    tmp_path, workspace_root, api_key, monkeypatch, http_server
):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    with scripted_server(api_key=api_key) as server:
        agents = reader_agent(http_server, "127.0.0.1")
        result = run(
            llm_config(tmp_path, server, agents, name="mcp-http-no-token"), workspace_root=workspace_root
        )
        assert server.requests == []
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == (
        "failed",
        f"mcp server 'notes': the environment variable '{TOKEN_ENV}' is not set "
        "(mcp_servers.headers_env)",
    )


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        (
            "{name: n, url: 'ftp://notes.example.com/mcp'}",
            "mcp_servers.0.url: 'ftp://notes.example.com/mcp' is not an MCP server's URL: it must "
            "be http:// or https:// with a host, such as 'https://mcp.example.com/mcp'",
        ),
        (
            "{name: n, url: 'https:///mcp'}",
            "mcp_servers.0.url: 'https:///mcp' is not an MCP server's URL: it must be http:// or "
            "https:// with a host, such as 'https://mcp.example.com/mcp'",
        ),
        (
            "{name: n, url: 'https://me:secret@notes.example.com/mcp'}",
            "mcp_servers.0: an MCP server's URL may not carry credentials: name the variables "
            "that hold them in `headers_env`",
        ),
        (
            "{name: n, url: 'https://notes.example.com/mcp', command: [python3, server.py]}",
            "mcp_servers.0: an MCP server has either `command` (a stdio server in the sandbox) or "
            "`url` (an HTTP server), not both",
        ),
        (
            "{name: n, tools: [a]}",
            "mcp_servers.0: an MCP server has either `command` (a stdio server in the sandbox) or "
            "`url` (an HTTP server), and has neither",
        ),
        (
            "{name: n, url: 'https://notes.example.com/mcp', image: toka-sandbox:1}",
            "mcp_servers.0: `image` is for a stdio server (`command`); a `url` server runs "
            "elsewhere and takes `headers_env`",
        ),
        (
            "{name: n, command: [python3, server.py], headers_env: {Authorization: TOKEN}}",
            "mcp_servers.0: `headers_env` is for an HTTP server (`url`), not a stdio one",
        ),
        (
            "{name: n, url: 'https://notes.example.com/mcp', headers: {Authorization: x}}",
            "mcp_servers.0.headers: unknown key (`toka schema` lists the keys of the format)",
        ),
        (
            "{name: n, url: 'https://notes.example.com/mcp', headers_env: {Authorization: 1-BAD}}",
            "mcp_servers.0.headers_env.Authorization: String should match pattern "
            "'^[A-Za-z_][A-Za-z0-9_]*$' (got '1-BAD')",
        ),
    ],
)
def test_a_bad_mcp_server_entry_is_refused_in_one_line(tmp_path, entry, problem):
    path = write_config(
        tmp_path,
        textwrap.dedent(f"""\
            name: bad-mcp
            mcp_servers:
              - {entry}
            agents:
              - name: a
                tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
            """),
    )
    assert [str(issue) for issue in validate([path]).issues] == [f"{path}: {problem}"]


FLAKY_SERVER = """
import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("flaky")


@server.tool()
def pid() -> str:
    \"\"\"This server process's id.\"\"\"
    return str(os.getpid())


@server.tool()
def quit() -> str:
    \"\"\"End this server process at once (its container starts another, which knows no session).\"\"\"
    os._exit(3)


server.run("streamable-http", host="0.0.0.0", port=8000)
"""


def test_an_http_server_whose_session_is_lost_is_connected_to_again_once(docker_client, time_image):
    """A call that loses the session (the server process ended under it) fails naming why; the
    next call connects again (`initialize`, `tools/list`) and works; after a second loss the
    server stays out of service. Its container runs the server again whenever it ends."""
    loop = f"while true; do python3 -c {shlex.quote(FLAKY_SERVER)}; done"
    with served(docker_client, time_image, ["sh", "-c", loop]) as flaky, McpServers() as servers:
        servers.start_http("flaky", flaky.url, {}, timeout=30)
        first, failed = servers.call("flaky__pid", {})
        assert not failed, first
        lost, failed = servers.call("flaky__quit", {})
        assert failed and lost.startswith("mcp server 'flaky': "), lost
        flaky.wait_until_it_answers()
        second, failed = servers.call("flaky__pid", {})
        assert not failed and second != first, (first, lost, second)
        servers.call("flaky__quit", {})
        flaky.wait_until_it_answers()
        down, failed = servers.call("flaky__pid", {})
    assert failed and down.startswith("mcp server 'flaky' lost its session: "), down
    assert down.endswith("; it ended once before and is not connected to again"), down
