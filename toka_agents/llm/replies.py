"""Reading a decoded reply body defensively: each missing or mistyped part is a `MalformedReply`."""

from __future__ import annotations

from typing import Any

from toka_agents.llm.errors import MalformedReply


def mapping(value: Any, where: str, *, input_tokens: int = 0, output_tokens: int = 0) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedReply(
            "missing field",
            f"{where} is not a JSON object",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
    return value


def field(
    container: dict[str, Any], key: str, where: str, *, input_tokens: int = 0, output_tokens: int = 0
) -> Any:
    value = container.get(key)
    if value is None:
        raise MalformedReply(
            "missing field",
            f"{where} has no `{key}`",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
        )
    return value


def token_count(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MalformedReply("missing field", f"usage has no token count `{key}`")
    return value
