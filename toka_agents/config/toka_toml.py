"""Toka's orchestration TOML: `[orchestration]`, `[security]`, `[llm]` and `[[agents]]`.

Its settings become the orchestration's: `max_concurrent_agents` and the failure policy
(`on_task_failure`, `min_success_ratio`) of `[orchestration]`, the default resource
limits (`[security.resource_limits]`), the LLM (`[llm]`). Each `[[agents]]` table is an agent
whose tasks name the agents they depend on (`dependencies = [...]`); those are hoisted to
the agent, which then requires them. Sections and keys toka-agents does not act on
(`[storage]`, `[monitoring]`, per-agent tables of their own, ...) are kept as they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from toka_agents.config.fragments import Fragment, issues_from_validation
from toka_agents.config.models import LlmSettings, Origin, Settings
from toka_agents.config.toka_spec import FAILURE_POLICY_KEYS, LIMIT_KEYS, AgentSource, build_agent
from toka_agents.errors import ConfigIssue

_AGENT_KEYS = (
    "name",
    "priority",
    "workstream",
    "description",
    "capabilities",
    "tasks",
    "security",
    *FAILURE_POLICY_KEYS,
)
_LLM_KEYS = tuple(name for name in LlmSettings.model_fields if name != "options")
"""The keys of `[llm]` that are settings; any other key is kept in `options`."""


def recognises(document: dict[str, Any]) -> bool:
    if isinstance(document.get("orchestration"), dict):
        return True
    agents = document.get("agents")
    return isinstance(agents, list) and any(
        isinstance(agent, dict) and isinstance(agent.get("tasks"), dict) for agent in agents
    )


def read(document: dict[str, Any], path: Path, shown: str) -> Fragment:
    fragment = _settings(document, shown)
    raw_agents = document.get("agents", [])
    if not isinstance(raw_agents, list):
        fragment.issues.append(ConfigIssue(shown, "agents", "expected a list of [[agents]] tables"))
        return fragment
    sandbox_enabled = _sandbox_enabled(document)
    for i, raw in enumerate(raw_agents):
        agent = _agent(raw, i, shown, sandbox_enabled)
        fragment.agents += agent.agents
        fragment.issues += agent.issues
        fragment.broken_agents += agent.broken_agents
    return fragment


def _sandbox_enabled(document: dict[str, Any]) -> Any:
    security = document.get("security")
    return security.get("sandbox_enabled", True) if isinstance(security, dict) else True


def _settings(document: dict[str, Any], shown: str) -> Fragment:
    fragment = Fragment(file=shown)
    source = AgentSource(shown)
    orchestration = source.mapping(document.get("orchestration"), "orchestration")
    security = source.mapping(document.get("security"), "security")
    llm = source.mapping(document.get("llm"), "llm")

    fields: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if "max_concurrent_agents" in orchestration:
        fields["max_concurrent_agents"] = orchestration["max_concurrent_agents"]
        sources["max_concurrent_agents"] = "orchestration.max_concurrent_agents"
    for key in FAILURE_POLICY_KEYS:
        if key in orchestration:
            fields[key] = orchestration[key]
            sources[key] = f"orchestration.{key}"
    limits = source.mapping(security.get("resource_limits"), "security.resource_limits")
    for native, toka in LIMIT_KEYS:
        if toka in limits:
            fields.setdefault("defaults", {}).setdefault("limits", {})[native] = limits[toka]
            sources[f"defaults.limits.{native}"] = f"security.resource_limits.{toka}"
    if llm:
        fields["llm"] = {key: llm[key] for key in _LLM_KEYS if key in llm}
        if "rate_limit" in llm and "requests_per_minute" not in llm:
            # Toka's gateway read `rate_limit` as requests per minute; it stays in `options` as written.
            fields["llm"]["requests_per_minute"] = llm["rate_limit"]
            sources["llm.requests_per_minute"] = "llm.rate_limit"
        fields["llm"]["options"] = {key: value for key, value in llm.items() if key not in _LLM_KEYS}
        sources["llm"] = "llm"
    fields["extra"] = {key: value for key, value in document.items() if key not in ("agents", "llm")}

    fragment.issues += source.issues
    try:
        settings = Settings.model_validate(fields)
    except ValidationError as exc:
        fragment.issues += issues_from_validation(exc, shown, sources=sources)
        return fragment
    fragment.settings = settings
    return fragment


def _agent(raw: Any, index: int, shown: str, sandbox_enabled: Any) -> Fragment:
    prefix = f"agents.{index}"
    source = AgentSource(shown, prefix=prefix)
    if not isinstance(raw, dict):
        source.problem("", f"expected an [[agents]] table, found {type(raw).__name__}")
        return Fragment(file=shown, issues=source.issues)
    capabilities = source.mapping(raw.get("capabilities"), "capabilities")
    security = source.mapping(raw.get("security"), "security")

    source.set("name", raw.get("name"), "name")
    source.set("description", raw.get("description", ""), "description")
    source.set("priority", raw.get("priority", "medium"), "priority")
    source.set("workstream", raw.get("workstream"), "workstream")
    for key in FAILURE_POLICY_KEYS:
        source.set(key, raw.get(key), key)
    source.add_capabilities(security.get("capabilities_required"), "security.capabilities_required")
    source.add_capabilities(capabilities.get("primary"), "capabilities.primary")
    source.add_capabilities(capabilities.get("secondary"), "capabilities.secondary")
    sandbox_key = f"{prefix}.security.sandbox"
    if "sandbox" not in security and sandbox_enabled is not True:
        # The file-wide switch: its key path is outside this agent's table.
        source.fields["sandbox"] = sandbox_enabled
        source.sources["sandbox"] = sandbox_key = "security.sandbox_enabled"
    source.add_security(security, "security")
    dependencies = source.mapping(raw.get("dependencies"), "dependencies")
    source.add_requirements(dependencies.get("required"), "dependencies.required")
    source.add_optional(dependencies.get("optional"), "dependencies.optional")
    source.add_tasks(raw.get("tasks"), "tasks")

    extra = {key: value for key, value in raw.items() if key not in (*_AGENT_KEYS, "dependencies")}
    origin = Origin(
        file=shown,
        path=prefix,
        dialect="toka-toml",
        requires_key="tasks.default",
        sandbox_key=sandbox_key,
    )
    return build_agent(source, origin, extra)
