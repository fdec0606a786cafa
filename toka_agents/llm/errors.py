"""The errors of the LLM room: a call that failed for good, and a reply that cannot be used.

`LlmError` belongs beside the other children of `TokaError` in `toka_agents.errors`; it lives
here until that module takes it. Messages never hold an API key: the gateway redacts them.
"""

from __future__ import annotations

from typing import Literal

from toka_agents.errors import TokaError

MalformedKind = Literal[
    "bad JSON", "missing field", "unknown tool", "bad arguments", "arguments off schema"
]


class LlmError(TokaError):
    """A model call failed for good: a refusal (4xx), or retries used up. Says the provider's reason."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.attempts = attempts


class LlmCancelled(LlmError):
    """The call was cancelled while it waited or ran."""


class MalformedReply(LlmError):
    """The provider answered, but the reply cannot be used. `kind` names what was wrong.

    The agent loop feeds the message back to the model once. The call's tokens were spent
    all the same, so they travel with the error.
    """

    def __init__(
        self, kind: MalformedKind, message: str, *, input_tokens: int = 0, output_tokens: int = 0
    ) -> None:
        super().__init__(f"malformed reply ({kind}): {message}")
        self.kind: MalformedKind = kind
        self.detail = message
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
