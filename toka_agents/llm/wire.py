"""What the two wire formats share: the request each is asked to put on the wire, JSON headers
with the key as a Bearer token, and the start of every request body (model, the answer's token
bound, the temperature when set). No HTTP here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from toka_agents.llm.messages import Message, ToolSpec


@dataclass(frozen=True)
class Request:
    """One model call in no provider's format: the conversation so far, the tools the model may
    call, and the settings the call is made with."""

    model: str
    messages: Sequence[Message]
    tools: Sequence[ToolSpec]
    max_tokens: int
    temperature: float | None


def headers(api_key: str | None, **extra: str) -> dict[str, str]:
    """JSON in and out, `extra` headers, and the key as the official SDKs send it, when there is
    one (local servers such as Ollama need none)."""
    sent = {"Content-Type": "application/json", "Accept": "application/json", **extra}
    if api_key:
        sent["Authorization"] = f"Bearer {api_key}"
    return sent


def body_start(request: Request) -> dict[str, Any]:
    """The fields every request body begins with; the temperature only when it is set, so the
    provider's default holds otherwise."""
    body: dict[str, Any] = {"model": request.model, "max_tokens": request.max_tokens}
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body
