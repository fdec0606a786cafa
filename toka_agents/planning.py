"""Orchestration -> Plan: the dependency graph, its waves, and every task's effective settings.

Pure data in, pure data out. The planner checks the graph (unknown agents, cycles named in
full), orders agents in waves (topological layers, priority order inside a layer), and fixes
what each task runs with: limits, capabilities, network, workspace access, image, retries.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from toka_agents.config import capabilities
from toka_agents.config.collector import collector_paused
from toka_agents.config.limits import DEFAULT_WORKSPACE_LIMIT, format_bytes, format_seconds
from toka_agents.config.loader import load_paths
from toka_agents.config.models import (
    DEFAULT_IMAGE,
    DEFAULT_LIMITS,
    PRIORITY_RANK,
    Agent,
    CodeSource,
    CodeTask,
    FailurePolicy,
    Limits,
    LlmOverrides,
    LlmSettings,
    Orchestration,
    Priority,
)
from toka_agents.errors import ConfigError, ConfigIssue

OptionalMode = Literal["ignore", "order"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True)


class TaskLimits(_Frozen):
    """Limits with every field fixed: bytes, cores, seconds, processes."""

    memory: int
    cpu: float
    timeout: float
    pids: int
    workspace: int


class PlannedTask(_Frozen):
    """One agent task with everything it runs with."""

    id: str
    agent: str
    name: str
    index: int
    kind: Literal["code", "llm"]
    description: str = ""
    code: CodeSource | None = None
    instruction: str | None = None
    limits: TaskLimits
    image: str
    capabilities: tuple[str, ...] = ()
    network: bool = False
    docker_network: str | None = None
    """The Docker network the task's container joins: the run's `sandbox.network` when the
    task has the network, else None."""
    network_allow: tuple[str, ...] | None = None
    """Limited network: the only hosts (`host`, `host:port`) the task may reach, through the
    egress proxy, whose upstream side joins `docker_network`. None: not limited."""
    workspace_writable: bool = False
    env: dict[str, str] = {}
    retries: int = 0
    condition: str | None = None
    priority: Priority | None = None
    """The task's own priority: a failed `critical` task fails its agent whatever its policy."""


class PlannedAgent(_Frozen):
    name: str
    description: str = ""
    priority: Priority
    workstream: str
    requires: tuple[str, ...] = ()
    optional_requires: tuple[str, ...] = ()
    sandbox: bool = True
    llm: LlmSettings | None = None
    on_task_failure: FailurePolicy = "stop"
    min_success_ratio: float = 1.0
    tasks: tuple[PlannedTask, ...]
    source: str = ""
    extra: dict[str, Any] = {}

    def stops_after_failure_of(self, task: PlannedTask) -> bool:
        """Whether a failure of `task` ends this agent, its later tasks not run."""
        return self.on_task_failure == "stop" or task.priority == "critical"

    def verdict(self, done: int, attempted: int) -> tuple[bool, str]:
        """Whether the agent completed, having done `done` of the `attempted` tasks that ran to
        an end, and how to say so."""
        total = len(self.tasks)
        if done == total:
            return True, f"{total} tasks done"
        ratio = done / attempted if attempted else 1.0
        threshold = f"min_success_ratio {self.min_success_ratio:g}"
        if ratio >= self.min_success_ratio:
            return True, f"{done} of {attempted} tasks done, meeting {threshold}"
        return False, f"{done} of {attempted} tasks done, below {threshold}"


TOKA_FAILURE_POLICY: tuple[FailurePolicy, float] = ("continue", 0.8)
"""Agents loaded from Toka's specs go on after a failed task and complete when 80% are done:
Toka's own rule."""
NATIVE_FAILURE_POLICY: tuple[FailurePolicy, float] = ("stop", 1.0)


class Plan(_Frozen):
    """The whole run: agents in wave order, the edges between them, and the waves."""

    name: str
    description: str = ""
    max_concurrent_agents: int
    pool_size: int = 0
    """Warm sandbox containers per creation setting (`sandbox.pool_size`, by default
    `max_concurrent_agents`); 0: none, every task starts a fresh container."""
    agents: tuple[PlannedAgent, ...]
    edges: tuple[tuple[str, str], ...]
    optional_edges: tuple[tuple[str, str], ...] = ()
    ordering_edges: tuple[tuple[str, str], ...] = ()
    """The edges that order agents: required ones, plus optional ones in `order` mode."""
    waves: tuple[tuple[str, ...], ...]
    conditions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def tasks(self) -> list[PlannedTask]:
        return [task for agent in self.agents for task in agent.tasks]

    @property
    def workspace_limit(self) -> int:
        """The size of the run's workspace: the largest any of its tasks is given."""
        return max((task.limits.workspace for task in self.tasks), default=DEFAULT_WORKSPACE_LIMIT)

    def agent(self, name: str) -> PlannedAgent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        """The plan as `toka plan --json` prints it."""
        return {
            "name": self.name,
            "description": self.description,
            "max_concurrent_agents": self.max_concurrent_agents,
            "pool_size": self.pool_size,
            "agents": [
                {
                    "name": agent.name,
                    "priority": agent.priority,
                    "workstream": agent.workstream,
                    "requires": list(agent.requires),
                    "optional_requires": list(agent.optional_requires),
                    "on_task_failure": agent.on_task_failure,
                    "min_success_ratio": agent.min_success_ratio,
                    "tasks": [_task_json(task) for task in agent.tasks],
                }
                for agent in self.agents
            ],
            "edges": [list(edge) for edge in self.edges],
            "optional_edges": [list(edge) for edge in self.optional_edges],
            "waves": [list(wave) for wave in self.waves],
            "conditions": list(self.conditions),
            "warnings": list(self.warnings),
        }


def _task_json(task: PlannedTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "kind": task.kind,
        "priority": task.priority,
        "limits": {
            "memory": format_bytes(task.limits.memory),
            "cpu": task.limits.cpu,
            "timeout": format_seconds(task.limits.timeout),
            "pids": task.limits.pids,
            "workspace": format_bytes(task.limits.workspace),
        },
        "image": task.image,
        "network": task.network,
        "docker_network": task.docker_network,
        **({"network_allow": list(task.network_allow)} if task.network_allow is not None else {}),
        "workspace": "read-write" if task.workspace_writable else "read-only",
        "condition": task.condition,
    }


def plan(
    orchestration: Orchestration,
    *,
    conditions: Collection[str] = (),
    optional_dependencies: OptionalMode | None = None,
    max_concurrent_agents: int | None = None,
    allow_unsandboxed: bool | None = None,
    llm_overrides: LlmOverrides | None = None,
) -> Plan:
    """Resolve the graph and fix every task's settings. Raises `ConfigError` on graph problems."""
    with collector_paused():
        return _plan(
            orchestration,
            conditions=conditions,
            optional_dependencies=optional_dependencies,
            max_concurrent_agents=max_concurrent_agents,
            allow_unsandboxed=allow_unsandboxed,
            llm_overrides=llm_overrides,
        )


def _plan(
    orchestration: Orchestration,
    *,
    conditions: Collection[str],
    optional_dependencies: OptionalMode | None,
    max_concurrent_agents: int | None,
    allow_unsandboxed: bool | None,
    llm_overrides: LlmOverrides | None,
) -> Plan:
    allowed = orchestration.allow_unsandboxed if allow_unsandboxed is None else allow_unsandboxed
    issues = graph_issues(orchestration.agents) + sandbox_issues(orchestration.agents, allowed)
    if issues:
        raise ConfigError(issues)
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
        for warning in capabilities.warnings_for(agent.name, _granted(agent, orchestration))
    ]
    warnings += [
        f"agent {agent.name!r} asked for no sandbox; it runs in one with the network and a "
        "writable workspace, as toka-agents never runs code outside a container"
        for agent in orchestration.agents
        if not agent.sandbox
    ]
    ordering = list(edges)
    if mode == "order":
        ordering += _acyclic_subset(optional_edges, edges, warnings)

    waves = _waves(agents, ordering, order)
    planned = [
        _plan_agent(agents[name], orchestration, set(conditions), llm_overrides or LlmOverrides())
        for wave in waves
        for name in wave
    ]
    concurrency = max_concurrent_agents or orchestration.max_concurrent_agents
    pool_size = orchestration.sandbox.pool_size
    return Plan(
        name=orchestration.name,
        description=orchestration.description,
        max_concurrent_agents=concurrency,
        pool_size=concurrency if pool_size is None else pool_size,
        agents=tuple(planned),
        edges=tuple(edges),
        optional_edges=tuple(optional_edges),
        ordering_edges=tuple(ordering),
        waves=tuple(tuple(wave) for wave in waves),
        conditions=tuple(sorted(conditions)),
        warnings=tuple(warnings),
    )


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


def validate(
    paths: Sequence[str | Path],
    *,
    conditions: Collection[str] = (),
    optional_dependencies: OptionalMode | None = None,
    max_concurrent_agents: int | None = None,
    allow_unsandboxed: bool | None = None,
    llm_overrides: LlmOverrides | None = None,
) -> Validation:
    """Load and plan, reporting every problem across all files and agents at once."""
    loaded = load_paths(paths)
    issues = list(loaded.issues)
    warnings: list[ConfigIssue | str] = list(loaded.warnings)
    if loaded.orchestration is None:
        return Validation(issues, warnings)
    orchestration = loaded.orchestration
    allowed = orchestration.allow_unsandboxed if allow_unsandboxed is None else allow_unsandboxed
    issues += graph_issues(orchestration.agents, also_known=loaded.broken_agents)
    issues += sandbox_issues(orchestration.agents, allowed)
    if issues:
        return Validation(issues, warnings)
    planned = plan(
        orchestration,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        max_concurrent_agents=max_concurrent_agents,
        allow_unsandboxed=allowed,
        llm_overrides=llm_overrides,
    )
    warnings += planned.warnings
    return Validation([], warnings, planned)


def sandbox_issues(agents: Sequence[Agent], allowed: bool) -> list[ConfigIssue]:
    """Agents that ask to run without a sandbox, unless the run allows it."""
    if allowed:
        return []
    return [
        ConfigIssue(
            agent.origin.file,
            agent.origin.sandbox_key,
            f"agent {agent.name!r} asks to run without a sandbox; toka-agents refuses unless the "
            "run allows it (allow_unsandboxed: true, or --allow-unsandboxed)",
        )
        for agent in agents
        if not agent.sandbox
    ]


def graph_issues(agents: Sequence[Agent], also_known: Collection[str] = ()) -> list[ConfigIssue]:
    """Unknown required agents and cycles, each located at the `requires` that causes it.

    `also_known` names agents that exist but failed validation: requiring them is not an error.
    """
    names = {agent.name for agent in agents}
    issues: list[ConfigIssue] = []
    for agent in agents:
        for i, needed in enumerate(agent.requires):
            if needed not in names and needed not in also_known:
                known = ", ".join(sorted(names)) or "none"
                issues.append(
                    ConfigIssue(
                        agent.origin.file,
                        agent.origin.requirement_key(i),
                        f"agent {agent.name!r} requires {needed!r}, which is not defined "
                        f"(defined agents: {known})",
                    )
                )
    by_name = {agent.name: agent for agent in agents}
    graph = {agent.name: [n for n in agent.requires if n in names] for agent in agents}
    for cycle in find_cycles(graph):
        first = by_name[cycle[0]]
        shown = " -> ".join([*cycle, cycle[0]])
        issues.append(
            ConfigIssue(
                first.origin.file,
                first.origin.key(first.origin.requires_key),
                f"dependency cycle: {shown} (each agent requires the next)",
            )
        )
    return issues


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, in walking order.

    Iterative Tarjan, so that 10,000-agent chains do not hit the recursion limit.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph[child])))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph[node]:
                    components.append(component)
    position = {name: i for i, name in enumerate(graph)}
    return [_walk_cycle(graph, set(c), min(c, key=position.__getitem__)) for c in components]


def _walk_cycle(graph: dict[str, list[str]], members: set[str], start: str) -> list[str]:
    """A path inside one strongly connected component from `start` back to `start`."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in graph[node]:
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return path[::-1]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return [start]


def _acyclic_subset(
    optional: Iterable[tuple[str, str]], required: Iterable[tuple[str, str]], warnings: list[str]
) -> list[tuple[str, str]]:
    """Optional edges that can order agents without closing a cycle; the others are warned about."""
    after: dict[str, set[str]] = {}
    for before, later in required:
        after.setdefault(before, set()).add(later)
    kept = []
    for before, later in optional:
        path = _path(after, later, before)
        if path is not None:
            loop = " -> ".join([before, *path])
            warnings.append(
                f"optional dependency of {later!r} on {before!r} does not order them: "
                f"it would close the cycle {loop}"
            )
            continue
        after.setdefault(before, set()).add(later)
        kept.append((before, later))
    return kept


def _path(after: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """A path start -> ... -> goal along `after`, or None."""
    parents: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            if node == goal:
                path: list[str] = []
                step: str | None = node
                while step is not None:
                    path.append(step)
                    step = parents[step]
                return path[::-1]
            for child in sorted(after.get(node, ())):
                if child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    return None


def _waves(
    agents: dict[str, Agent], edges: Iterable[tuple[str, str]], order: dict[str, int]
) -> list[list[str]]:
    waiting = {name: 0 for name in agents}
    dependents: dict[str, list[str]] = {name: [] for name in agents}
    for before, later in set(edges):
        waiting[later] += 1
        dependents[before].append(later)

    def rank(name: str) -> tuple[int, int]:
        return PRIORITY_RANK[agents[name].priority], order[name]

    wave = sorted((name for name, count in waiting.items() if count == 0), key=rank)
    waves = []
    while wave:
        waves.append(wave)
        following = []
        for name in wave:
            for later in dependents[name]:
                waiting[later] -= 1
                if waiting[later] == 0:
                    following.append(later)
        wave = sorted(following, key=rank)
    return waves


def _granted(agent: Agent, orchestration: Orchestration) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*orchestration.defaults.capabilities, *agent.capabilities]))


def _plan_agent(
    agent: Agent, orchestration: Orchestration, conditions: set[str], overrides: LlmOverrides
) -> PlannedAgent:
    defaults = orchestration.defaults
    agent_limits = agent.limits.over(defaults.limits.over(DEFAULT_LIMITS))
    granted = _granted(agent, orchestration)
    image = agent.image or defaults.image or DEFAULT_IMAGE
    env = {**defaults.env, **agent.env}
    retries = agent.retries if "retries" in agent.model_fields_set else defaults.retries
    native = NATIVE_FAILURE_POLICY if agent.origin.dialect == "native" else TOKA_FAILURE_POLICY
    on_task_failure = agent.on_task_failure or orchestration.on_task_failure or native[0]
    ratio = next(
        r for r in (agent.min_success_ratio, orchestration.min_success_ratio, native[1]) if r is not None
    )
    # An allowed unsandboxed agent gets the least restricted sandbox there is.
    access = capabilities.network_access(granted, agent.network_allow) if agent.sandbox else "full"
    network = access != "none"
    tasks = []
    fixed_limits: dict[Limits, TaskLimits] = {}
    for task in agent.tasks:
        if task.condition is not None and task.condition not in conditions:
            continue
        limits = task.limits.over(agent_limits)
        if limits not in fixed_limits:
            fixed_limits[limits] = TaskLimits(
                memory=limits.memory,
                cpu=limits.cpu,
                timeout=limits.timeout,
                pids=limits.pids,
                workspace=limits.workspace,
            )
        tasks.append(
            PlannedTask(
                id=f"{agent.name}/{task.name}",
                agent=agent.name,
                name=task.name,
                index=len(tasks),
                kind=task.kind,
                description=task.description,
                code=task.code if isinstance(task, CodeTask) else None,
                instruction=None if isinstance(task, CodeTask) else task.instruction,
                limits=fixed_limits[limits],
                image=task.image or image,
                capabilities=granted,
                network=network,
                docker_network=orchestration.sandbox.network if network else None,
                network_allow=tuple(agent.network_allow) if access == "limited" else None,
                workspace_writable=capabilities.grants_workspace_write(granted) or not agent.sandbox,
                env=env,
                retries=retries,
                condition=task.condition,
                priority=task.priority,
            )
        )
    return PlannedAgent(
        name=agent.name,
        description=agent.description,
        priority=agent.priority,
        workstream=agent.workstream or agent.name,
        requires=tuple(agent.requires),
        optional_requires=tuple(agent.optional_requires),
        sandbox=agent.sandbox,
        llm=overrides.over(agent.llm or orchestration.llm),
        on_task_failure=on_task_failure,
        min_success_ratio=ratio,
        tasks=tuple(tasks),
        source=agent.origin.file,
        extra=agent.extra,
    )
