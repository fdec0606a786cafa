"""An LLM task's MCP servers (`mcp_servers:`): each a process in a sandbox container of its own,
with the task's limits, capabilities, network and workspace, spoken to through `llm.mcp`.

They start when the task's loop starts and are stopped (their containers removed) when it
ends, however it ends; a cancel of the run kills them with the run's other containers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from toka_agents.config.mcp import McpServer
from toka_agents.llm.mcp import McpServers
from toka_agents.sandbox import Sandbox, SandboxSpec


@contextlib.contextmanager
def task_servers(
    sandbox: Sandbox, spec: SandboxSpec, servers: Sequence[McpServer]
) -> Iterator[McpServers | None]:
    """The started `servers`, their containers made from `spec` (the task's tool containers');
    None when there are none. Raises `McpServerError` or `SandboxError` in one line."""
    if not servers:
        yield None
        return
    with contextlib.ExitStack() as containers:
        attached = [
            containers.enter_context(sandbox.process(server_spec(spec, server), list(server.command)))
            for server in servers
        ]
        with McpServers() as started:  # ends before the containers go: the servers stop first
            for server, process in zip(servers, attached, strict=True):
                started.start(
                    server.name,
                    process.argv,
                    process.env,
                    timeout=server.timeout,
                    allowed=server.tools,
                )
            yield started


def server_spec(spec: SandboxSpec, server: McpServer) -> SandboxSpec:
    """The container of `server`: the task's, in the server's image, with its env added."""
    return spec.model_copy(
        update={
            "image": server.image or spec.image,
            "env": {**spec.env, **server.env},
            "name": f"toka-mcp-{server.name}",
        }
    )
