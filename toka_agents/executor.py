"""Runs one agent task: a code task goes to the sandbox; the result becomes a `TaskOutcome`.

The executor never talks to Docker or HTTP itself, and knows nothing of Prefect: it is
handed a `Sandbox`, and returns plain data that reporting turns into Prefect states.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from toka_agents.config.limits import format_bytes
from toka_agents.errors import SandboxError
from toka_agents.planning import Plan, PlannedTask
from toka_agents.sandbox import Sandbox, SandboxCancelled, SandboxResult, SandboxSpec
from toka_agents.sandbox.containers import OutputCallback

Status = Literal["completed", "failed", "skipped", "cancelled", "dry-run"]


class TaskOutcome(BaseModel):
    """What one agent task did: the Prefect task's return value."""

    task_id: str
    agent: str
    task: str
    status: Status
    message: str = ""
    exit_code: int | None = None
    stdout_tail: str = ""
    stderr_tail: str = ""
    output_truncated: bool = False
    duration: float | None = None
    peak_memory: int | None = None
    cpu_seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status in ("completed", "dry-run")


@dataclass
class ExecutionContext:
    """What every task of one run shares."""

    sandbox: Sandbox | None
    workspace: Path | None
    run_id: str = ""
    sandbox_error: str | None = None
    dry_run: bool = False
    labels: dict[str, str] = field(default_factory=dict)


def llm_refusal(plan: Plan, *, dry_run: bool) -> str | None:
    """Why this plan cannot run its LLM tasks, in one message, or None when it can.

    Checked before any task starts, so a run never stops halfway for want of a model.
    """
    if dry_run:
        return None
    agents = [agent for agent in plan.agents if any(task.kind == "llm" for task in agent.tasks)]
    if not agents:
        return None
    count = sum(1 for agent in agents for task in agent.tasks if task.kind == "llm")
    names = ", ".join(agent.name for agent in agents)
    unconfigured = [agent.name for agent in agents if agent.llm is None]
    if unconfigured:
        which = "" if len(unconfigured) == len(agents) else f" for {', '.join(unconfigured)}"
        return (
            f"{count} LLM task(s) of agents {names} need an LLM provider, and none is "
            f"configured{which}. Configure one in the orchestration, e.g. "
            "`llm: {provider: openai, model: gpt-4o-mini, api_key_env: OPENAI_API_KEY}` "
            "(native YAML) or an [llm] table (orchestration TOML), or run with --dry-run "
            "(flow parameter dry_run) to walk the plan without a model."
        )
    return (
        f"{count} LLM task(s) of agents {names} are configured for a provider, but this "
        "version of toka-agents has no LLM agent loop to run them; run with --dry-run "
        "(flow parameter dry_run) to walk the plan in Prefect."
    )


def run_task(
    task: PlannedTask,
    context: ExecutionContext,
    on_output: OutputCallback | None = None,
    upstream: dict[str, TaskOutcome] | None = None,
) -> TaskOutcome:
    """Run one task and say how it went. Never raises for a task's own failure.

    `upstream` holds the last outcome of each finished agent this one requires or optionally
    depends on; code sees it as JSON in `TOKA_UPSTREAM`.
    """
    if context.dry_run:
        return _outcome(task, "dry-run", f"dry run: would run {_what(task)}")
    if task.kind != "code" or task.code is None:
        return _outcome(task, "failed", f"{task.id} is an LLM task, and no LLM agent loop is configured")
    if context.sandbox is None:
        return _outcome(task, "failed", f"sandbox error: {context.sandbox_error or 'no sandbox'}")
    try:
        result = context.sandbox.run(sandbox_spec(task, context, upstream or {}), on_output)
    except SandboxCancelled:
        return _outcome(task, "cancelled", "cancelled before it started")
    except SandboxError as exc:
        return _outcome(task, "failed", f"sandbox error: {exc}")
    return outcome_from_result(task, result)


def sandbox_spec(
    task: PlannedTask, context: ExecutionContext, upstream: dict[str, TaskOutcome] | None = None
) -> SandboxSpec:
    """The container a code task runs in: its limits, network, workspace access and code."""
    assert task.code is not None and task.code.source is not None
    handed_on = {
        agent: {
            "task": o.task_id,
            "status": o.status,
            "message": o.message,
            "stdout_tail": o.stdout_tail[-1000:],
        }
        for agent, o in (upstream or {}).items()
    }
    return SandboxSpec(
        image=task.image,
        language=task.code.language,
        source=task.code.source,
        memory=task.limits.memory,
        cpus=task.limits.cpu,
        pids=task.limits.pids,
        timeout=task.limits.timeout,
        network=task.docker_network if task.network else None,
        workspace=context.workspace,
        workspace_writable=task.workspace_writable,
        env={
            **task.env,
            "TOKA_AGENT": task.agent,
            "TOKA_TASK": task.name,
            "TOKA_RUN_ID": context.run_id,
            "TOKA_WORKSPACE": "/workspace",
            "TOKA_UPSTREAM": json.dumps(handed_on),
        },
        labels={**context.labels, "org.toka-agents.task": task.id},
        name=f"toka-{task.agent}-{task.name}"[:60],
    )


def outcome_from_result(task: PlannedTask, result: SandboxResult) -> TaskOutcome:
    failure = result.failure
    status: Status = "completed" if failure is None else ("cancelled" if result.cancelled else "failed")
    message = failure or f"exit code 0 in {result.duration:.2f}s"
    cut = [
        f"{name} cut at {format_bytes(result.output_limit)} of {format_bytes(size)}"
        for name, size, truncated in (
            ("stdout", result.stdout_bytes, result.stdout_truncated),
            ("stderr", result.stderr_bytes, result.stderr_truncated),
        )
        if truncated
    ]
    if cut:
        message += f" ({'; '.join(cut)})"
    return TaskOutcome(
        task_id=task.id,
        agent=task.agent,
        task=task.name,
        status=status,
        message=message,
        exit_code=result.exit_code,
        stdout_tail=result.stdout_tail[-2000:],
        stderr_tail=result.stderr_tail[-2000:],
        output_truncated=result.stdout_truncated or result.stderr_truncated,
        duration=result.duration,
        peak_memory=result.peak_memory,
        cpu_seconds=result.cpu_seconds,
    )


def skipped(task: PlannedTask, reason: str) -> TaskOutcome:
    return _outcome(task, "skipped", reason)


def cancelled(task: PlannedTask, reason: str) -> TaskOutcome:
    return _outcome(task, "cancelled", reason)


def failed(task: PlannedTask, reason: str) -> TaskOutcome:
    return _outcome(task, "failed", reason)


def _outcome(task: PlannedTask, status: Status, message: str) -> TaskOutcome:
    return TaskOutcome(task_id=task.id, agent=task.agent, task=task.name, status=status, message=message)


def _what(task: PlannedTask) -> str:
    if task.code is not None:
        return f"{task.code.language} code in {task.image}"
    return "an LLM task"
