"""Toka's agent spec YAML, in its v0.3 and v1.0 shapes, as the authors wrote them.

A spec is one agent: `metadata` (name, workstream), `spec` (priority), `capabilities`
(primary/secondary), `tasks` (default, conditional), `dependencies` (required, optional),
`security` (capabilities_required, sandbox, resource_limits), and keys of its own domain.
The two versions differ in shapes, all accepted here:

- dependencies: a mapping `{agent: reason}` (v1.0) or a list of single-key maps (v0.3);
- metrics: a mapping, a list of single-key maps (v0.3) or `{name, description, type, unit}`;
- tasks: `estimated_duration` or `estimated_time`, `tools_required`, `critical` priority,
  and `tasks.conditional` groups that run only when a run names them (v1.0);
- metadata: `modified`, `schema_version`, `checksum` (v1.0), kept as they are.

An agent goes on after a failed task and completes when 80% of its tasks are done (Toka's rule),
unless `spec.on_task_failure` / `spec.min_success_ratio` (or the orchestration) say otherwise.

Every task is described in words, so it loads as an LLM task. Keys toka-agents does not act
on are kept in the agent's `extra` and shown in its report. Toka's own JSON Schema is
checked as warnings only.

`build_agent` and `AgentSource` are shared with the orchestration TOML dialect.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from toka_agents.config import toka_schema
from toka_agents.config.fragments import Fragment, issues_from_validation
from toka_agents.config.models import Agent, Origin
from toka_agents.errors import ConfigIssue

_SPEC_KEYS = ("metadata", "spec", "capabilities", "tasks", "dependencies", "security")
LIMIT_KEYS = (("memory", "max_memory"), ("cpu", "max_cpu"), ("timeout", "timeout"))
"""Native limit names and the keys Toka writes them under in `resource_limits`."""
FAILURE_POLICY_KEYS = ("on_task_failure", "min_success_ratio")
"""Keys of the failure policy, written as in the native format; unset, Toka's own rule holds."""


def recognises(document: dict[str, Any]) -> bool:
    return "metadata" in document and "spec" in document


def read(document: dict[str, Any], path: Path, shown: str) -> Fragment:
    source = AgentSource(shown)
    metadata = source.mapping(document.get("metadata"), "metadata")
    spec = source.mapping(document.get("spec"), "spec")
    capabilities = source.mapping(document.get("capabilities"), "capabilities")
    security = source.mapping(document.get("security"), "security")
    dependencies = source.mapping(document.get("dependencies"), "dependencies")

    source.set("name", metadata.get("name"), "metadata.name")
    source.set("description", spec.get("description") or spec.get("name") or "", "spec.description")
    source.set("priority", spec.get("priority", "medium"), "spec.priority")
    source.set("workstream", metadata.get("workstream"), "metadata.workstream")
    for key in FAILURE_POLICY_KEYS:
        source.set(key, spec.get(key), f"spec.{key}")
    source.add_requirements(dependencies.get("required"), "dependencies.required")
    source.add_optional(dependencies.get("optional"), "dependencies.optional")
    source.add_capabilities(security.get("capabilities_required"), "security.capabilities_required")
    source.add_capabilities(capabilities.get("primary"), "capabilities.primary")
    source.add_capabilities(capabilities.get("secondary"), "capabilities.secondary")
    source.add_security(security, "security")
    source.add_tasks(document.get("tasks"), "tasks")

    extra = {key: value for key, value in document.items() if key not in _SPEC_KEYS}
    extra["metadata"] = metadata
    if "reporting" in extra:
        extra["reporting"] = normalize_reporting(extra["reporting"])
    version = "toka-v1.0" if _is_v1(metadata) else "toka-v0.3"
    origin = Origin(
        file=shown,
        dialect=version,
        requires_key="dependencies.required",
        sandbox_key="security.sandbox",  # the file is the agent: paths start at its root
    )
    fragment = build_agent(source, origin, extra)
    fragment.warnings += toka_schema.check(document, shown)
    return fragment


def _is_v1(metadata: dict[str, Any]) -> bool:
    version = str(metadata.get("version", ""))
    return version.startswith("v1") or "schema_version" in metadata


@dataclass
class AgentSource:
    """Collects an agent's native fields from a Toka document, remembering where each came
    from so that validation errors point at the key the author wrote."""

    file: str
    prefix: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    issues: list[ConfigIssue] = field(default_factory=list)

    @property
    def requires_paths(self) -> tuple[str, ...]:
        """Where each required agent was written, in `requires` order."""
        return tuple(self.sources[f"requires.{i}"] for i in range(len(self.fields.get("requires", []))))

    def at(self, path: str) -> str:
        return ".".join(part for part in (self.prefix, path) if part)

    def problem(self, path: str, message: str) -> None:
        self.issues.append(ConfigIssue(self.file, self.at(path), message))

    def mapping(self, value: Any, path: str) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.problem(path, f"expected a mapping, found {_kind(value)}")
            return {}
        return value

    def sequence(self, value: Any, path: str) -> list[Any]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(path, f"expected a list, found {_kind(value)}")
            return []
        return value

    def set(self, name: str, value: Any, path: str) -> None:
        if value is not None:
            self.fields[name] = value
        self.sources[name] = self.at(path)

    def add_requirements(self, value: Any, path: str) -> None:
        for name, where in self.named(value, path):
            if name not in self.fields.setdefault("requires", []):
                self.sources[f"requires.{len(self.fields['requires'])}"] = self.at(where)
                self.fields["requires"].append(name)

    def add_optional(self, value: Any, path: str) -> None:
        for name, where in self.named(value, path):
            wanted = self.fields.setdefault("optional_requires", [])
            self.sources[f"optional_requires.{len(wanted)}"] = self.at(where)
            wanted.append(name)

    def named(self, value: Any, path: str) -> list[tuple[Any, str]]:
        """Agent names from `{name: reason}`, `[{name: reason}, ...]` or `[name, ...]`."""
        if value is None:
            return []
        if isinstance(value, dict):
            return [(name, f"{path}.{name}") for name in value]
        if not isinstance(value, list):
            self.problem(path, f"expected a mapping of agent names or a list, found {_kind(value)}")
            return []
        found = []
        for i, item in enumerate(value):
            if isinstance(item, dict) and len(item) == 1:
                found.append((next(iter(item)), f"{path}.{i}"))
            elif isinstance(item, str):
                found.append((item, f"{path}.{i}"))
            else:
                self.problem(
                    f"{path}.{i}", f"expected an agent name or {{agent: reason}}, found {_kind(item)}"
                )
        return found

    def add_capabilities(self, value: Any, path: str) -> None:
        for i, name in enumerate(self.sequence(value, path)):
            held = self.fields.setdefault("capabilities", [])
            self.sources[f"capabilities.{len(held)}"] = self.at(f"{path}.{i}")
            held.append(name)

    def add_security(self, security: dict[str, Any], path: str) -> None:
        if "sandbox" in security:
            self.set("sandbox", security["sandbox"], f"{path}.sandbox")
        limits = self.mapping(security.get("resource_limits"), f"{path}.resource_limits")
        for native, toka in LIMIT_KEYS:
            if toka in limits:
                self.fields.setdefault("limits", {})[native] = limits[toka]
                self.sources[f"limits.{native}"] = self.at(f"{path}.resource_limits.{toka}")

    def add_tasks(self, value: Any, path: str) -> None:
        tasks = self.mapping(value, path)
        for i, task in enumerate(self.sequence(tasks.get("default"), f"{path}.default")):
            self.add_task(task, f"{path}.default.{i}", name=f"{i + 1:02d}", condition=None)
        groups = self.mapping(tasks.get("conditional"), f"{path}.conditional")
        for group, entries in groups.items():
            for i, task in enumerate(self.sequence(entries, f"{path}.conditional.{group}")):
                where = f"{path}.conditional.{group}.{i}"
                self.add_task(
                    task, where, name=f"{_slug(str(group), 8)}-{i + 1:02d}", condition=str(group)
                )

    def add_task(self, task: Any, path: str, *, name: str, condition: str | None) -> None:
        index = len(self.fields.setdefault("tasks", []))
        self.sources[f"tasks.{index}"] = self.at(path)
        if not isinstance(task, dict):
            unique = self.unique_task_name(name)
            self.fields["tasks"].append({"kind": "llm", "name": unique, "instruction": task})
            return
        description = task.get("description")
        unique = self.unique_task_name(f"{name}-{_slug(description)}")
        built: dict[str, Any] = {"kind": "llm", "name": unique}
        for native, toka in (
            ("instruction", "description"),
            ("priority", "priority"),
            ("estimated_duration", "estimated_duration"),
            ("estimated_duration", "estimated_time"),
            ("tools", "tools_required"),
        ):
            if toka in task:
                built[native] = task[toka]
                self.sources[f"tasks.{index}.{native}"] = self.at(f"{path}.{toka}")
        if isinstance(built.get("estimated_duration"), (int, float)):
            built["estimated_duration"] = str(built["estimated_duration"])
        if condition is not None:
            built["condition"] = condition
        self.add_requirements(task.get("dependencies"), f"{path}.dependencies")
        self.fields["tasks"].append(built)

    def unique_task_name(self, name: str) -> str:
        """Task names are made from descriptions and group names, which may repeat."""
        taken = {task.get("name") for task in self.fields.get("tasks", [])}
        unique, count = name, 1
        while unique in taken:
            count += 1
            unique = f"{name}-{count}"
        return unique


def build_agent(source: AgentSource, origin: Origin, extra: dict[str, Any]) -> Fragment:
    """Validate what a Toka reader collected; problems point at the author's keys."""
    fragment = Fragment(file=source.file, issues=list(source.issues))
    origin = origin.model_copy(update={"requires_paths": source.requires_paths})
    try:
        agent = Agent.model_validate({**source.fields, "extra": extra})
    except ValidationError as exc:
        fragment.issues += issues_from_validation(exc, source.file, sources=_rooted(source))
        if isinstance(source.fields.get("name"), str):
            fragment.broken_agents.append(source.fields["name"])
        return fragment
    if fragment.issues:
        fragment.broken_agents.append(agent.name)
        return fragment
    fragment.agents.append(agent.located(origin))
    return fragment


def _rooted(source: AgentSource) -> dict[str, str]:
    # Native fields with no mapping of their own sit under the agent's own key path.
    return {"": source.prefix, **source.sources}


def normalize_reporting(reporting: Any) -> Any:
    """Metrics as `[{name, description, type, unit}]`, whichever of Toka's shapes they came in."""
    if not isinstance(reporting, dict) or "metrics" not in reporting:
        return reporting
    metrics = reporting["metrics"]
    if isinstance(metrics, dict):
        items = [{"name": name, "description": text} for name, text in metrics.items()]
    elif isinstance(metrics, list):
        items = []
        for metric in metrics:
            if isinstance(metric, dict) and "name" in metric:
                items.append(metric)
            elif isinstance(metric, dict) and len(metric) == 1:
                name, text = next(iter(metric.items()))
                items.append({"name": name, "description": text})
            else:
                items.append({"name": str(metric), "description": ""})
    else:
        return reporting
    return {**reporting, "metrics": items}


def _slug(text: Any, words: int = 4) -> str:
    found = re.findall(r"[a-z0-9]+", str(text).lower()) if isinstance(text, str) else []
    return "-".join(found[:words])[:40].strip("-") or "task"


def _kind(value: Any) -> str:
    names = {
        list: "a list",
        dict: "a mapping",
        str: "a string",
        bool: "a boolean",
        type(None): "nothing",
    }
    return names.get(type(value), f"a {type(value).__name__}")
