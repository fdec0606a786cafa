"""An LLM task's MCP servers (`mcp_servers:`), spoken to through `llm.mcp`.

A stdio server (`command`) is a process in a sandbox container of its own, with the task's
limits, capabilities, network and workspace; it starts when the task's loop starts (and again,
once, if it ends before the task does) and is stopped, its container removed, when the loop
ends, however it ends; a cancel of the run kills it with the run's other containers.

An HTTP server (`url`) is reached from the runner, and only when the task's `network_allow`
lets its host through (the egress proxy's own matching); its `headers_env` values are read
from the runner's environment at the task's start and never shown.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from toka_agents.config.mcp import McpServer
from toka_agents.errors import McpServerError
from toka_agents.sandbox import Sandbox, SandboxSpec
from toka_agents.sandbox.egress_proxy import allows

if TYPE_CHECKING:
    from toka_agents.llm.mcp import McpServers


@contextlib.contextmanager
def task_servers(
    sandbox: Sandbox,
    spec: SandboxSpec,
    servers: Sequence[McpServer],
    environ: Mapping[str, str] = os.environ,
) -> Iterator[McpServers | None]:
    """The started `servers`, their containers made from `spec` (the task's tool containers');
    None when there are none. Raises `McpServerError` or `SandboxError` in one line."""
    if not servers:
        yield None
        return
    # What an HTTP server needs is checked before anything starts.
    headers = {server.name: http_headers(server, spec, environ) for server in servers if server.url}
    from toka_agents.llm.mcp import McpServers  # the MCP SDK loads only for a task that has servers

    with McpServers() as started:  # each server's container goes when it stops
        for server in servers:
            if server.url is not None:
                started.start_http(
                    server.name,
                    server.url,
                    headers[server.name],
                    timeout=server.timeout,
                    allowed=server.tools,
                )
            else:
                assert server.command is not None
                launch = functools.partial(
                    sandbox.process, server_spec(spec, server), list(server.command)
                )
                started.start(server.name, launch, timeout=server.timeout, allowed=server.tools)
        yield started


def header_values(servers: Sequence[McpServer], environ: Mapping[str, str] = os.environ) -> list[str]:
    """The values `servers`' `headers_env` sends, to redact from what a task keeps (a server
    may echo one in a tool's result)."""
    return [
        environ[variable]
        for server in servers
        for variable in server.headers_env.values()
        if environ.get(variable)
    ]


def http_headers(server: McpServer, spec: SandboxSpec, environ: Mapping[str, str]) -> dict[str, str]:
    """The headers an HTTP server is sent, from `environ`, once its host is one the task may
    reach. Raises `McpServerError` in one line, naming a missing variable, never a value."""
    assert server.url is not None
    parts = urlsplit(server.url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    if spec.network_allow is None or not allows(list(spec.network_allow), host, port):
        raise McpServerError(
            f"mcp server {server.name!r} is at {host}:{port}, which the agent may not reach: "
            f"add {host!r} (or '{host}:{port}') to its network_allow"
        )
    missing = [variable for variable in server.headers_env.values() if variable not in environ]
    if missing:
        raise McpServerError(
            f"mcp server {server.name!r}: the environment variable {missing[0]!r} is not set "
            "(mcp_servers.headers_env)"
        )
    return {header: environ[variable] for header, variable in server.headers_env.items()}


def server_spec(spec: SandboxSpec, server: McpServer) -> SandboxSpec:
    """The container of the stdio `server`: the task's, in the server's image, with its env
    added. Its Python does not import from its working directory, the workspace, where the
    agents' code may have left modules named like the ones a server imports (`json.py`);
    the entry's `env` may say otherwise."""
    return spec.model_copy(
        update={
            "image": server.image or spec.image,
            "env": {**spec.env, "PYTHONSAFEPATH": "1", **server.env},
            "name": f"toka-mcp-{server.name}",
        }
    )
