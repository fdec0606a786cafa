"""Runs one agent task: a code task goes to the sandbox, an LLM task to the agent loop (the LLM
gateway for the model, the sandbox for its tools); the result becomes a `TaskOutcome`.

The executor never talks to Docker or HTTP itself, and knows nothing of Prefect: it is
handed a `Sandbox`, the API keys the Prefect wing read, a step runner and a rate-limit hook,
and returns plain data that reporting turns into Prefect states.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr, ValidationError

from toka_agents.approvals import AskApproval, approve_call, task_proposal
from toka_agents.config.fragments import issues_from_validation
from toka_agents.config.limits import DEFAULT_WORKSPACE_LIMIT
from toka_agents.config.models import (
    Agent,
    CodeSource,
    CodeTask,
    Limits,
    LlmSettings,
    Orchestration,
)
from toka_agents.errors import (
    ConfigError,
    LlmCancelled,
    LlmError,
    McpServerError,
    NoAnswer,
    Rejected,
    SandboxError,
)
from toka_agents.llm.gateway import Acquire, Gateway, api_key_from_env, from_environment
from toka_agents.llm.loop import LoopResult, StepRunner, TaskBrief, run_directly, run_loop
from toka_agents.llm.messages import Message, ToolSpec
from toka_agents.llm.tools import Toolbox
from toka_agents.planning import PlannedAgent, PlannedTask, plan
from toka_agents.sandbox import Sandbox, SandboxCancelled, SandboxResult, SandboxSpec
from toka_agents.sandbox.output import OutputCallback
from toka_agents.sandbox.spec import SANDBOX_USER
from toka_agents.tool_sandbox import SandboxUsage
from toka_agents.tool_servers import header_values, task_servers

Status = Literal["completed", "failed", "skipped", "cancelled", "dry-run"]
NO_SUMMARY = "(no summary given)"
"""What an LLM task's summary reads when the model called `finish` with an empty one."""


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
    peak_pids: int | None = None
    stdout_bytes: int | None = None
    """Bytes the code wrote to stdout, before any cut (LLM tasks: over all their tool runs)."""
    stderr_bytes: int | None = None
    disk_written: int | None = None
    """Bytes the code wrote to the workspace."""
    image: str | None = None
    image_digest: str | None = None
    """The id (`sha256:...`) of the image the code ran in."""
    steps: int | None = None
    """LLM tasks: model calls made."""
    input_tokens: int | None = None
    output_tokens: int | None = None
    model_seconds: float | None = None
    """LLM tasks: seconds spent waiting for the model."""
    cost: float | None = None
    """LLM tasks with `price_per_million_tokens`: what the tokens cost."""
    summary: str | None = None
    """LLM tasks: the summary the model gave when it called `finish`."""
    files: list[str] = []
    """The files its agent declares as `outputs:` that the workspace holds once its agent's last
    task ends (listed on that task's outcome only): named to the agents that depend on it."""

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
    agents: dict[str, PlannedAgent] = field(default_factory=dict)
    cancel: threading.Event = field(default_factory=threading.Event)
    """Set when the run is cancelled: LLM tasks stop their loop and the call under way."""
    api_keys: dict[str, SecretStr] = field(default_factory=dict)
    """Keys read from Prefect Secret blocks, by block name (`llm.api_key_secret`)."""
    rate_limits: Callable[[LlmSettings], Acquire | None] | None = None
    """The rate-limit hook of a model's gateway, when its settings set limits."""
    workspace_limit: int | None = DEFAULT_WORKSPACE_LIMIT
    """Bytes the run's workspace may hold (`limits.workspace`); None: no limit."""
    sandbox_user: str = SANDBOX_USER
    """The `uid:gid` the run's code runs as: one of its own (`sandbox.users`)."""
    ask_person: Callable[[PlannedTask, str], str] | None = None
    """Asks a person a task's question (`human: ask`) and returns the answer."""
    ask_approval: AskApproval | None = None
    """Holds a task (`approval: required`) or a tool call until a person approves it."""


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
        return run_llm_task(task, context, upstream).outcome
    if context.sandbox is None:
        return _outcome(task, "failed", f"sandbox error: {context.sandbox_error or 'no sandbox'}")
    refused = not_approved(task, context)
    if refused is not None:
        return refused
    try:
        result = context.sandbox.run(sandbox_spec(task, context, upstream or {}), on_output)
    except SandboxCancelled:
        return _outcome(task, "cancelled", "cancelled before it started")
    except SandboxError as exc:
        return _outcome(task, "failed", f"sandbox error: {exc}")
    return outcome_from_result(task, result)


@dataclass
class LlmRun:
    """An LLM task's outcome and its whole conversation, secrets redacted."""

    outcome: TaskOutcome
    conversation: list[Message] = field(default_factory=list)
    served: list[ToolSpec] = field(default_factory=list)
    """The tools its MCP servers offered, as the model saw them."""


def run_llm_task(
    task: PlannedTask,
    context: ExecutionContext,
    upstream: dict[str, TaskOutcome] | None = None,
    runner: StepRunner = run_directly,
) -> LlmRun:
    """Carry out an LLM task with the agent loop: the agent's model through the gateway, its
    tools in the agent's sandbox. Never raises for the task's own failure."""
    agent = context.agents.get(task.agent)
    if agent is None or agent.llm is None:
        return LlmRun(failed(task, f"{task.id} is an LLM task, and its agent has no LLM configured"))
    if context.sandbox is None:
        return LlmRun(failed(task, f"sandbox error: {context.sandbox_error or 'no sandbox'}"))
    try:
        settings, key = model_of(agent.llm, context.api_keys)
    except LlmError as exc:
        return LlmRun(failed(task, str(exc)))
    refused = not_approved(task, context)
    if refused is not None:
        return LlmRun(refused)
    usage = SandboxUsage(context.sandbox, tool_spec(task, context, upstream or {}))
    ask = functools.partial(context.ask_person, task) if task.asks_human and context.ask_person else None
    hook = context.ask_approval
    approve = functools.partial(approve_call, hook, task) if hook and task.approval_tools else None
    acquire = context.rate_limits(settings) if context.rate_limits is not None else None
    started = time.monotonic()
    try:
        servers = task_servers(context.sandbox, usage.spec, agent.mcp_servers)
        with (
            servers as started_servers,
            usage.session_for(task.sandbox_session),
            Gateway(settings, api_key=key, acquire=acquire, cancel=context.cancel) as gateway,
        ):
            toolbox = Toolbox(
                usage.run_code,
                may_write=task.workspace_writable,
                ask=ask,
                approve=approve,
                held=frozenset(task.approval_tools),
                servers=started_servers,
                session=usage.session is not None,
            )
            served = [tool.spec for tool in started_servers.tools.values()] if started_servers else []
            result = run_loop(
                task_brief(task, agent, upstream or {}),
                gateway.complete,
                toolbox,
                max_steps=settings.max_steps,
                max_tokens=settings.max_tokens_per_task,
                timeout=task.limits.timeout,
                runner=runner,
                secrets=llm_secrets(agent, key),
                cancel=context.cancel,
            )
    except SandboxCancelled:
        return LlmRun(cancelled(task, "cancelled before it started"))
    except McpServerError as exc:
        return LlmRun(failed(task, str(exc)))
    except SandboxError as exc:
        return LlmRun(failed(task, f"sandbox error: {exc}"))
    outcome = outcome_from_loop(task, result, settings, usage, time.monotonic() - started)
    return LlmRun(outcome, result.transcript, served)


def not_approved(task: PlannedTask, context: ExecutionContext) -> TaskOutcome | None:
    """Hold a task with `approval: required` until a person approves it: None once approved
    (or when it needs no approval), else the outcome of the task that never started."""
    if not task.needs_approval or context.ask_approval is None:
        return None
    try:
        context.ask_approval(task, task_proposal(task))
    except (Rejected, NoAnswer) as exc:
        return failed(task, str(exc))
    except LlmCancelled:
        return cancelled(task, "cancelled while it waited for a person's approval")
    return None


def llm_secrets(agent: PlannedAgent, key: SecretStr | None) -> list[str]:
    """What an LLM task keeps out of everything it stores and shows: its model's API key and
    the header values its HTTP MCP servers are sent."""
    return [*([key.get_secret_value()] if key is not None else []), *header_values(agent.mcp_servers)]


def task_secrets(task: PlannedTask, context: ExecutionContext) -> list[str]:
    """An LLM task's secrets (`llm_secrets`), for the runner that stores its steps and shows its
    conversation; none for a code task, and no key when the model cannot be called."""
    agent = context.agents.get(task.agent)
    if agent is None or agent.llm is None:
        return []
    try:
        _, key = model_of(agent.llm, context.api_keys)
    except LlmError:
        key = None
    return llm_secrets(agent, key)


def model_of(
    configured: LlmSettings, api_keys: Mapping[str, SecretStr]
) -> tuple[LlmSettings, SecretStr | None]:
    """The settings a model is called with (the environment's model and address filled in) and
    its API key: from the Secret block the run read (`api_keys`, by block name), else from the
    environment. Raises `LlmError` naming what is missing."""
    settings = from_environment(configured)
    if settings.api_key_secret is None:
        return settings, api_key_from_env(settings)
    key = api_keys.get(settings.api_key_secret)
    if key is None:
        raise LlmError(f"the Prefect Secret block {settings.api_key_secret!r} was not read")
    return settings, key


def outcome_from_loop(
    task: PlannedTask, result: LoopResult, settings: LlmSettings, usage: SandboxUsage, duration: float
) -> TaskOutcome:
    status: Status = "completed" if result.success else "failed"
    message = result.summary
    if result.ended_by == "cancelled":
        status = "cancelled"
    elif result.ended_by == "finish" and not result.success:
        message = f"the model finished without success: {result.summary or NO_SUMMARY}"
    return TaskOutcome(
        task_id=task.id,
        agent=task.agent,
        task=task.name,
        status=status,
        message=message,  # shown cut, the cut named, by reporting
        duration=duration,
        peak_memory=usage.peak_memory,
        cpu_seconds=usage.cpu_seconds,
        peak_pids=usage.peak_pids,
        stdout_bytes=usage.stdout_bytes,
        stderr_bytes=usage.stderr_bytes,
        disk_written=usage.disk_written,
        image=task.image,
        image_digest=usage.image_digest,
        steps=result.steps,
        input_tokens=result.input_tokens,
        output_tokens=result.output_tokens,
        model_seconds=result.model_seconds,
        cost=result.cost(settings.price_per_million_tokens),
        summary=(result.summary or NO_SUMMARY) if result.ended_by == "finish" else None,
    )


def task_brief(task: PlannedTask, agent: PlannedAgent, upstream: dict[str, TaskOutcome]) -> TaskBrief:
    """What the model is told: the agent as its spec describes it, the task, and the summaries
    of the finished agents it depends on."""
    extra = agent.extra
    return TaskBrief(
        agent=agent.name,
        task=task.name,
        instruction=task.instruction or task.description,
        expected_output=task.expected_output,
        description=agent.description,
        objectives=spec_lines(extra.get("objectives")),
        capabilities=list(task.capabilities),
        directives=spec_lines(extra.get("behavioral_directives") or extra.get("directives")),
        success_criteria=spec_lines(extra.get("success_criteria")),
        upstream={
            name: (outcome.summary or f"{outcome.status}: {outcome.message}")
            + (f" (files: {', '.join(outcome.files)})" if outcome.files else "")
            for name, outcome in upstream.items()
        },
        may_write=task.workspace_writable,
    )


def spec_lines(value: Any, prefix: str = "") -> list[str]:
    """A spec's nested lists and maps as lines: `{phase_1: [a, b]}` -> `phase_1: a`, `phase_1: b`;
    a map of plain values is one line (`description: ...; validation: ...`)."""
    if value is None or value == "":
        return []
    if isinstance(value, dict):
        if all(not isinstance(v, dict | list) for v in value.values()):
            return [prefix + "; ".join(f"{k}: {v}" for k, v in value.items())]
        return [line for k, v in value.items() for line in spec_lines(v, f"{prefix}{k}: ")]
    if isinstance(value, list):
        return [line for item in value for line in spec_lines(item, prefix)]
    return [f"{prefix}{value}"]


def tool_spec(
    task: PlannedTask, context: ExecutionContext, upstream: dict[str, TaskOutcome]
) -> SandboxSpec:
    """The containers an LLM task's tools run in: a code task's, without the code."""
    return container_spec(task, context, upstream, "python", "")


def sandbox_spec(
    task: PlannedTask, context: ExecutionContext, upstream: dict[str, TaskOutcome] | None = None
) -> SandboxSpec:
    """The container a code task runs in: its limits, network, workspace access and code."""
    assert task.code is not None and task.code.source is not None
    return container_spec(task, context, upstream or {}, task.code.language, task.code.source)


def container_spec(
    task: PlannedTask,
    context: ExecutionContext,
    upstream: dict[str, TaskOutcome],
    language: Literal["python", "shell"],
    source: str,
) -> SandboxSpec:
    handed_on = {
        agent: {
            "task": o.task_id,
            "status": o.status,
            "message": o.message,
            "stdout_tail": o.stdout_tail[-1000:],
            **({"summary": o.summary} if o.summary is not None else {}),
            **({"files": o.files} if o.files else {}),
        }
        for agent, o in upstream.items()
    }
    return SandboxSpec(
        image=task.image,
        language=language,
        source=source,
        memory=task.limits.memory,
        cpus=task.limits.cpu,
        pids=task.limits.pids,
        timeout=task.limits.timeout,
        network=task.docker_network if task.network else None,
        network_allow=task.network_allow,
        workspace=context.workspace,
        workspace_writable=task.workspace_writable,
        workspace_limit=context.workspace_limit if context.workspace is not None else None,
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
        user=context.sandbox_user,
    )


def standalone_spec(
    language: Literal["python", "shell"],
    source: str,
    *,
    memory: str,
    cpu: str,
    timeout: str,
    pids: int,
    network: bool,
    image: str,
) -> SandboxSpec:
    """The container of a one-off run of code (`toka runtime exec`), made as a code task's: the
    limits read by the config's grammar and bounds, the spec built by `sandbox_spec`. Raises
    `ConfigError` naming each bad value (`limits.memory`, ...)."""
    try:
        agent = Agent(
            name="exec",
            image=image,
            capabilities=["network"] if network else [],
            limits=Limits(memory=memory, cpu=cpu, timeout=timeout, pids=pids),
            tasks=[CodeTask(name="run", code=CodeSource(language=language, source=source))],
        )
    except ValidationError as exc:
        raise ConfigError(issues_from_validation(exc, "<command line>")) from None
    [task] = plan(Orchestration(name="runtime-exec", agents=[agent])).tasks
    return sandbox_spec(task, ExecutionContext(sandbox=None, workspace=None))


def outcome_from_result(task: PlannedTask, result: SandboxResult) -> TaskOutcome:
    failure = result.failure
    status: Status = "completed" if failure is None else ("cancelled" if result.cancelled else "failed")
    message = failure or f"exit code 0 in {result.duration:.2f}s"
    more = [cause for cause in result.causes if cause not in message]
    if more:
        message += f" ({'; '.join(more)})"
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
        peak_pids=result.peak_pids,
        stdout_bytes=result.stdout_bytes,
        stderr_bytes=result.stderr_bytes,
        disk_written=result.disk_written,
        image=result.image,
        image_digest=result.image_digest,
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
