"""`{name}` placeholders: where an orchestration may use its inputs, and filling them in.

The grammar is CrewAI's, `{` then a name (`[A-Za-z_][A-Za-z0-9_-]*`) then `}`, so JSON's
braces (`{"a": 1}`) are never one. `{{name}}` is the text `{name}`, not filled. Placeholders
are filled only in the native format, only in a config that declares `inputs:`, and only in
LLM tasks' instructions, `env` values, `network_allow` entries and the workspace's seed
(`workspace: {from: "{repo}"}`): code is never rewritten
(it reads `TOKA_INPUT_<NAME>`), and elsewhere braces are plain text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from toka_agents.config.inputs import InputValue, as_text
from toka_agents.config.models import Agent, LlmTask, Orchestration, allowed_host
from toka_agents.errors import ConfigIssue

PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_\-]*)\}")
_TOKEN = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_\-]*)\}\}|" + PLACEHOLDER.pattern)

Filler = Callable[[str, str, str], str]
"""Fills a text, given where it is for a problem with it: (text, file, key path) -> filled."""


def placeholder_names(text: str) -> list[str]:
    """The inputs `text` names in placeholders, in order (escaped ones left out)."""
    return [found[2] for found in _TOKEN.finditer(text) if found[2] is not None]


def fill_text(text: str, texts: Mapping[str, str]) -> str:
    """`text` with each placeholder replaced by its input's text (empty for an input that has
    no value) and each `{{name}}` made `{name}`."""

    def replace(found: re.Match[str]) -> str:
        if found[1] is not None:
            return "{" + found[1] + "}"
        return texts.get(found[2], "")

    return _TOKEN.sub(replace, text) if "{" in text else text


def fill_placeholders(
    orchestration: Orchestration, values: Mapping[str, InputValue]
) -> tuple[Orchestration, list[ConfigIssue]]:
    """The orchestration with its placeholders filled with `values`, and every problem: a
    placeholder naming no declared input, a `network_allow` entry that is no host once filled
    (or, where nothing is filled, that holds braces). An entry filled to nothing is dropped."""
    declared = orchestration.inputs
    texts = {name: as_text(value) for name, value in values.items()}
    known = ", ".join(sorted(declared))
    issues: list[ConfigIssue] = []

    def filled(text: str, file: str, key: str) -> str:
        for name in dict.fromkeys(placeholder_names(text)):
            if name not in declared:
                message = f"placeholder {{{name}}} names no declared input (declared: {known})"
                issues.append(ConfigIssue(file, key, message))
        return fill_text(text, texts)

    agents = [
        _filled_agent(agent, filled if declared and agent.origin.dialect == "native" else None, issues)
        for agent in orchestration.agents
    ]
    if not declared:
        return orchestration, issues
    settings_file = ", ".join(orchestration.sources) or "<memory>"
    defaults = orchestration.defaults
    env = {
        key: filled(value, settings_file, f"defaults.env.{key}") for key, value in defaults.env.items()
    }
    update: dict[str, object] = {"agents": agents, "defaults": defaults.model_copy(update={"env": env})}
    if (seed := orchestration.workspace) is not None:
        fields = {"from_": "from", "git": "git", "ref": "ref"}
        update["workspace"] = seed.model_copy(
            update={
                field: filled(value, settings_file, f"workspace.{key}")
                for field, key in fields.items()
                if (value := getattr(seed, field)) is not None
            }
        )
    return orchestration.model_copy(update=update), issues


def _filled_agent(agent: Agent, filled: Filler | None, issues: list[ConfigIssue]) -> Agent:
    origin = agent.origin
    allowed = []
    for i, entry in enumerate(agent.network_allow):
        if "{" not in entry:
            allowed.append(entry)  # checked when loaded
            continue
        key = origin.key("network_allow", i)
        host = entry if filled is None else filled(entry, origin.file, key).strip()
        if filled is not None and not host:
            continue
        try:
            allowed.append(allowed_host(host))
        except ValueError as exc:
            said = str(exc) if host == entry else f"filled from {entry!r}: {exc}"
            issues.append(ConfigIssue(origin.file, key, said))
    if filled is None:
        return agent
    tasks = []
    for j, task in enumerate(agent.tasks):
        if isinstance(task, LlmTask):
            key = origin.key("tasks", j, "instruction")
            task = task.model_copy(update={"instruction": filled(task.instruction, origin.file, key)})
        tasks.append(task)
    env = {key: filled(value, origin.file, origin.key("env", key)) for key, value in agent.env.items()}
    update = {"tasks": tasks, "env": env, "network_allow": allowed}
    return agent.model_copy(update=update).located(origin)
