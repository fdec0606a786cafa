"""Anthropic's Messages API wire format: a top-level `system`, content blocks, `tool_use` and
`tool_result`, and the headers the official `anthropic` package sends. No HTTP here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from toka_agents.llm import messages, wire
from toka_agents.llm.errors import MalformedReply
from toka_agents.llm.replies import field, mapping, token_count

NAME = "anthropic"
DEFAULT_BASE_URL = "https://api.anthropic.com"
PATH = "/v1/messages"
API_VERSION = "2026-10-21"
"""The `anthropic-version` that the official package (2.14) sends."""


def headers(api_key: str | None) -> dict[str, str]:
    """As the official package sends them: the key as a Bearer token (servers also take `x-api-key`)."""
    return wire.headers(api_key, **{"anthropic-version": API_VERSION})


def request_body(request: wire.Request) -> dict[str, Any]:
    body = wire.body_start(request)
    system = "\n\n".join(
        m.content for m in request.messages if isinstance(m, messages.SystemMessage) and m.content
    )
    if system:
        body["system"] = system
    body["messages"] = _turns(request.messages)
    if request.tools:
        body["tools"] = [
            {"name": t.name, "description": t.description, "input_schema": t.parameters}
            for t in request.tools
        ]
        body["tool_choice"] = {"type": "auto"}
    return body


def _turns(conversation: Sequence[messages.Message]) -> list[dict[str, Any]]:
    """User and assistant turns of content blocks; neighbours of one role become one turn,
    so tool results and a following user note travel together, as the API wants them."""
    turns: list[dict[str, Any]] = []
    for message in conversation:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _blocks(message: messages.Message) -> tuple[str, list[dict[str, Any]]]:
    match message:
        case messages.SystemMessage():
            return "system", []
        case messages.UserMessage():
            return "user", [{"type": "text", "text": message.content}] if message.content else []
        case messages.AssistantMessage():
            # The API refuses empty text blocks.
            blocks: list[dict[str, Any]] = (
                [{"type": "text", "text": message.content}] if message.content else []
            )
            blocks += [
                {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments}
                for call in message.tool_calls
            ]
            return "assistant", blocks
        case messages.ToolMessage():
            result: dict[str, Any] = {
                "type": "tool_result",
                "tool_use_id": message.tool_call_id,
                "content": message.content,
            }
            if message.is_error:
                result["is_error"] = True
            return "user", [result]
    raise TypeError(f"not a message: {message!r}")


def parse_reply(data: Any) -> messages.ModelReply:
    """The model's answer in a decoded response body; `MalformedReply` names what is missing."""
    reply = mapping(data, "the response body")
    usage = mapping(field(reply, "usage", "the response"), "usage")
    # `input_tokens` leaves out what was written to or read from the prompt cache.
    cached = sum(
        value
        for key in ("cache_creation_input_tokens", "cache_read_input_tokens")
        if isinstance(value := usage.get(key), int)
    )
    spent = {
        "input_tokens": token_count(usage, "input_tokens") + cached,
        "output_tokens": token_count(usage, "output_tokens"),
    }
    content = field(reply, "content", "the response", **spent)
    if not isinstance(content, list):
        raise MalformedReply("missing field", "`content` is not a list of blocks", **spent)
    texts: list[str] = []
    calls: list[messages.ToolCall] = []
    for i, raw in enumerate(content):
        block = mapping(raw, f"content[{i}]", **spent)
        kind = block.get("type")
        if kind == "text":
            texts.append(str(block.get("text") or ""))
        elif kind == "tool_use":
            name = field(block, "name", f"content[{i}]", **spent)
            arguments = block.get("input", {})
            if not isinstance(arguments, dict):
                raise MalformedReply(
                    "bad arguments",
                    f"the arguments of tool call {name!r} are not a JSON object",
                    **spent,
                )
            calls.append(
                messages.ToolCall(
                    id=str(field(block, "id", f"content[{i}]", **spent)),
                    name=str(name),
                    arguments=arguments,
                )
            )
        # Other blocks (thinking, ...) say nothing the loop acts on.
    return messages.ModelReply(
        text="\n".join(t for t in texts if t),
        tool_calls=tuple(calls),
        stop_reason=reply.get("stop_reason"),
        model=str(reply.get("model") or ""),
        **spent,
    )
