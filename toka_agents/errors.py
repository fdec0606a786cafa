"""The one error hierarchy of toka-agents.

Every error a user can cause derives from `TokaError` and carries a message meant for
them. Config problems are collected as `ConfigIssue`s (file, key path, message) so one
pass can report all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from toka_agents import text


class TokaError(Exception):
    """Base class of every error toka-agents raises on purpose."""


def one_line(exc: BaseException) -> str:
    """An error as one visible line of at most 300 characters (a longer one names its cut), or
    its type's name if it says nothing: what a user is shown of an error not toka-agents' own."""
    said = str(exc).strip()
    return text.one_line(said, 300) if said else type(exc).__name__


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in one config file, located by its key path (`agents.1.limits.memory`)."""

    file: str
    path: str
    message: str

    def __str__(self) -> str:
        if self.path:
            return f"{self.file}: {self.path}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigError(TokaError):
    """One or more config problems, all found in one pass."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        self.issues: list[ConfigIssue] = list(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))


class SandboxError(TokaError):
    """The sandbox could not run code: no engine, no image, an engine error."""


class ExecutionError(TokaError):
    """A run cannot start, for example an LLM task with no provider configured."""


class McpServerError(TokaError):
    """An MCP server could not start, or does not have what the config names."""


class LlmError(TokaError):
    """A model call failed for good: a refusal (4xx), or retries used up. Says the provider's
    reason in one visible line (a provider's text is not toka-agents' to trust: a model step's
    task run shows it as its state message); never holds an API key (the gateway redacts it)."""

    def __init__(self, message: str, *, status_code: int | None = None, attempts: int = 1) -> None:
        super().__init__(text.one_line(message))
        self.status_code = status_code
        self.attempts = attempts


class LlmCancelled(LlmError):
    """The call was cancelled while it waited or ran."""


class NoAnswer(TokaError):
    """A question to a person got no answer in time."""


class Rejected(TokaError):
    """A person rejected a task or a tool call that waited for their approval."""

    def __init__(self, comment: str) -> None:
        self.comment = comment
        super().__init__(f"rejected by a person: {comment or '(no comment)'}")


MalformedKind = Literal[
    "bad JSON", "missing field", "unknown tool", "bad arguments", "arguments off schema"
]


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
