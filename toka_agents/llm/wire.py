"""What the two wire formats share: JSON headers with the key as a Bearer token, and the start of
every request body (model, the answer's token bound, the temperature when set). No HTTP here."""

from __future__ import annotations

from typing import Any


def headers(api_key: str | None, **extra: str) -> dict[str, str]:
    """JSON in and out, `extra` headers, and the key as the official SDKs send it, when there is
    one (local servers such as Ollama need none)."""
    sent = {"Content-Type": "application/json", "Accept": "application/json", **extra}
    if api_key:
        sent["Authorization"] = f"Bearer {api_key}"
    return sent


def body_start(*, model: str, max_tokens: int, temperature: float | None) -> dict[str, Any]:
    """The fields every request body begins with; the temperature only when it is set, so the
    provider's default holds otherwise."""
    body: dict[str, Any] = {"model": model, "max_tokens": max_tokens}
    if temperature is not None:
        body["temperature"] = temperature
    return body
