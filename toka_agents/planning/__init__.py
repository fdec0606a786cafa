"""Orchestration -> Plan: the dependency graph, its waves, and every task's effective settings.

Pure data in, pure data out. The planner checks the graph (unknown agents, cycles named in
full), orders agents in waves (topological layers, priority order inside a layer), and fixes
what each task runs with: limits, capabilities, network, workspace access, image, retries.
The plan's data types are in `models`, the graph's algorithms in `graph`, each task's
settings in `resolution`; this module puts them together (`plan`, `validate`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, Unpack

from toka_agents.config import capabilities
from toka_agents.config.collector import collector_paused
from toka_agents.config.inputs import InputValue, input_env, resolve_inputs
from toka_agents.config.loader import load_paths
from toka_agents.config.models import LlmOverrides, Orchestration
from toka_agents.config.placeholders import PLACEHOLDER, fill_placeholders
from toka_agents.config.workspace import WorkspaceSeed
from toka_agents.errors import ConfigError, ConfigIssue
from toka_agents.planning.graph import acyclic_subset, find_cycles, graph_issues, waves_of
from toka_agents.planning.models import (
    OptionalMode,
    Plan,
    PlannedAgent,
    PlannedTask,
    TaskLimits,
)
from toka_agents.planning.resolution import granted_capabilities, plan_agent, sandbox_issues

__all__ = [
    "OptionalMode",
    "Plan",
    "PlannedAgent",
    "PlannedTask",
    "TaskLimits",
    "Validation",
    "find_cycles",
    "graph_issues",
    "plan",
    "sandbox_issues",
    "select_agents",
    "validate",
    "with_inputs",
]


@collector_paused()
def plan(
    orchestration: Orchestration,
    *,
    conditions: Collection[str] = (),
    optional_dependencies: OptionalMode | None = None,
    max_concurrent_agents: int | None = None,
    allow_unsandboxed: bool | None = None,
    llm_overrides: LlmOverrides | None = None,
    inputs: Mapping[str, Any] | None = None,
    require_inputs: bool = True,
) -> Plan:
    """Resolve the graph and fix every task's settings, its placeholders filled with `inputs`
    (by name; text is read as each input's type, absent ones take their default). Raises
    `ConfigError` with every problem of the graph and the inputs at once.

    `require_inputs=False` checks a config alone: a required input with no value is then no
    problem, and its placeholders are filled with nothing (a plan to show, not to run)."""
    allowed = orchestration.allow_unsandboxed if allow_unsandboxed is None else allow_unsandboxed
    issues = graph_issues(orchestration.agents) + sandbox_issues(orchestration.agents, allowed)
    written = orchestration
    orchestration, values, problems = with_inputs(orchestration, inputs, require=require_inputs)
    issues += problems
    if issues:
        raise ConfigError(issues)
    inputs_env = input_env(values) if orchestration.inputs else {}
    mode = optional_dependencies or orchestration.optional_dependencies
    agents = {agent.name: agent for agent in orchestration.agents}
    order = {agent.name: i for i, agent in enumerate(orchestration.agents)}

    edges = [(needed, agent.name) for agent in orchestration.agents for needed in agent.requires]
    optional_edges = [
        (wanted, agent.name)
        for agent in orchestration.agents
        for wanted in agent.optional_requires
        if wanted in agents and wanted != agent.name
    ]
    warnings = [
        warning
        for agent in orchestration.agents
        for warning in capabilities.warnings_for(agent.name, granted_capabilities(agent, orchestration))
    ]
    warnings += [
        f"agent {agent.name!r} asked for no sandbox; it runs in one with the network and a "
        "writable workspace, as toka-agents never runs code outside a container"
        for agent in orchestration.agents
        if not agent.sandbox
    ]
    ordering = list(edges)
    if mode == "order":
        ordering += acyclic_subset(optional_edges, edges, warnings)

    waves = waves_of(agents, ordering, order)
    planned = [
        plan_agent(
            agents[name], orchestration, set(conditions), llm_overrides or LlmOverrides(), inputs_env
        )
        for wave in waves
        for name in wave
    ]
    concurrency = max_concurrent_agents or orchestration.max_concurrent_agents
    pool_size = orchestration.sandbox.pool_size
    # By default no more containers wait than the plan has tasks to claim them.
    default_pool = min(concurrency, sum(len(agent.tasks) for agent in planned))
    return Plan(
        name=orchestration.name,
        description=orchestration.description,
        max_concurrent_agents=concurrency,
        pool_size=default_pool if pool_size is None else pool_size,
        agents=tuple(planned),
        edges=tuple(edges),
        optional_edges=tuple(optional_edges),
        ordering_edges=tuple(ordering),
        waves=tuple(tuple(wave) for wave in waves),
        conditions=tuple(sorted(conditions)),
        warnings=tuple(warnings),
        inputs=values,
        declared_inputs=orchestration.inputs,
        workspace_seed=seed_with_absolute_path(written, orchestration.workspace),
        outputs=tuple(dict.fromkeys([*orchestration.outputs, *(o for a in planned for o in a.outputs)])),
        human_timeout=orchestration.human_timeout,
    )


def seed_with_absolute_path(written: Orchestration, seed: WorkspaceSeed | None) -> WorkspaceSeed | None:
    """`seed` (filled) with a relative `from` made absolute: a path written in the config is
    relative to the directory of its (first) file, one that an input gave (the text starts with
    a placeholder, `from: "{repo}"`) to the current directory, as a command line's would be."""
    if seed is None or seed.from_ is None or not seed.from_.strip():
        return seed
    path = Path(seed.from_).expanduser()
    if not path.is_absolute():
        from_input = written.workspace is not None and PLACEHOLDER.match(written.workspace.from_ or "")
        base = Path.cwd() if from_input or not written.sources else Path(written.sources[0]).parent
        path = base / path
    return seed.model_copy(update={"from_": str(path.absolute())})


def with_inputs(
    orchestration: Orchestration, inputs: Mapping[str, Any] | None, *, require: bool = True
) -> tuple[Orchestration, dict[str, InputValue], list[ConfigIssue]]:
    """The orchestration with its placeholders filled, the value of each input that has one,
    and every problem with the values given and the placeholders."""
    values, issues = resolve_inputs(orchestration.inputs, inputs, require=require)
    filled, problems = fill_placeholders(orchestration, values)
    return filled, values, issues + problems


def select_agents(orchestration: Orchestration, names: Collection[str]) -> Orchestration:
    """The orchestration with only the named agents and every agent they require, directly
    or not, in their order. Optional requirements bring in nothing. Raises `ConfigError`
    (located at the run parameter `agents`) naming any agent that does not exist."""
    by_name = {agent.name: agent for agent in orchestration.agents}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        known = ", ".join(by_name) or "none"
        raise ConfigError(
            ConfigIssue(
                "<run parameters>",
                "agents",
                f"{name!r} is not an agent of {orchestration.name} (its agents: {known})",
            )
            for name in unknown
        )
    chosen: set[str] = set()
    worklist = list(names)
    while worklist:
        name = worklist.pop()
        if name in chosen or name not in by_name:  # a missing requirement is the planner's to name
            continue
        chosen.add(name)
        worklist.extend(by_name[name].requires)
    kept = [agent for agent in orchestration.agents if agent.name in chosen]
    return orchestration.model_copy(update={"agents": kept})


@dataclass
class Validation:
    """Every problem found in one pass, the warnings, and the plan when there were no problems."""

    issues: list[ConfigIssue]
    warnings: list[ConfigIssue | str] = field(default_factory=list)
    plan: Plan | None = None

    @property
    def ok(self) -> bool:
        return not self.issues


class PlanSettings(TypedDict, total=False):
    """The keyword arguments of `plan`, which `validate` passes on."""

    conditions: Collection[str]
    optional_dependencies: OptionalMode | None
    max_concurrent_agents: int | None
    allow_unsandboxed: bool | None
    llm_overrides: LlmOverrides | None
    inputs: Mapping[str, Any] | None
    require_inputs: bool


def validate(paths: Sequence[str | Path], **settings: Unpack[PlanSettings]) -> Validation:
    """Load and plan, reporting every problem across all files and agents at once (`plan`
    says what its settings do)."""
    loaded = load_paths(paths)
    issues = list(loaded.issues)
    warnings: list[ConfigIssue | str] = list(loaded.warnings)
    if loaded.orchestration is None:
        return Validation(issues, warnings)
    orchestration = loaded.orchestration
    allowed = settings.get("allow_unsandboxed")
    allowed = orchestration.allow_unsandboxed if allowed is None else allowed
    issues += graph_issues(orchestration.agents, also_known=loaded.broken_agents)
    issues += sandbox_issues(orchestration.agents, allowed)
    if not loaded.issues:  # values are checked against a config that loaded whole
        given, required = settings.get("inputs"), settings.get("require_inputs", True)
        issues += with_inputs(orchestration, given, require=required)[2]
    if issues:
        return Validation(issues, warnings)
    planned = plan(orchestration, **{**settings, "allow_unsandboxed": allowed})
    warnings += planned.warnings
    return Validation([], warnings, planned)
