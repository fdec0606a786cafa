"""What a dialect reader hands the loader: a `Fragment` per file, and pydantic's errors turned
into `ConfigIssue`s located at the keys the author wrote.

It sits below the loader and the dialect readers, which both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from toka_agents.config.models import TASK_TAGS, Agent, Settings
from toka_agents.errors import ConfigIssue


@dataclass
class Fragment:
    """What one file contributes: settings (only the keys it sets), agents, and problems."""

    file: str
    settings: Settings | None = None
    agents: list[Agent] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)
    warnings: list[ConfigIssue] = field(default_factory=list)
    # Agents written in this file that did not validate: known by name, so that others
    # requiring them are not reported as requiring an unknown agent.
    broken_agents: list[str] = field(default_factory=list)


def failed(shown: str, message: str, path: str = "") -> Fragment:
    """The fragment of a file that could not be read at all."""
    return Fragment(file=shown, issues=[ConfigIssue(shown, path, message)])


def issues_from_validation(
    error: ValidationError, file: str, prefix: str = "", sources: dict[str, str] | None = None
) -> list[ConfigIssue]:
    """Turn pydantic's errors into ConfigIssues with dotted key paths and plain messages.

    `sources` maps key paths of the native model to where a dialect wrote them
    (`limits.memory` -> `security.resource_limits.max_memory`); the longest match wins.
    """
    issues = []
    for detail in error.errors():
        path = ".".join(str(part) for part in detail["loc"] if part not in TASK_TAGS)
        if sources:
            path = source_path(path, sources)
        path = ".".join(part for part in (prefix, path) if part)
        issues.append(ConfigIssue(file, path, _plain_message(detail)))
    return issues


def source_path(path: str, sources: dict[str, str]) -> str:
    parts = path.split(".") if path else []
    for cut in range(len(parts), -1, -1):
        head = ".".join(parts[:cut])
        if head in sources:
            return ".".join(part for part in (sources[head], *parts[cut:]) if part)
    return path


def _plain_message(detail: Any) -> str:
    kind = detail["type"]
    if kind == "missing":
        return "missing required key"
    if kind == "extra_forbidden":
        return "unknown key (`toka schema` lists the keys of the format)"
    message: str = detail["msg"]
    for prefix in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(prefix)
    value = detail.get("input")
    if isinstance(value, (str, int, float)) and repr(value) not in message:
        message = f"{message} (got {value!r})"
    return message
