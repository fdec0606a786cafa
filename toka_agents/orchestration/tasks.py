"""The Prefect tasks of a run: an agent task (`agent/task`), a step of an LLM task (a model call
or a tool call, `agent/task · model 3`) nested under it, and a person's approval of either
(`agent/task · approval`, `agent/task · run_code 2 · approval`).

An agent task runs its `PlannedTask` through the executor and ends in the state reporting
makes of its outcome; it runs only if the agent's task before it completed (or, under the
`continue` policy, at least failed). Results are persisted under keys of their own
(`resuming`), so a resumed run does not do twice what it already did.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from prefect import Task, get_run_logger
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.utilities.annotations import quote
from pydantic import BaseModel

from toka_agents import executor, text
from toka_agents.approvals import AskApproval, Proposal
from toka_agents.errors import MalformedKind, MalformedReply
from toka_agents.executor import ExecutionContext, TaskOutcome
from toka_agents.llm.loop import StepRunner
from toka_agents.llm.messages import Message, ModelReply, ToolCall
from toka_agents.llm.tools import ToolResult
from toka_agents.orchestration import reporting, resuming, task_logs
from toka_agents.orchestration.reporting import served_tools
from toka_agents.orchestration.reporting.conversation import RunningConversation, conversation_artifact
from toka_agents.orchestration.tagging import add_deferred_tags
from toka_agents.planning import PlannedTask


def after_failure_of(task_id: str, message: str | None) -> str:
    """Why a task of an agent did not run: an earlier task of the same agent failed."""
    return f"not run: earlier task {task_id} failed: {message}"


def _run_agent_task(
    label: str,
    planned: PlannedTask,
    context: ExecutionContext,
    upstream: tuple[str, ...] = (),
    upstream_results: dict[str, TaskOutcome] | None = None,
    previous: PrefectFuture[Any] | None = None,
    runs_after_failure: bool = False,
) -> State[TaskOutcome]:
    """`previous`, the agent's task before this one, must have completed, or with
    `runs_after_failure` (its agent's policy is `continue`) at least failed, not been cancelled."""
    add_deferred_tags()
    if (
        previous is not None
        and not previous.state.is_completed()
        and not (runs_after_failure and previous.state.is_failed())
    ):
        outcome = executor.skipped(planned, after_failure_of(upstream[-1], previous.state.message))
    elif planned.kind == "llm" and not context.dry_run:
        secrets = executor.task_secrets(planned, context)
        shown = RunningConversation(planned.id, secrets)
        runner = step_runner(planned.id, secrets, shown)
        try:
            with resuming.steps_kept_as_they_end():
                run = executor.run_llm_task(planned, context, upstream_results, runner)
        finally:
            shown.close()
        conversation_artifact(planned, run.outcome, run.conversation)
        if run.served:
            key = reporting.artifact_key(planned.id, "tools")
            served_tools.served_tools_artifact(planned, run.served, key)
        outcome = run.outcome
    else:
        with task_logs.OutputLog(get_run_logger()) as output:
            outcome = executor.run_task(planned, context, output, upstream_results)
    if outcome.status not in ("skipped", "dry-run"):
        reporting.usage_artifact(planned, outcome)
    resuming.keep_only_if(outcome.status == "completed")
    return reporting.task_state(outcome)


class MalformedStep(BaseModel):
    """A model call whose reply could not be used: what the step returns instead of failing,
    since the loop recovers by asking again. The runner raises it in the loop as the
    `MalformedReply` it was."""

    kind: MalformedKind
    detail: str
    input_tokens: int = 0
    output_tokens: int = 0

    def error(self) -> MalformedReply:
        return MalformedReply(
            self.kind, self.detail, input_tokens=self.input_tokens, output_tokens=self.output_tokens
        )


def _run_step(label: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    try:
        result = fn(*args)
    except MalformedReply as exc:
        # Not a failure of the task: its task run ends Completed, saying what was recovered.
        get_run_logger().warning("%s; the model is asked again", text.one_line(str(exc), 500))
        recovered = MalformedStep(
            kind=exc.kind,
            detail=exc.detail,
            input_tokens=exc.input_tokens,
            output_tokens=exc.output_tokens,
        )
        return reporting.recovered_state(str(exc), recovered)
    task_logs.log_step(get_run_logger(), args, result)
    return result


step_task: Task[..., Any] = Task(
    _run_step,
    name="agent-step",
    task_run_name="{label}",
    cache_key_fn=resuming.step_key,  # a resumed run's completed steps come from storage
    persist_result=True,
    retries=0,  # the gateway retries model calls itself; a tool call is the model's to repeat
    description="One step of an LLM task: a model call or a tool call.",
)


def step_runner(
    task_id: str, secrets: Sequence[str] = (), shown: RunningConversation | None = None
) -> StepRunner:
    """The agent loop's step runner: each model call and tool call a task run nested under the
    agent task's run, named like `architect/design · model 3`. A step's error reaches the loop
    unchanged (Prefect re-raises it after recording the failed task run), but for a malformed
    reply, which the loop recovers from: its task run ends Completed, naming what was
    recovered, and the loop gets the error all the same. Its result, `secrets` redacted, is
    stored for a resumed run. After each step, the conversation so far is handed to `shown`,
    which writes it again (`secrets` redacted) as the task's conversation artifact."""
    conversation: list[Message] = []  # as of the latest step: what the model was sent, and since

    def run(kind: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        step = resuming.redacting(fn, secrets)
        # Its return value as the engine holds it (a failed step raises its error here), not
        # `State.result()`, which goes through Prefect's event loop thread: a step's wait.
        result = step_task(label=f"{task_id} · {name}", fn=quote(step), args=quote(args))
        if isinstance(result, State):  # a recovered step: its data is the `MalformedStep`
            result = result.result()
        if isinstance(result, MalformedStep):
            raise result.error()
        if isinstance(result, ModelReply):
            conversation[:] = [*args[0], result.as_message()]
        elif isinstance(result, ToolResult) and conversation and isinstance(args[0], ToolCall):
            conversation.append(result.answering(args[0]))
        else:
            return result  # the workspace listing for the first prompt: no conversation yet
        if shown is not None:
            shown.show(name, conversation)
        return result

    return run


agent_task: Task[..., State[TaskOutcome]] = Task(
    _run_agent_task,
    name="agent-task",
    task_run_name="{label}",
    cache_key_fn=resuming.agent_task_key,  # a resumed run does not run completed tasks again
    persist_result=True,
    description="One task of one agent: code in a Docker sandbox, or an LLM task.",
)


@functools.cache
def with_retries(retries: int) -> Task[..., State[TaskOutcome]]:
    return agent_task.with_options(retries=retries)


def _hold_for_approval(label: str, planned: PlannedTask, proposal: Proposal, ask: AskApproval) -> bool:
    ask(planned, proposal)  # raises when not approved: the task run fails saying why
    return True


approval_task: Task[..., bool] = Task(
    _hold_for_approval,
    name="agent-approval",
    task_run_name="{label}",
    cache_key_fn=resuming.approval_key,  # a resumed run does not ask for an approval given
    persist_result=True,
    retries=0,
    description="A person's approval of a task before it starts, or of one tool call.",
)


def approvals_kept(ask: AskApproval) -> AskApproval:
    """`ask` as a task run of its own under the task run it holds (the agent task, or a tool
    call's step), whose approval is stored as soon as it is given: a resumed run does not ask
    for it again. A rejection, no answer or a cancel is not stored."""

    def hold(planned: PlannedTask, proposal: Proposal) -> None:
        context = TaskRunContext.get()
        within = context.task_run.name if context is not None else planned.id
        with resuming.steps_kept_as_they_end():
            approval_task(
                label=f"{within} · approval", planned=planned, proposal=proposal, ask=quote(ask)
            )

    return hold
