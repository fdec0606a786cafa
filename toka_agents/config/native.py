"""The native format: one YAML or TOML document shaped like `OrchestrationFile`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from toka_agents.config.fragments import Fragment, issues_from_validation
from toka_agents.config.models import (
    Agent,
    CodeTask,
    OrchestrationFile,
    Origin,
    Settings,
)
from toka_agents.errors import ConfigIssue


def read(document: dict[str, Any], path: Path, shown: str) -> Fragment:
    try:
        parsed = OrchestrationFile.model_validate(document)
    except ValidationError as exc:
        return _salvage(document, shown, issues_from_validation(exc, shown))

    agents = [agent.located(_origin(shown, i)) for i, agent in enumerate(parsed.agents)]
    agents, issues = read_code_files(agents, path.parent, shown)
    settings = Settings.model_validate(
        {key: getattr(parsed, key) for key in parsed.model_fields_set if key in Settings.model_fields}
    )
    return Fragment(file=shown, settings=settings, agents=agents, issues=issues)


def _salvage(document: dict[str, Any], shown: str, issues: list[ConfigIssue]) -> Fragment:
    """Keep the agents that are valid on their own, so dependency checks still run on them."""
    fragment = Fragment(file=shown, issues=issues)
    raw_agents = document.get("agents")
    if not isinstance(raw_agents, list):
        return fragment
    for i, raw in enumerate(raw_agents):
        try:
            agent = Agent.model_validate(raw)
        except ValidationError:
            if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                fragment.broken_agents.append(raw["name"])
            continue
        fragment.agents.append(agent.located(_origin(shown, i)))
    return fragment


def _origin(shown: str, index: int) -> Origin:
    return Origin(file=shown, path=f"agents.{index}", sandbox_key=f"agents.{index}.sandbox")


def read_code_files(
    agents: list[Agent], base: Path, shown: str
) -> tuple[list[Agent], list[ConfigIssue]]:
    """Read every `code.file` (relative to the config file) into the task's `source`."""
    issues: list[ConfigIssue] = []
    resolved: list[Agent] = []
    for agent in agents:
        tasks = []
        for j, task in enumerate(agent.tasks):
            if isinstance(task, CodeTask) and task.code.file is not None:
                file = (base / task.code.file).resolve()
                try:
                    source = file.read_text(encoding="utf-8")
                except FileNotFoundError:
                    issues.append(
                        ConfigIssue(
                            shown, agent.origin.key("tasks", j, "code", "file"), f"no such file: {file}"
                        )
                    )
                except (OSError, UnicodeDecodeError) as exc:
                    issues.append(
                        ConfigIssue(
                            shown,
                            agent.origin.key("tasks", j, "code", "file"),
                            f"cannot read {file}: {exc}",
                        )
                    )
                else:
                    task = task.model_copy(
                        update={"code": task.code.model_copy(update={"source": source})}
                    )
            tasks.append(task)
        if any(new is not old for new, old in zip(tasks, agent.tasks, strict=True)):
            agent = agent.model_copy(update={"tasks": tasks}).located(agent.origin)
        resolved.append(agent)
    return resolved, issues
