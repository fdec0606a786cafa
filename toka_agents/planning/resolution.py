"""Each task's effective settings: limits (task over agent over defaults over toka's own),
capabilities and the network they grant, workspace access, image, env, retries, and each
agent's failure policy and model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from toka_agents.config import capabilities
from toka_agents.config.models import (
    DEFAULT_IMAGE,
    DEFAULT_LIMITS,
    Agent,
    CodeTask,
    Limits,
    LlmOverrides,
    Orchestration,
)
from toka_agents.errors import ConfigIssue
from toka_agents.planning.models import (
    NATIVE_FAILURE_POLICY,
    TOKA_FAILURE_POLICY,
    PlannedAgent,
    PlannedTask,
    TaskLimits,
)


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


def granted_capabilities(agent: Agent, orchestration: Orchestration) -> tuple[str, ...]:
    return tuple(dict.fromkeys([*orchestration.defaults.capabilities, *agent.capabilities]))


def plan_agent(
    agent: Agent,
    orchestration: Orchestration,
    conditions: set[str],
    overrides: LlmOverrides,
    input_env: Mapping[str, str] | None = None,
) -> PlannedAgent:
    """The agent and its tasks with their settings fixed; `input_env` (`TOKA_INPUT_*`) joins
    every task's env, over the config's."""
    defaults = orchestration.defaults
    agent_limits = agent.limits.over(defaults.limits.over(DEFAULT_LIMITS))
    granted = granted_capabilities(agent, orchestration)
    image = agent.image or defaults.image or DEFAULT_IMAGE
    env = {**defaults.env, **agent.env, **(input_env or {})}
    retries = agent.retries if "retries" in agent.model_fields_set else defaults.retries
    native = NATIVE_FAILURE_POLICY if agent.origin.dialect == "native" else TOKA_FAILURE_POLICY
    on_task_failure = agent.on_task_failure or orchestration.on_task_failure or native[0]
    ratio = next(
        r for r in (agent.min_success_ratio, orchestration.min_success_ratio, native[1]) if r is not None
    )
    # An allowed unsandboxed agent gets the least restricted sandbox there is.
    access = capabilities.network_access(granted, agent.network_allow) if agent.sandbox else "full"
    network = access != "none"
    human = agent.human or defaults.human
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
                expected_output=None if isinstance(task, CodeTask) else task.expected_output,
                asks_human=not isinstance(task, CodeTask) and (task.human or human) == "ask",
                needs_approval=task.approval == "required",
                approval_tools=tuple(getattr(task.approval, "tools", ())),
                sandbox_session=not isinstance(task, CodeTask)
                and (
                    task.sandbox_session if task.sandbox_session is not None else agent.sandbox_session
                ),
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
        outputs=tuple(agent.outputs),
        mcp_servers=tuple({m.name: m for m in orchestration.mcp_servers + agent.mcp_servers}.values()),
        source=agent.origin.file,
        extra=agent.extra,
    )
