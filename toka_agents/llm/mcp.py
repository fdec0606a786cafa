"""MCP servers as an agent's tools, spoken to through the official `mcp` SDK.

A server is a process whose stdin and stdout the SDK's stdio transport speaks to: for
toka-agents, a host process attached to a sandbox container (`Sandbox.process`). At its start:
`initialize`, then `tools/list` once. The tools are pinned for the task: a later
`tools/list_changed` changes nothing (it is logged). Each tool is offered to the model as
`SERVER__TOOL` with its description and input schema; a call goes to the server's `tools/call`,
and the result's text and structured content come back as the tool's result (`isError`: a
tool error the model reads). A server that fails or does not answer within its timeout fails
the call with a named reason, its last line of stderr included.

The SDK is async; `McpServers` runs the sessions in a thread of their own (an anyio blocking
portal), so that the agent loop calls them as plain functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

from toka_agents import text
from toka_agents.errors import TokaError, one_line
from toka_agents.llm.messages import ToolSpec

RESULT_SHOWN = 8_000
"""Characters of a tool's result the model reads (the same bound as `run_code`'s output)."""
DESCRIPTION_SHOWN = 2_000
"""Characters of a tool's description the model is offered."""

logger = logging.getLogger(__name__)


class McpServerError(TokaError):
    """An MCP server could not start, or does not have what the config names."""


@dataclass(frozen=True)
class McpTool:
    """A tool of a server as the model is offered it (`spec`, named `SERVER__TOOL`)."""

    spec: ToolSpec
    server: str
    name: str
    """Its name on its server."""


@dataclass
class _Server:
    name: str
    session: ClientSession
    timeout: float
    stderr: IO[str]

    def last_words(self) -> str:
        return _last_words(self.stderr)


def _last_words(stderr: IO[str]) -> str:
    stderr.seek(0)
    lines = [line for line in stderr.read()[-4000:].splitlines() if line.strip()]
    return f"; its last line of stderr: {text.one_line(lines[-1], 300)}" if lines else ""


def offered_name(server: str, tool: str, taken: Sequence[str]) -> str:
    """`SERVER__TOOL` as both providers take a tool's name: `[A-Za-z0-9_-]`, 64 at most, and
    unique among `taken` (a number added when the cut made two the same)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")[:64]
    number = 2
    while name in taken:
        suffix = f"_{number}"
        name = name[: 64 - len(suffix)] + suffix
        number += 1
    return name


class McpServers:
    """The MCP servers of one task, started with `start` and all stopped when the block ends."""

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None
        self._servers: dict[str, _Server] = {}
        self.tools: dict[str, McpTool] = {}
        """The tools offered, by the name the model calls them."""

    def __enter__(self) -> McpServers:
        self._portal = self._stack.enter_context(start_blocking_portal())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._stack.close()
        except Exception as exc:  # a server that died takes its transport with it
            logger.warning("stopping MCP servers: %s", one_line(exc))

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        timeout: float,
        allowed: Sequence[str] | None = None,
    ) -> list[McpTool]:
        """Start server `name` (the process `argv`), list its tools once and offer them (only
        `allowed`, when given); return them. Raises `McpServerError` in one line."""
        portal = self._portal
        assert portal is not None, "start inside the `with` block"
        stderr = self._stack.enter_context(tempfile.TemporaryFile("w+"))  # noqa: SIM115
        params = StdioServerParameters(command=argv[0], args=list(argv[1:]), env=dict(env))
        try:
            read, write = self._stack.enter_context(
                portal.wrap_async_context_manager(stdio_client(params, errlog=stderr))
            )
            session = self._stack.enter_context(
                portal.wrap_async_context_manager(
                    ClientSession(
                        read,
                        write,
                        read_timeout_seconds=timeout,
                        message_handler=functools.partial(_notice, name),
                    )
                )
            )
            server = self._servers[name] = _Server(name, session, timeout, stderr)
            portal.call(session.initialize)
            listed = portal.call(session.list_tools)
        except Exception as exc:
            said = f"{_reason(exc, timeout)}{_last_words(stderr)}"
            raise McpServerError(f"mcp server {name!r} did not start: {said}") from None
        return self._offer(server, listed.tools, allowed)

    def _offer(
        self, server: _Server, tools: Sequence[types.Tool], allowed: Sequence[str] | None
    ) -> list[McpTool]:
        by_name = {tool.name: tool for tool in tools}
        missing = [name for name in allowed or () if name not in by_name]
        if missing:
            have = ", ".join(sorted(by_name)) or "none"
            raise McpServerError(
                f"mcp server {server.name!r} has no tool {', '.join(map(repr, missing))} "
                f"(mcp_servers.tools); its tools: {have}"
            )
        offered = []
        for tool in tools:
            if allowed is not None and tool.name not in allowed:
                continue
            name = offered_name(server.name, tool.name, list(self.tools))
            description = (tool.description or tool.title or tool.name)[:DESCRIPTION_SHOWN]
            schema = dict(tool.input_schema or {}) or {"type": "object", "properties": {}}
            try:
                spec = ToolSpec(name=name, description=description, parameters=schema)
            except ValueError as exc:
                raise McpServerError(
                    f"mcp server {server.name!r} offers tool {tool.name!r} with an input schema "
                    f"that is not one: {one_line(exc)}"
                ) from None
            self.tools[name] = McpTool(spec, server.name, tool.name)
            offered.append(self.tools[name])
        return offered

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Call the offered tool `name`; return what the model reads and whether it is an
        error. A failed or silent server is an error too, named."""
        tool = self.tools[name]
        server = self._servers[tool.server]
        assert self._portal is not None
        try:
            result = self._portal.call(functools.partial(server.session.call_tool, tool.name, arguments))
        except Exception as exc:
            return (
                f"mcp server {server.name!r}: {_reason(exc, server.timeout)}{server.last_words()}",
                True,
            )
        if not isinstance(result, types.CallToolResult):
            return (
                f"mcp server {server.name!r} answered {type(result).__name__}, not a tool result",
                True,
            )
        return shown_result(result), result.is_error


def shown_result(result: types.CallToolResult) -> str:
    """A tool result as the model reads it: its text, then its structured content as JSON
    when the text does not already say it, cut at `RESULT_SHOWN`."""
    parts = []
    for block in result.content:
        if isinstance(block, types.TextContent):
            parts.append(block.text)
        else:
            parts.append(f"[{block.type} content: not shown]")
    said = "\n".join(parts)
    if result.structured_content is not None:
        structured = json.dumps(result.structured_content, ensure_ascii=False)
        if not _says(said, result.structured_content):
            said = f"{said}\nstructured content: {structured}" if said else structured
    if len(said) > RESULT_SHOWN:
        said = said[:RESULT_SHOWN] + f"\n... (cut: {len(said) - RESULT_SHOWN:,} more characters)"
    return said


def _says(said: str, structured: Any) -> bool:
    """Whether the text already says the structured content: the same JSON, or the value a
    server wrapped as `{"result": value}`."""
    try:
        parsed = json.loads(said)
    except ValueError:
        parsed = said
    wrapped = structured.get("result") if isinstance(structured, dict) and len(structured) == 1 else None
    return parsed == structured or (wrapped is not None and wrapped in (parsed, said))


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    said = one_line(exc)
    if isinstance(exc, TimeoutError) or "timed out" in said.lower():
        return f"did not answer within {timeout:g}s"
    return said or type(exc).__name__


async def _notice(server: str, message: Any) -> None:
    if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
        logger.warning(
            "mcp server %r says its tools changed: the task keeps the tools it was offered", server
        )
