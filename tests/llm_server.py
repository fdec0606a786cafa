"""A scripted LLM provider on 127.0.0.1: the one test double of toka-agents' tests.

It speaks both wire formats over real HTTP, `POST /v1/chat/completions` (OpenAI's Chat
Completions) and `POST /v1/messages` (Anthropic's Messages API), tool calls included. Each
request takes the next item of one script: a reply (text and tool calls) or a fault (429 with
`Retry-After`, a 5xx, a body that is not JSON, an answer slower than the client waits). It checks
requests the way the real servers do (auth, roles, tool result ids, llama-cpp-python's refusal of
null assistant content) and records every request, headers and body, for assertions. Ids
(`call_3_0`, `toolu_00030`) follow the conversation's length, so one conversation gets the same
ids whichever client sends it.

    with scripted_server(tool_call("finish", success=True, summary="done")) as server:
        ... server.openai_base_url ... server.requests ...
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OPENAI_PATH = "/v1/chat/completions"
ANTHROPIC_PATH = "/v1/messages"


# --- the script -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One tool call of a reply. `raw` sends the arguments as this exact text (OpenAI) or value
    (Anthropic's `input`), for arguments that do not parse."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    raw: Any = None


@dataclass(frozen=True)
class Reply:
    text: str = ""
    calls: tuple[Call, ...] = ()
    input_tokens: int | None = None
    output_tokens: int | None = None
    model: str | None = None


@dataclass(frozen=True)
class Fault:
    """An HTTP error in the provider's own error format."""

    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RawBody:
    """A 200 whose body is exactly this text (malformed JSON, a body missing fields)."""

    body: str


@dataclass(frozen=True)
class Slow:
    """Answer `then`, but only after `seconds`: slower than the client's timeout."""

    seconds: float
    then: Reply


Item = Reply | Fault | RawBody | Slow


def text(content: str, **usage: Any) -> Reply:
    return Reply(text=content, **usage)


def tool_call(name: str, /, **arguments: Any) -> Reply:
    return Reply(calls=(Call(name, arguments),))


def tool_calls(*calls: Call, text: str = "") -> Reply:
    return Reply(text=text, calls=calls)


def bad_arguments(name: str, raw: Any = '{"language": "python", "source": ') -> Reply:
    return Reply(calls=(Call(name, raw=raw),))


def rate_limited(
    retry_after: str | None = "1", message: str = "Rate limit reached for requests"
) -> Fault:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return Fault(429, message, headers)


def server_error(
    status: int = 500, message: str = "The server had an error processing your request"
) -> Fault:
    return Fault(status, message)


def malformed_json() -> RawBody:
    return RawBody('{"id": "broken", "choices": [')


def slow(seconds: float, then: Reply) -> Slow:
    return Slow(seconds, then)


# --- the server -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request as it arrived: headers with lower-case names, and the decoded body."""

    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)
    """When it arrived (`time.monotonic()`), for counting requests per window."""


class Refusal(Exception):
    """A request the real server would refuse: status and message in its error format."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ScriptedServer:
    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.script: deque[Item] = deque()
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.openai_base_url = f"{self.url}/v1"
        self.anthropic_base_url = self.url

    def add(self, *items: Item) -> None:
        with self._lock:
            self.script.extend(items)

    def requests_to(self, path: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def record(self, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)

    def next_item(self) -> Item | None:
        with self._lock:
            return self.script.popleft() if self.script else None


@contextmanager
def scripted_server(*script: Item, api_key: str | None = None) -> Iterator[ScriptedServer]:
    server = ScriptedServer(api_key)
    server.add(*script)
    thread = threading.Thread(
        target=server.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.stopping.set()
        server.httpd.shutdown()
        server.httpd.server_close()
        thread.join(timeout=10)


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Sent at once, as a provider's server sends: with Nagle's algorithm (http.server's
        # default) a reply's body waits for the ACK of its headers, which the client delays,
        # about 40 ms a model call when the calls come back to back.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            wire = {OPENAI_PATH: OpenAIWire, ANTHROPIC_PATH: AnthropicWire}.get(path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
            headers = {name.lower(): value for name, value in self.headers.items()}
            server.record(Recorded(path, headers, body))
            if wire is None:
                self._send(404, {"error": {"message": f"no route {path}"}})
                return
            try:
                wire.check(headers, body, server.api_key)
            except Refusal as refusal:
                self._send(refusal.status, wire.error(refusal.status, str(refusal)))
                return
            except (AttributeError, KeyError, TypeError) as exc:
                self._send(400, wire.error(400, f"malformed request: {exc!r}"))
                return
            item = server.next_item()
            if item is None:
                self._send(400, wire.error(400, "the script has no more replies"))
                return
            if isinstance(item, Slow):
                if server.stopping.wait(item.seconds):
                    return
                item = item.then
            if isinstance(item, Fault):
                self._send(item.status, wire.error(item.status, item.message), item.headers)
            elif isinstance(item, RawBody):
                self._send(200, item.body)
            else:
                self._send(200, wire.reply(item, body, len(body["messages"])))

        def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the slow fault)

    return Handler


def _usage(reply: Reply, request: Any) -> tuple[int, int]:
    """Deterministic token counts: about 4 characters a token, unless the script says."""
    spoken = reply.text + "".join(c.name + json.dumps(c.arguments) for c in reply.calls)
    input_tokens = reply.input_tokens
    if input_tokens is None:
        input_tokens = math.ceil(len(json.dumps(request.get("messages", []))) / 4)
    output_tokens = (
        reply.output_tokens if reply.output_tokens is not None else math.ceil(len(spoken) / 4) + 1
    )
    return input_tokens, output_tokens


def _require(condition: bool, message: str, status: int = 400) -> None:
    if not condition:
        raise Refusal(status, message)


class OpenAIWire:
    """Chat Completions, as OpenAI answers it (and as llama-cpp-python checks requests)."""

    @staticmethod
    def check(headers: dict[str, str], body: Any, api_key: str | None) -> None:
        if api_key is not None:
            sent = headers.get("authorization", "")
            _require(sent.startswith("Bearer "), "You didn't provide an API key.", 401)
            given = sent.removeprefix("Bearer ")
            # Echoed whole on purpose: a client must keep it out of its own errors.
            _require(given == api_key, f"Incorrect API key provided: {given}.", 401)
        _require(isinstance(body, dict), "We could not parse the JSON body of your request.")
        _require(isinstance(body.get("model"), str), "you must provide a model parameter")
        _require(not body.get("stream"), "this server does not stream")
        messages = body.get("messages")
        _require(isinstance(messages, list) and bool(messages), "'messages' must be a non-empty array")
        called: set[str] = set()
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            _require(
                role in ("system", "developer", "user", "assistant", "tool"),
                f"messages[{i}]: bad role {role!r}",
            )
            if role == "assistant":
                # llama-cpp-python's server refuses this; so do we.
                _require(
                    message.get("content") is not None, f"messages[{i}].content: null is not allowed"
                )
                for call in message.get("tool_calls") or []:
                    _require(
                        call.get("type") == "function",
                        f"messages[{i}].tool_calls: type must be 'function'",
                    )
                    function = call.get("function") or {}
                    _require(
                        isinstance(function.get("arguments"), str),
                        f"messages[{i}]: arguments must be a string",
                    )
                    called.add(call.get("id"))
            elif role == "tool":
                _require(
                    message.get("tool_call_id") in called,
                    f"messages[{i}]: a 'tool' message must answer a preceding tool call",
                )
                _require(
                    isinstance(message.get("content"), str), f"messages[{i}].content must be a string"
                )
            else:
                _require(
                    isinstance(message.get("content"), str | list), f"messages[{i}].content is missing"
                )
        for tool in body.get("tools") or []:
            _require(
                tool.get("type") == "function" and isinstance(tool.get("function", {}).get("name"), str),
                "tools: each tool needs type 'function' and a function name",
            )
        choice = body.get("tool_choice")
        _require(
            choice is None
            or choice == "auto"
            or (isinstance(choice, dict) and choice.get("type") == "function"),
            "tool_choice: only 'auto' or a named function is supported",
        )

    @staticmethod
    def error(status: int, message: str) -> dict[str, Any]:
        kind = {401: "invalid_request_error", 429: "rate_limit_exceeded"}.get(status, "server_error")
        if status == 400:
            kind = "invalid_request_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}

    @staticmethod
    def reply(reply: Reply, request: dict[str, Any], turn: int) -> dict[str, Any]:
        input_tokens, output_tokens = _usage(reply, request)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text or (None if reply.calls else ""),
            "refusal": None,
        }
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": f"call_{turn}_{i}",
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": call.raw if call.raw is not None else json.dumps(call.arguments),
                    },
                }
                for i, call in enumerate(reply.calls)
            ]
        return {
            "id": f"chatcmpl-{turn}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": reply.model or request["model"],
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "tool_calls" if reply.calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
            },
            "system_fingerprint": None,
        }


class AnthropicWire:
    """The Messages API, as Anthropic answers it."""

    @staticmethod
    def check(headers: dict[str, str], body: Any, api_key: str | None) -> None:
        _require("anthropic-version" in headers, "anthropic-version: header is required")
        if api_key is not None:
            given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ")
            _require(bool(given), "x-api-key or Authorization header is required", 401)
            _require(given == api_key, f"invalid x-api-key: {given}", 401)
        _require(isinstance(body, dict), "request body is not JSON")
        _require(isinstance(body.get("model"), str), "model: Field required")
        _require(isinstance(body.get("max_tokens"), int), "max_tokens: Field required")
        _require(not body.get("stream"), "this server does not stream")
        messages = body.get("messages")
        _require(
            isinstance(messages, list) and bool(messages), "messages: at least one message is required"
        )
        last_tool_uses: set[str] = set()
        for i, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            _require(
                role in ("user", "assistant"),
                f'messages.{i}.role: Unexpected role "{role}". The Messages API accepts a top-level '
                '`system` parameter, not "system" as an input message role.',
            )
            content = message["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            _require(isinstance(blocks, list), f"messages.{i}.content: must be a string or a list")
            tool_uses: set[str] = set()
            for j, block in enumerate(blocks):
                kind = block.get("type")
                if kind == "text":
                    _require(
                        bool(block.get("text")),
                        f"messages.{i}.content.{j}: text content blocks must be non-empty",
                    )
                elif kind == "tool_use":
                    _require(
                        role == "assistant",
                        f"messages.{i}.content.{j}: tool_use only in assistant turns",
                    )
                    _require(
                        isinstance(block.get("input"), dict),
                        f"messages.{i}.content.{j}.input: must be an object",
                    )
                    tool_uses.add(block.get("id"))
                elif kind == "tool_result":
                    _require(
                        role == "user" and block.get("tool_use_id") in last_tool_uses,
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                        f"{block.get('tool_use_id')}. Each `tool_result` block must have a corresponding "
                        "`tool_use` block in the previous message.",
                    )
                else:
                    raise Refusal(400, f"messages.{i}.content.{j}.type: unknown block type {kind!r}")
            last_tool_uses = tool_uses
        for tool in body.get("tools") or []:
            _require(
                isinstance(tool.get("name"), str) and isinstance(tool.get("input_schema"), dict),
                "tools: each tool needs a name and an input_schema",
            )

    @staticmethod
    def error(status: int, message: str) -> dict[str, Any]:
        kind = {
            400: "invalid_request_error",
            401: "authentication_error",
            429: "rate_limit_error",
            529: "overloaded_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}

    @staticmethod
    def reply(reply: Reply, request: dict[str, Any], turn: int) -> dict[str, Any]:
        input_tokens, output_tokens = _usage(reply, request)
        content: list[dict[str, Any]] = [{"type": "text", "text": reply.text}] if reply.text else []
        content += [
            {
                "type": "tool_use",
                "id": f"toolu_{turn:04d}{i}",
                "name": call.name,
                "input": call.raw if call.raw is not None else call.arguments,
            }
            for i, call in enumerate(reply.calls)
        ]
        return {
            "id": f"msg_{turn:04d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or request["model"],
            "content": content,
            "stop_reason": "tool_use" if reply.calls else "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
        }
