"""The one error hierarchy of toka-agents.

Every error a user can cause derives from `TokaError` and carries a message meant for
them. Config problems are collected as `ConfigIssue`s (file, key path, message) so one
pass can report all of them at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


class TokaError(Exception):
    """Base class of every error toka-agents raises on purpose."""


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
