"""MCP servers as an agent's tools, spoken to through the official `mcp` SDK.

A server is either a process whose stdin and stdout toka-agents' bounded stdio transport
(`mcp_stdio`) speaks to: for toka-agents, a host process attached to a sandbox container
(`Sandbox.process`); or an HTTP endpoint the SDK's streamable HTTP client speaks to, from the
runner. At its start: `initialize`, then `tools/list` once. The tools are pinned for the task:
a later `tools/list_changed` changes nothing (it is logged). Each tool is offered to the model
as `SERVER__TOOL` with its description and input schema; a call goes to the server's
`tools/call`, and the result's text and structured content come back as the tool's result
(`isError`: a tool error the model reads). A server that fails or does not answer within its
timeout fails the call with a named reason, its last line of stderr included.

A stdio server whose process ended (it exited, or was cut off for what it wrote) fails the
call that saw it, and the next call starts it again, once: a new process (container), then
`initialize` and `tools/list`; the task keeps the tools it was offered (a changed list is
logged) and calls only those the new process still has. After a second end it stays down.
An HTTP server whose session does not answer a ping after a failed call (its connection
dropped, or it restarted and forgot the session) is connected to again for the next call, in
the same way, once.

The SDK is async; `McpServers` runs the sessions in a thread of their own (an anyio blocking
portal), so that the agent loop calls them as plain functions.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Container, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio
import httpx2
from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import ClientSession, types
from mcp.client.streamable_http import streamable_http_client

from toka_agents.errors import McpServerError, one_line
from toka_agents.llm.mcp_stdio import StdioConnection, bounded_stdio
from toka_agents.llm.messages import ToolSpec

RESULT_SHOWN = 8_000
"""Characters of a tool's result the model reads (the same bound as `run_code`'s output)."""
DESCRIPTION_SHOWN = 2_000
"""Characters of a tool's description the model is offered."""
TOOLS_OFFERED = 100
"""MCP tools one task may be offered, all its servers together: with the built-in tools, under
the 128 that OpenAI's API takes in one request (and a bound on what a server's list costs)."""
EXIT_WAIT = 5.0
"""Seconds a server whose output ended has to exit before its call's reason is given without
its exit code."""
ANSWER_GRACE = 1.0
"""Seconds past a server's timeout a request may take in all, its sending included: a server
that never reads its stdin blocks the sending, which the SDK's read timeout does not bound."""

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Process(Protocol):
    """A host process to start (`argv`, with `env`) whose stdin and stdout are a server's."""

    @property
    def argv(self) -> Sequence[str]: ...
    @property
    def env(self) -> Mapping[str, str]: ...
    def out_of_memory(self) -> bool:
        """Whether the memory limit killed it (asked once it has ended)."""
        ...


Launch = Callable[[], contextlib.AbstractContextManager[Process]]
"""Makes a stdio server's process (a container, for toka-agents) for as long as its block
lasts; called again for a restart."""


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
    timeout: float
    launch: Launch | None
    """How its process starts; None for an HTTP server."""
    url: str | None = None
    """Where an HTTP server is, and the headers it is sent."""
    headers: Mapping[str, str] = field(default_factory=dict)
    lost: str | None = None
    """Why an HTTP server's session did not answer a ping after its last call failed: the next
    call connects again."""
    hung: str | None = None
    """Why a stdio server is taken for hung (a call it did not answer in time): the next call
    starts it again."""
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    session: ClientSession | None = None
    connection: StdioConnection | None = None
    listed: frozenset[str] = frozenset()
    """The tools its current process has."""
    restarts: int = 0
    changes: int = 0
    """The `tools/list_changed` notices it sent (the first is logged)."""
    down: str | None = None
    """Why it stays out of service, once it does."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def last_words(self) -> str:
        said = self.connection.last_line() if self.connection is not None else ""
        return f"; its last line of stderr: {said}" if said else ""


def offered_name(server: str, tool: str, taken: Container[str]) -> str:
    """`SERVER__TOOL` as both providers take a tool's name: `[A-Za-z0-9_-]`, 64 at most, and
    unique among `taken` (a number added when the cut made two the same)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"{server}__{tool}")[:64]
    number = 2
    while name in taken:
        suffix = f"_{number}"
        name = name[: 64 - len(suffix)] + suffix
        number += 1
    return name


def _answer(portal: BlockingPortal, request: Callable[[], Awaitable[T]], timeout: float) -> T:
    """`request`'s answer, through `portal`; `TimeoutError` when it takes over `timeout` (and
    `ANSWER_GRACE`) in all."""

    async def bounded() -> T:
        with anyio.fail_after(timeout + ANSWER_GRACE):
            return await request()

    return portal.call(bounded)


class McpServers:
    """The MCP servers of one task, started with `start` or `start_http` and all stopped when
    the block ends."""

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
        for server in reversed(self._servers.values()):
            _close(server, quietly=server.lost is not None)  # a lost session's transport fails
        try:
            self._stack.close()
        except Exception as exc:
            logger.warning("stopping MCP servers: %s", one_line(exc))

    def start(
        self, name: str, launch: Launch, *, timeout: float, allowed: Sequence[str] | None = None
    ) -> list[McpTool]:
        """Start the stdio server `name` (the process `launch` makes), list its tools once and
        offer them (only `allowed`, when given); return them. Raises `McpServerError` in one
        line (and `launch`'s own errors)."""
        server = self._servers[name] = _Server(name, timeout, launch)
        listed = self._open(server)
        return self._offer(server, listed, allowed)

    def start_http(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        *,
        timeout: float,
        allowed: Sequence[str] | None = None,
    ) -> list[McpTool]:
        """Connect to the HTTP server `name` at `url` (streamable HTTP, sending `headers`,
        whose values are never shown), list its tools once and offer them (only `allowed`,
        when given); return them. Raises `McpServerError` in one line."""
        server = self._servers[name] = _Server(name, timeout, None, url, headers)
        return self._offer(server, self._connect(server), allowed)

    def _connect(self, server: _Server) -> list[types.Tool]:
        """Open an HTTP server's session; its tools. Raises `McpServerError`."""
        portal = self._portal
        assert portal is not None and server.url is not None, "start inside the `with` block"
        server.stack, server.lost = contextlib.ExitStack(), None
        client = httpx2.AsyncClient(headers=dict(server.headers), timeout=httpx2.Timeout(server.timeout))
        try:
            stack = server.stack
            stack.enter_context(portal.wrap_async_context_manager(client))
            read, write = stack.enter_context(
                portal.wrap_async_context_manager(streamable_http_client(server.url, http_client=client))
            )
            return self._initialize(server, read, write)
        except Exception as exc:
            # The transport's own failure (a refused connection, say) comes out as it closes.
            said = _close(server, quietly=True) or _reason(exc, server.timeout)
            raise McpServerError(
                f"mcp server {server.name!r} did not start at {server.url}: {said}"
            ) from None

    def _open(self, server: _Server) -> list[types.Tool]:
        """Start a stdio server's process and session; its tools. Raises `McpServerError`."""
        portal = self._portal
        assert portal is not None and server.launch is not None, "start inside the `with` block"
        server.stack, server.hung = contextlib.ExitStack(), None
        server.connection = connection = StdioConnection(server.name)
        process = server.stack.enter_context(server.launch())
        connection.out_of_memory = process.out_of_memory
        try:
            read, write = server.stack.enter_context(
                portal.wrap_async_context_manager(bounded_stdio(connection, process.argv, process.env))
            )
            return self._initialize(server, read, write)
        except Exception as exc:
            ended = portal.call(connection.ended, 2.0)
            said = ended or f"{_reason(exc, server.timeout)}{server.last_words()}"
            _close(server, quietly=True)
            raise McpServerError(f"mcp server {server.name!r} did not start: {said}") from None

    def _initialize(self, server: _Server, read: Any, write: Any) -> list[types.Tool]:
        portal = self._portal
        assert portal is not None
        session = server.stack.enter_context(
            portal.wrap_async_context_manager(
                ClientSession(
                    read,
                    write,
                    read_timeout_seconds=server.timeout,
                    message_handler=functools.partial(_notice, server),
                )
            )
        )
        _answer(portal, session.initialize, server.timeout)
        tools = _answer(portal, session.list_tools, server.timeout).tools
        server.session, server.listed = session, frozenset(tool.name for tool in tools)
        return tools

    def _offer(
        self, server: _Server, tools: Sequence[types.Tool], allowed: Sequence[str] | None
    ) -> list[McpTool]:
        by_name = {tool.name: tool for tool in tools}
        missing = [name for name in allowed or () if name not in by_name]
        if missing:
            names = sorted(by_name)
            have = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
            raise McpServerError(
                f"mcp server {server.name!r} has no tool {', '.join(map(repr, missing))} "
                f"(mcp_servers.tools); its tools: {have or 'none'}"
            )
        chosen = [tool for tool in tools if allowed is None or tool.name in allowed]
        if len(self.tools) + len(chosen) > TOOLS_OFFERED:
            raise McpServerError(
                f"mcp server {server.name!r} offers {len(chosen)} tools, and a task may be offered "
                f"{TOOLS_OFFERED} of all its servers' ({len(self.tools)} so far): list the ones "
                "the agent needs in its entry's `tools`"
            )
        offered = []
        for tool in chosen:
            name = offered_name(server.name, tool.name, self.tools)
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
        error. A failed, silent or ended server is an error too, named; an ended stdio
        server is started again for the call after the one that saw it end, once, and an HTTP
        server whose session was lost is connected to again, once."""
        tool = self.tools[name]
        server = self._servers[tool.server]
        portal = self._portal
        assert portal is not None
        refused = self._ready(server, tool)
        if refused is not None:
            return refused, True
        assert server.session is not None
        try:
            call = functools.partial(server.session.call_tool, tool.name, arguments)
            result = _answer(portal, call, server.timeout)
        except Exception as exc:
            ended = portal.call(server.connection.ended, EXIT_WAIT) if server.connection else None
            if ended is not None:
                return f"mcp server {server.name!r} {ended}", True
            said = _reason(exc, server.timeout)
            if server.url is None and said.startswith("did not answer"):
                server.hung = f"{said} and was stopped"
            elif server.url is not None and not said.startswith("did not answer"):
                server.lost = self._unanswered_ping(server)
            return f"mcp server {server.name!r}: {said}{server.last_words()}", True
        if not isinstance(result, types.CallToolResult):
            return (
                f"mcp server {server.name!r} answered {type(result).__name__}, not a tool result",
                True,
            )
        return shown_result(result), result.is_error

    def _unanswered_ping(self, server: _Server) -> str | None:
        """Why an HTTP server's session does not answer a ping (its connection dropped, or the
        server forgot it: restarted), or None when it does: the failed call was the server's
        answer, and the session goes on."""
        assert self._portal is not None and server.session is not None
        try:
            _answer(self._portal, server.session.send_ping, server.timeout)
        except Exception as exc:
            return _reason(exc, server.timeout)
        return None

    def _ended(self, server: _Server) -> str | None:
        """Why a stdio server's process ended (or it is taken for hung), or an HTTP server's
        session was lost; None while it serves."""
        if server.connection is not None:
            assert self._portal is not None
            return self._portal.call(server.connection.ended, 0) or server.hung
        return None if server.lost is None else f"lost its session: {server.lost}"

    def _ready(self, server: _Server, tool: McpTool) -> str | None:
        """None when `server` may take a call of `tool`, restarting it (or connecting to it
        again) once if it ended; else why not."""
        with server.lock:
            if server.down is None:
                ended = self._ended(server)
                if ended is not None and server.restarts:
                    again = "started" if server.url is None else "connected to"
                    server.down = (
                        f"mcp server {server.name!r} {ended}; it ended once before and is not "
                        f"{again} again"
                    )
                elif ended is not None:
                    server.restarts += 1
                    self._restart(server, ended)
            if server.down is not None:
                return server.down
        if tool.name not in server.listed:
            return f"mcp server {server.name!r} no longer has tool {tool.name!r} (since its restart)"
        return None

    def _restart(self, server: _Server, ended: str) -> None:
        again = "starting it" if server.url is None else "connecting to it"
        logger.warning("mcp server %r %s: %s again (once)", server.name, ended, again)
        before = server.listed
        _close(server, quietly=server.url is not None)  # a lost session's transport fails to close
        try:
            opened = self._open(server) if server.url is None else self._connect(server)
            listed = {tool.name for tool in opened}
        except Exception as exc:
            server.down = f"{one_line(exc)} ({again} again after it {ended})"
            return
        if listed != before:
            logger.warning(
                "mcp server %r lists other tools since its restart (%s): the task keeps the tools "
                "it was offered and calls only those it still has",
                server.name,
                ", ".join(sorted(listed)) or "none",
            )


def _close(server: _Server, *, quietly: bool = False) -> str | None:
    """End a server's session, transport and process (its container), whatever state it is in;
    return why that failed (logged, unless `quietly`), if it did."""
    stack, server.stack, server.session = server.stack, contextlib.ExitStack(), None
    try:
        stack.close()
    except Exception as exc:  # a server that died takes its transport with it
        said = _reason(exc, server.timeout)
        if not quietly:
            logger.warning("stopping mcp server %r: %s", server.name, said)
        return said
    return None


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
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    said = one_line(exc)
    if isinstance(exc, TimeoutError) or "timed out" in said.lower():
        return f"did not answer within {timeout:g}s"
    return said or type(exc).__name__


async def _notice(server: _Server, message: Any) -> None:
    if isinstance(getattr(message, "root", message), types.ToolListChangedNotification):
        server.changes += 1
        if server.changes == 1:
            logger.warning(
                "mcp server %r says its tools changed: the task keeps the tools it was offered "
                "(its further notices are not logged)",
                server.name,
            )
