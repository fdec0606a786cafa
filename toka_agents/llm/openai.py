"""OpenAI's Chat Completions wire format, which OpenAI, Ollama, vLLM, LM Studio and LiteLLM speak.

Builds the request (native `tools`, `tool_choice: "auto"`) and reads the reply
(`choices[0].message`, `usage.prompt_tokens` / `completion_tokens`). No HTTP here.
"""

from __future__ import annotations

import json
from typing import Any

from toka_agents.llm import messages, wire
from toka_agents.llm.errors import MalformedReply
from toka_agents.llm.replies import field, mapping, token_count

NAME = "openai"
DEFAULT_BASE_URL = "https://api.openai.com/v1"
PATH = "/chat/completions"


def headers(api_key: str | None) -> dict[str, str]:
    """Bearer auth, as the official SDK sends it; local servers (Ollama) need no key."""
    return wire.headers(api_key)


def request_body(request: wire.Request) -> dict[str, Any]:
    body = wire.body_start(request)
    body["messages"] = [_message(message) for message in request.messages]
    if request.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
            }
            for t in request.tools
        ]
        # Some servers (llama-cpp-python) accept no other choice than "auto" or a named function.
        body["tool_choice"] = "auto"
    return body


def _message(message: messages.Message) -> dict[str, Any]:
    match message:
        case messages.SystemMessage() | messages.UserMessage():
            return {"role": message.role, "content": message.content}
        case messages.AssistantMessage():
            # Never null content: llama-cpp-python's server refuses an assistant message with it.
            sent: dict[str, Any] = {"role": "assistant", "content": message.content}
            if message.tool_calls:
                sent["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
                    }
                    for call in message.tool_calls
                ]
            return sent
        case messages.ToolMessage():
            # The format has no error flag for a tool result; say it in the content.
            content = f"error: {message.content}" if message.is_error else message.content
            return {"role": "tool", "tool_call_id": message.tool_call_id, "content": content}
    raise TypeError(f"not a message: {message!r}")


def parse_reply(data: Any) -> messages.ModelReply:
    """The model's answer in a decoded response body; `MalformedReply` names what is missing."""
    reply = mapping(data, "the response body")
    usage = mapping(field(reply, "usage", "the response"), "usage")
    input_tokens = token_count(usage, "prompt_tokens")
    output_tokens = token_count(usage, "completion_tokens")
    spent = {"input_tokens": input_tokens, "output_tokens": output_tokens}

    choices = field(reply, "choices", "the response", **spent)
    if not isinstance(choices, list) or not choices:
        raise MalformedReply("missing field", "`choices` is empty or not a list", **spent)
    choice = mapping(choices[0], "choices[0]", **spent)
    message = mapping(field(choice, "message", "choices[0]", **spent), "choices[0].message", **spent)
    text = _text(message.get("content")) or _text(message.get("refusal"))
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        raise MalformedReply("missing field", "`tool_calls` is not a list", **spent)
    return messages.ModelReply(
        text=text,
        tool_calls=tuple(_tool_call(call, i, spent) for i, call in enumerate(calls)),
        stop_reason=choice.get("finish_reason"),
        model=str(reply.get("model") or ""),
        **spent,
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts, as some servers answer
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def _tool_call(raw: Any, index: int, spent: dict[str, int]) -> messages.ToolCall:
    where = f"tool_calls[{index}]"
    call = mapping(raw, where, **spent)
    function = mapping(field(call, "function", where, **spent), f"{where}.function", **spent)
    name = field(function, "name", f"{where}.function", **spent)
    arguments = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as exc:
            raise MalformedReply(
                "bad arguments",
                f"the arguments of tool call {name!r} are not JSON ({exc.msg} at character {exc.pos})",
                **spent,
            ) from None
    if not isinstance(arguments, dict):
        raise MalformedReply(
            "bad arguments", f"the arguments of tool call {name!r} are not a JSON object", **spent
        )
    # Servers that give no id check none; the result needs one all the same.
    return messages.ToolCall(
        id=str(call.get("id") or f"call_{index}"), name=str(name), arguments=arguments
    )
