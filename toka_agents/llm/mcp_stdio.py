"""The stdio transport of toka-agents' MCP servers: a bounded one, in place of the SDK's.

It owns one server process (for toka-agents, a host process attached to a sandbox container)
and turns its stdout into the SDK's `SessionMessage`s, parsed by the SDK's own JSON-RPC model
(`types.jsonrpc_message_adapter`), and the session's messages into lines on its stdin. What it
adds to the SDK's `stdio_client`, which keeps reading a line until its newline comes however
long it grows and hands a line that is not JSON-RPC on as an error the waiting request never
sees:
- a line longer than `MAX_LINE` bytes, or one that is not a JSON-RPC message, cuts the server
  off (its process is killed, the calls waiting on it fail at once) with a named reason;
  memory stays bounded by `MAX_LINE`, whatever the server writes;
- of its stderr only the last `STDERR_KEPT` bytes are kept (its last line names a failure);
- its end is known (`StdioConnection.ended`): cut off, or exited with the process's code
  (`docker start --attach` exits with the container's).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import anyio
from anyio.abc import ByteReceiveStream, Process
from anyio.streams.memory import MemoryObjectSendStream
from mcp import types
from mcp.client._transport import TransportStreams
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from toka_agents import text

MAX_LINE = 4 * 1024 * 1024
"""Bytes of one line a server may write on stdout: a longer one cuts it off."""
STDERR_KEPT = 4000
"""Bytes of a server's stderr kept: the end, whose last line is shown with a failure."""
EXIT_GRACE = 2.0
"""Seconds a server has to exit once its stdin is closed, before it is killed."""
_SHOWN = 200
"""Characters of a line that is not JSON-RPC shown in the reason."""


class StdioConnection:
    """One server's process, the tail of its stderr, and why it ended (once it has)."""

    def __init__(self, name: str, max_line: int = MAX_LINE) -> None:
        self.name = name
        self.max_line = max_line
        self.process: Process | None = None
        self.cut_off: str | None = None
        """Why toka-agents cut the server off, when it did."""
        self.out_of_memory: Callable[[], bool] = lambda: False
        """Whether the memory limit killed the server (asked once it has ended)."""
        self._stderr = bytearray()
        self._stderr_done = anyio.Event()
        self._stdout_done = anyio.Event()

    def last_line(self) -> str:
        """The server's last non-blank line of stderr, one line, or ''."""
        lines = [line for line in self._stderr.decode(errors="replace").splitlines() if line.strip()]
        return text.one_line(lines[-1], 300) if lines else ""

    async def ended(self, wait: float) -> str | None:
        """Why the server is out of service, one line to follow `mcp server 'NAME'` (`exited
        with code 3: ...`), waiting up to `wait` seconds for its process to end once its stdout
        has ended; None while it runs."""
        if self.cut_off is not None:
            return self.cut_off
        process = self.process
        if process is None or (process.returncode is None and not self._stdout_done.is_set()):
            return None
        with anyio.move_on_after(wait):
            while process.returncode is None:
                await anyio.sleep(0.02)
        if process.returncode is None:
            return None
        with anyio.move_on_after(1.0):  # its last words may still be on the way
            await self._stderr_done.wait()
        said = self.last_line()
        if process.returncode == 137 and await anyio.to_thread.run_sync(self.out_of_memory):
            return "was killed by the memory limit (limits.memory)"
        return f"exited with code {process.returncode}" + (f": {said}" if said else "")

    async def _keep_stderr(self, stream: ByteReceiveStream) -> None:
        try:
            async for chunk in stream:
                self._stderr += chunk
                del self._stderr[:-STDERR_KEPT]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            pass
        finally:
            self._stderr_done.set()

    def _cut(self, reason: str) -> None:
        if self.cut_off is None:
            self.cut_off = reason
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()


@contextlib.asynccontextmanager
async def bounded_stdio(
    connection: StdioConnection, argv: Sequence[str], env: Mapping[str, str]
) -> AsyncIterator[TransportStreams]:
    """Start `argv` with `env` and yield the read and write streams a `ClientSession` takes.
    The process is stopped when the block ends: stdin closed, then killed after `EXIT_GRACE`."""
    process = await anyio.open_process(list(argv), env=dict(env), start_new_session=True)
    connection.process = process
    read_writer, read_stream = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    write_stream, write_reader = anyio.create_memory_object_stream[SessionMessage](0)

    async def stdout_reader() -> None:
        assert process.stdout is not None
        async with read_writer:
            try:
                await _read_lines(connection, process.stdout, read_writer)
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                pass
            finally:
                connection._stdout_done.set()

    async def stdin_writer() -> None:
        assert process.stdin is not None
        async with write_reader:
            try:
                async for message in write_reader:
                    line = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    await process.stdin.send(line.encode() + b"\n")
            except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                read_writer.close()  # the server is gone: the waiting calls learn it now

    async with anyio.create_task_group() as tasks:
        assert process.stderr is not None
        tasks.start_soon(stdout_reader)
        tasks.start_soon(stdin_writer)
        tasks.start_soon(connection._keep_stderr, process.stderr)
        try:
            yield read_stream, write_stream
        finally:
            with anyio.CancelScope(shield=True):
                await _stop(process)
                for stream in (read_stream, write_stream, read_writer, write_reader):
                    stream.close()
            tasks.cancel_scope.cancel()


async def _read_lines(
    connection: StdioConnection,
    stdout: ByteReceiveStream,
    messages: MemoryObjectSendStream[SessionMessage | Exception],
) -> None:
    """Hand each line of `stdout` on as a message until it ends, or until a line over the
    bound or one that is not JSON-RPC cuts the server off."""
    line = bytearray()
    async for chunk in stdout:
        start = 0
        while start < len(chunk):
            end = chunk.find(b"\n", start)
            line += chunk[start : len(chunk) if end < 0 else end]
            if len(line) > connection.max_line:
                connection._cut(f"wrote a line over {_size(connection.max_line)}: cut off")
                return
            if end < 0:
                break
            start = end + 1
            if line.strip():
                try:
                    message = types.jsonrpc_message_adapter.validate_json(bytes(line), by_name=False)
                except ValidationError:
                    shown = text.one_line(bytes(line[: _SHOWN * 4]).decode(errors="replace"), _SHOWN)
                    connection._cut(f"wrote something that is not JSON-RPC: {shown}")
                    return
                await messages.send(SessionMessage(message))
            line.clear()


async def _stop(process: Process) -> None:
    assert process.stdin is not None
    with contextlib.suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
        await process.stdin.aclose()
    with anyio.move_on_after(EXIT_GRACE):
        while process.returncode is None:
            await anyio.sleep(0.02)
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    with anyio.move_on_after(EXIT_GRACE):
        await process.aclose()


def _size(bytes_: int) -> str:
    return f"{bytes_ // (1024 * 1024)} MiB" if bytes_ % (1024 * 1024) == 0 else f"{bytes_:,} bytes"
