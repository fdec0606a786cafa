"""The plan's data: every task with its settings fixed, every agent with its policy, and the
run as a whole (agents in wave order, the edges, the waves). Plain frozen models."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from toka_agents.config.inputs import InputDeclaration
from toka_agents.config.limits import DEFAULT_WORKSPACE_LIMIT, format_bytes, format_seconds
from toka_agents.config.mcp import McpServer
from toka_agents.config.models import CodeSource, FailurePolicy, LlmSettings, Priority
from toka_agents.config.workspace import Output, WorkspaceSeed

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
    expected_output: str | None = None
    asks_human: bool = False
    """An LLM task that may ask a person (`human: ask`): it has the tool ask_human."""
    needs_approval: bool = False
    """It waits for a person's approval before it starts (`approval: required`)."""
    approval_tools: tuple[str, ...] = ()
    """The tools each of whose calls waits for a person's approval (`approval: {tools: ...}`)."""
    sandbox_session: bool = True
    """An LLM task whose tool calls share one live container (`sandbox_session`)."""
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
    outputs: tuple[Output, ...] = ()
    """The files it declares it writes, named to the agents after it."""
    mcp_servers: tuple[McpServer, ...] = ()
    """The MCP servers its LLM tasks use: the orchestration's and its own, by name."""
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
    `max_concurrent_agents`, or the plan's number of tasks if fewer); 0: none, every task
    starts a fresh container."""
    agents: tuple[PlannedAgent, ...]
    edges: tuple[tuple[str, str], ...]
    optional_edges: tuple[tuple[str, str], ...] = ()
    ordering_edges: tuple[tuple[str, str], ...] = ()
    """The edges that order agents: required ones, plus optional ones in `order` mode."""
    waves: tuple[tuple[str, ...], ...]
    conditions: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    inputs: dict[str, Any] = {}
    """The value of each input that has one, of its declared type: the values the run uses."""
    declared_inputs: dict[str, InputDeclaration] = {}
    """The config's `inputs:`, by name."""
    workspace_seed: WorkspaceSeed | None = None
    """What the workspace holds before the first task, its placeholders filled and a `from`
    directory made absolute."""
    outputs: tuple[Output, ...] = ()
    """The files of the workspace handed back as artifacts when the run ends."""
    human_timeout: float = 3600.0
    """Seconds a question to a person waits for its answer."""

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
            **(
                {
                    "declared_inputs": {
                        name: declared.model_dump(exclude_none=True)
                        for name, declared in self.declared_inputs.items()
                    },
                    "inputs": self.inputs,
                }
                if self.declared_inputs
                else {}
            ),
            **(
                {"workspace": self.workspace_seed.model_dump(by_alias=True, exclude_none=True)}
                if self.workspace_seed
                else {}
            ),
            **(
                {"outputs": [output.model_dump(exclude_none=True) for output in self.outputs]}
                if self.outputs
                else {}
            ),
        }


def _task_json(task: PlannedTask) -> dict[str, Any]:
    return {
        "id": task.id,
        "name": task.name,
        "kind": task.kind,
        **({"instruction": task.instruction} if task.instruction is not None else {}),
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
