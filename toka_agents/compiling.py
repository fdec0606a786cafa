"""Plan -> Prefect flow: the only place that builds Prefect objects from a Plan.

Every agent task becomes a task run named `<agent>/<task>`, tagged with its agent,
workstream and priority. A scheduler in the flow body starts agents as their required
agents complete, at most `max_concurrent_agents` at a time, highest priority first. An
agent's tasks run in order; each task run has the previous one as its upstream, and an
agent's first task run has the last task run of every agent it requires, so the Prefect
UI's graph shows the DAG. Agents downstream of a failure get task runs that say which upstream failed.
"""

from __future__ import annotations

import contextvars
import functools
import heapq
import math
import queue
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from uuid import UUID

from prefect import Flow, Task, get_client, get_run_logger
from prefect.blocks.system import Secret
from prefect.client.schemas.objects import TaskRunResult
from prefect.concurrency.sync import rate_limit
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure, quote
from pydantic import SecretStr

from toka_agents import executor, reporting, resuming, text
from toka_agents.config.models import PRIORITY_RANK, LlmSettings
from toka_agents.errors import LlmError, SandboxError, one_line
from toka_agents.executor import ExecutionContext, TaskOutcome
from toka_agents.llm.gateway import Acquire, from_environment
from toka_agents.llm.loop import StepRunner
from toka_agents.planning import Plan, PlannedAgent, PlannedTask
from toka_agents.sandbox import Sandbox, connect, create_workspace, remove_orphans
from toka_agents.sandbox.users import LABEL_USER, run_user
from toka_agents.tagging import add_deferred_tags, agent_tags

RUN_LABEL = "org.toka-agents.run"


@dataclass(frozen=True)
class RunOptions:
    """How a compiled flow runs, beyond what the plan says."""

    workspace_root: Path | None = None
    dry_run: bool = False
    cancel_poll_seconds: float = 2.0
    resume: UUID | str | None = None
    """A failed or cancelled flow run of the same plan to run again (see `resuming`)."""


def _after_failure_of(task_id: str, message: str | None) -> str:
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
        outcome = executor.skipped(planned, _after_failure_of(upstream[-1], previous.state.message))
    elif planned.kind == "llm" and not context.dry_run:
        runner = step_runner(planned.id, resuming.task_secrets(planned, context))
        with resuming.steps_kept_as_they_end():
            run = executor.run_llm_task(planned, context, upstream_results, runner)
        reporting.conversation_artifact(planned, run.outcome, run.conversation)
        outcome = run.outcome
    else:
        with reporting.OutputLog(get_run_logger()) as output:
            outcome = executor.run_task(planned, context, output, upstream_results)
    resuming.keep_only_if(outcome.status == "completed")
    return reporting.task_state(outcome)


def _run_step(label: str, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
    return fn(*args)


step_task: Task[..., Any] = Task(
    _run_step,
    name="agent-step",
    task_run_name="{label}",
    cache_key_fn=resuming.step_key,  # a resumed run's completed steps come from storage
    persist_result=True,
    retries=0,  # the gateway retries model calls itself; a tool call is the model's to repeat
    description="One step of an LLM task: a model call or a tool call.",
)


def step_runner(task_id: str, secrets: Sequence[str] = ()) -> StepRunner:
    """The agent loop's step runner: each model call and tool call a task run nested under the
    agent task's run, named like `architect/design · model 3`. A step's error reaches the loop
    unchanged (Prefect re-raises it after recording the failed task run). Its result, `secrets`
    redacted, is stored for a resumed run."""

    def run(kind: str, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        step = resuming.redacting(fn, secrets)
        return step_task(label=f"{task_id} · {name}", fn=quote(step), args=quote(args))

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
def _with_retries(retries: int) -> Task[..., State[TaskOutcome]]:
    return agent_task.with_options(retries=retries)


class LlmSetupError(Exception):
    """An LLM setting that needs Prefect (a Secret block, a rate limit) could not be set up."""


def read_secret_keys(plan: Plan) -> dict[str, SecretStr]:
    """The API keys of the plan's LLM agents that name a Prefect Secret block, by block name."""
    names = {
        agent.llm.api_key_secret
        for agent in plan.agents
        if agent.llm is not None
        and agent.llm.api_key_secret
        and any(t.kind == "llm" for t in agent.tasks)
    }
    keys = {}
    for name in sorted(names):
        try:
            value = Secret.load(name, _sync=True).get()  # type: ignore[call-overload]
        except Exception as exc:  # missing, of another type, or the API is away
            raise LlmSetupError(
                f"the Prefect Secret block {name!r} (llm.api_key_secret) cannot be read: "
                + one_line(exc)
            ) from None
        if not isinstance(value, str) or not value:
            raise LlmSetupError(f"the Prefect Secret block {name!r} (llm.api_key_secret) holds no key")
        keys[name] = SecretStr(value)
    return keys


RATE_LIMIT_BURST_SECONDS = 10
"""A rate limit lets through at once what it allows in this many seconds, then its steady rate."""
RATE_LIMIT_CANCEL_CHECK = 1.0
"""Seconds a call waits for a rate limit between looks at the run's cancel flag."""


@dataclass(frozen=True)
class RateLimit:
    """One of a model's Prefect global concurrency limits, used as a rate limit."""

    name: str
    per_minute: int
    unit: Literal["requests", "tokens"]

    @property
    def slots(self) -> int:
        return max(1, math.ceil(self.per_minute * RATE_LIMIT_BURST_SECONDS / 60))

    @property
    def decay(self) -> float:
        return self.per_minute / 60


def rate_limits_of(settings: LlmSettings) -> list[RateLimit]:
    """The global concurrency limits of a provider's model: one per limit its settings set,
    shared by every flow run and worker that uses the same provider and model."""
    model = re.sub(r"[/%&<>]", "-", f"{settings.provider}:{settings.model}")
    limits = []
    if settings.requests_per_minute is not None:
        limits.append(RateLimit(f"toka-llm {model} requests", settings.requests_per_minute, "requests"))
    if settings.tokens_per_minute is not None:
        limits.append(RateLimit(f"toka-llm {model} tokens", settings.tokens_per_minute, "tokens"))
    return limits


def _llm_settings_in_use(plan: Plan) -> list[LlmSettings]:
    found = []
    for agent in plan.agents:
        if agent.llm is not None and any(task.kind == "llm" for task in agent.tasks):
            try:
                found.append(from_environment(agent.llm))
            except LlmError:
                continue  # refused before this: llm_refusal names it
    return found


def upsert_rate_limits(plan: Plan) -> None:
    """Create or update the global concurrency limits the plan's models are rate-limited by."""
    limits = {limit.name: limit for s in _llm_settings_in_use(plan) for limit in rate_limits_of(s)}
    if not limits:
        return
    try:
        with get_client(sync_client=True) as client:
            for limit in limits.values():
                client.upsert_global_concurrency_limit_by_name(
                    limit.name, limit.slots, slot_decay_per_second=limit.decay
                )
    except Exception as exc:  # the API refused or is away: say so before any task starts
        raise LlmSetupError(f"cannot set up the LLM rate limits in Prefect: {one_line(exc)}") from None


def rate_limit_hook(settings: LlmSettings, *, cancel: threading.Event) -> Acquire | None:
    """The gateway's `acquire`: waits on the model's Prefect rate limits before each request.
    A call's token estimate can exceed a limit's slots; it then occupies them all."""
    limits = rate_limits_of(settings)
    if not limits:
        return None

    def acquire(tokens: int) -> None:
        for limit in limits:
            occupy = 1 if limit.unit == "requests" else min(tokens, limit.slots)
            while not cancel.is_set():  # the gateway ends the call when it sees the cancel
                try:
                    rate_limit(
                        limit.name, occupy=occupy, timeout_seconds=RATE_LIMIT_CANCEL_CHECK, strict=True
                    )
                    break
                except TimeoutError:
                    continue

    return acquire


@dataclass(frozen=True)
class Schedule:
    """A plan laid out for the scheduler: who waits for whom, in which order, with which tags."""

    plan: Plan
    agents: dict[str, PlannedAgent]
    position: dict[str, int]
    waiting_for: dict[str, tuple[str, ...]]
    dependents: dict[str, tuple[str, ...]]
    tags: dict[str, tuple[str, ...]]
    task_position: dict[str, int]


def schedule_of(plan: Plan) -> Schedule:
    waiting: dict[str, list[str]] = {agent.name: [] for agent in plan.agents}
    dependents: dict[str, list[str]] = {agent.name: [] for agent in plan.agents}
    for before, later in plan.ordering_edges:
        waiting[later].append(before)
        dependents[before].append(later)
    return Schedule(
        plan=plan,
        agents={agent.name: agent for agent in plan.agents},
        position={agent.name: i for i, agent in enumerate(plan.agents)},
        waiting_for={name: tuple(before) for name, before in waiting.items()},
        dependents={name: tuple(later) for name, later in dependents.items()},
        tags={
            agent.name: (
                f"agent:{agent.name}",
                f"workstream:{agent.workstream}",
                f"priority:{agent.priority}",
            )
            for agent in plan.agents
        },
        task_position={task.id: i for i, task in enumerate(plan.tasks)},
    )


def compile_flow(plan: Plan, options: RunOptions | None = None) -> Flow[[], reporting.RunSummary]:
    """A Prefect flow named after the orchestration that runs the plan when called."""
    chosen = options or RunOptions()
    schedule = schedule_of(plan)

    def run_plan() -> State[reporting.RunSummary]:
        return execute_plan(schedule, chosen)

    return Flow(
        run_plan,
        name=plan.name,
        description=plan.description or None,
        validate_parameters=False,
    )


def execute_plan(schedule: Schedule, options: RunOptions) -> State[reporting.RunSummary]:
    """Run a plan inside the current flow run; return the flow run's final state."""
    plan = schedule.plan
    flow_context = FlowRunContext.get()
    assert flow_context is not None and flow_context.flow_run is not None, "runs inside a flow run"
    flow_run = flow_context.flow_run
    resuming.separate_attempts(flow_context, [agent_task, step_task])
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning("%s", text.one_line(warning, None))
    refusal = executor.llm_refusal(plan, dry_run=options.dry_run)
    api_keys: dict[str, SecretStr] = {}
    if refusal is None and not options.dry_run:
        try:
            api_keys = read_secret_keys(plan)
            upsert_rate_limits(plan)
        except LlmSetupError as exc:
            refusal = str(exc)
    if refusal is not None:
        return reporting.refused_state(refusal)  # type: ignore[return-value]
    workspace, sandbox, sandbox_error = None, None, None
    labels = {RUN_LABEL: str(flow_run.id)}
    user = run_user(str(flow_run.id))
    if not options.dry_run and plan.tasks:  # LLM tasks' tools run in the sandbox too
        try:
            # Not checked here: each call asks the engine, so a task's retries can outlive an outage.
            client = connect(pool_size=2 * plan.max_concurrent_agents + 2, check=False)
            if orphans := remove_orphans(client):
                logger.warning(
                    "Removed %d sandbox container(s) left by toka-agents processes that were killed",
                    len(orphans),
                )
            user = run_user(str(flow_run.id), client, label=RUN_LABEL)
            labels[LABEL_USER] = user
            sandbox = Sandbox(client, labels, pool_size=plan.pool_size)
        except SandboxError as exc:
            sandbox_error = str(exc)
            logger.error("%s", one_line(exc))
    if not options.dry_run:
        name = resuming.workspace_name(plan.name, flow_run.id, options.workspace_root, datetime.now(UTC))
        try:
            workspace = create_workspace(
                options.workspace_root, name, run_id=str(flow_run.id), user=user
            )
        except SandboxError as exc:  # a workspace volume on an engine that failed
            return reporting.refused_state(str(exc))  # type: ignore[return-value]
        logger.info("Workspace: %s", workspace)
    report = reporting.RunReport(plan, workspace)
    context = ExecutionContext(
        sandbox=sandbox,
        workspace=workspace,
        run_id=str(flow_run.id),
        sandbox_error=sandbox_error,
        dry_run=options.dry_run,
        workspace_limit=plan.workspace_limit,
        labels=labels,
        agents=dict(schedule.agents),
        api_keys=api_keys,
        sandbox_user=user,
    )
    context.rate_limits = functools.partial(rate_limit_hook, cancel=context.cancel)
    watcher = CancellationWatcher(
        flow_run.id, options.cancel_poll_seconds, sandbox, logger, llm_cancel=context.cancel
    )
    watcher.start()
    scheduler = Scheduler(schedule, context, report, watcher, flow_run.id)
    try:
        scheduler.run()
    finally:
        # Each step here logs its own errors: none may hide the run's own error or skip
        # the summary.
        watcher.stop()
        if sandbox is not None:
            _end_sandbox(sandbox, logger)
        report.finish(scheduler.results())
    outcomes = scheduler.results()
    return reporting.run_state(plan, outcomes, workspace, cancelled=watcher.cancelled.is_set())


def _end_sandbox(sandbox: Sandbox, logger: reporting.RunLogger) -> None:
    """Stop whatever still runs (a run left early) and remove the run's containers."""
    try:
        sandbox.cancel()
        for warning in sandbox.remove_leftovers():
            logger.warning("%s", text.one_line(warning, None))
    except Exception as exc:  # the engine is the one that failed; the run's result stands
        logger.error(
            "could not remove the run's sandbox containers: %s. The next run on this host "
            "or `toka sandbox clean` removes them.",
            one_line(exc),
        )


class CancellationWatcher:
    """Watches the flow run's state; when someone cancels it (the UI, the API), kills the
    run's containers so its tasks end at once and no new ones start.

    Runs started by a Prefect worker are also cancelled by signal; this covers runs started
    in-process, such as `toka orchestrate`, which no worker supervises. When the API cannot
    be reached it says so and keeps asking: a cancel sent meanwhile lands once it answers.
    """

    def __init__(
        self,
        flow_run_id: UUID,
        interval: float,
        sandbox: Sandbox | None,
        logger: reporting.RunLogger,
        llm_cancel: threading.Event | None = None,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.interval = interval
        self.sandbox = sandbox
        self.logger = logger
        self.llm_cancel = llm_cancel
        self.cancelled = threading.Event()
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the thread must see this run's Prefect settings
        self._thread = threading.Thread(target=context.run, args=(self._watch,), daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(self.flow_run_id).state
            except Exception as exc:  # the API is away for now; the run goes on meanwhile
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    self.logger.warning(
                        "cannot read this flow run's state to watch for a cancel "
                        "(%d attempt(s) so far): %s; trying again every %gs",
                        failures,
                        one_line(exc),
                        self.interval,
                    )
                continue
            if failures:
                self.logger.info("the Prefect API answers again after %d failed attempt(s)", failures)
                failures = 0
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                self.cancelled.set()
                if self.llm_cancel is not None:
                    self.llm_cancel.set()  # LLM loops stop, a model call under way too
                if self.sandbox is not None:
                    self.sandbox.cancel()
                return


AgentStatus = Literal["waiting", "ready", "running", "completed", "failed", "skipped", "cancelled"]
_WHAT_HAPPENED = {"failed": "failed", "skipped": "did not run", "cancelled": "was cancelled"}


@dataclass
class AgentRun:
    """One agent's way through a run: plain data that only the scheduler's loop changes."""

    agent: PlannedAgent
    waiting_for: set[str]
    status: AgentStatus = "waiting"
    cause: str = ""  # why it did not complete, for the messages of the agents below it
    submitted: int = 0  # how many of its tasks have task runs
    last: UUID | None = None  # its latest task run
    running: PrefectFuture[Any] | None = None  # its latest task run, while the agent runs
    last_outcome: TaskOutcome | None = None
    handed_on: dict[str, TaskOutcome] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return self.status in ("completed", "failed", "skipped", "cancelled")

    @property
    def unsubmitted(self) -> list[PlannedTask]:
        return self.agent.tasks[self.submitted :]


@dataclass(frozen=True)
class Ending:
    """How an agent ended: its status, a message for people, and the cause handed downstream."""

    status: AgentStatus
    message: str
    cause: str = ""


class Scheduler:
    """Starts agents as their requirements complete, within the concurrency bound.

    One loop takes finished task runs off a queue and decides what each agent does next.
    Settling an agent (completed, failed, skipped, cancelled) releases the agents that wait
    for it through a worklist, never through recursion, so a chain of any depth is settled
    in one pass. Tasks that cannot run get their Skipped task runs straight from the API,
    without a trip through the task engine.
    """

    def __init__(
        self,
        schedule: Schedule,
        context: ExecutionContext,
        report: reporting.RunReport,
        watcher: CancellationWatcher,
        flow_run_id: UUID,
    ) -> None:
        self.schedule = schedule
        self.context = context
        self.report = report
        self.watcher = watcher
        self.flow_run_id = flow_run_id
        self.agents = {
            name: AgentRun(schedule.agents[name], set(before))
            for name, before in schedule.waiting_for.items()
        }
        self.outcomes: dict[str, TaskOutcome] = {}
        self.finished: queue.Queue[tuple[PlannedTask, PrefectFuture[Any]]] = queue.Queue()
        self.ready: list[tuple[int, int, str]] = []
        self.pending = 0  # task runs submitted and not yet taken off `finished`
        self.running = 0  # agents whose status is "running"
        self.labels: dict[UUID, str] = {}  # task run id -> its task's id, for upstream names
        flow_run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
        attempt = flow_run.run_count if flow_run is not None else 1
        # Skipped task runs are made through the API, which answers a later attempt's request
        # with the earlier attempt's task run of the same key.
        self.attempt_key = "" if attempt <= 1 else f"@{attempt}"

    def run(self) -> list[TaskOutcome]:
        # A running agent holds two workers: its running task, and its next one waiting for it.
        workers = 2 * self.schedule.plan.max_concurrent_agents + 1
        with (
            ThreadPoolTaskRunner(max_workers=workers) as self.runner,
            get_client(sync_client=True) as self.client,
        ):
            try:
                first = [run for run in self.agents.values() if not run.waiting_for]
                for run, ending in self._release(first):
                    self._settle(run, ending)
                while True:
                    self._start_ready_agents()
                    if self.pending == 0:
                        break
                    try:
                        planned, future = self.finished.get(timeout=0.5)
                    except queue.Empty:
                        continue  # a cancel may have arrived: ready agents are cancelled above
                    self.pending -= 1
                    self._on_task_done(planned, future)
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM, a bug): kill the containers first, or leaving
                # the task runner would wait for every running task to reach its timeout.
                self.context.cancel.set()
                if self.context.sandbox is not None:
                    self.context.sandbox.cancel()
                raise
        return self.results()

    def results(self) -> list[TaskOutcome]:
        """Every outcome so far, in plan order."""
        position = self.schedule.task_position
        return sorted(self.outcomes.values(), key=lambda o: position[o.task_id])

    def _start_ready_agents(self) -> None:
        """Start ready agents, highest priority first, while the bound allows."""
        bound = self.schedule.plan.max_concurrent_agents
        while self.ready and self.running < bound:
            _, _, name = heapq.heappop(self.ready)
            run = self.agents[name]
            if self.watcher.cancelled.is_set():
                self._settle(run, self._cancel_unsubmitted(run))
                continue
            if not run.agent.tasks:
                self._settle(run, Ending("completed", "no tasks to run"))
                continue
            run.status = "running"
            self.running += 1
            self.report.agent_started(run.agent)
            upstream = [self.agents[n] for n in self._finished_upstream(run.agent)]
            run.handed_on = {u.agent.name: u.last_outcome for u in upstream if u.last_outcome}
            self._submit(run, [u.last for u in upstream if u.last is not None])
            self._submit_next(run)

    def _finished_upstream(self, agent: PlannedAgent) -> list[str]:
        """Agents this one waits for, and those it optionally depends on that have finished."""
        waited = self.schedule.waiting_for[agent.name]
        optional = [
            n
            for n in agent.optional_requires
            if n in self.agents and self.agents[n].settled and n not in waited  # absent: not loaded
        ]
        return [*waited, *optional]

    def _submit(
        self, run: AgentRun, upstream: list[UUID], previous: PrefectFuture[Any] | None = None
    ) -> None:
        """Submit the agent's next task to the task runner. With `previous`, its task run
        waits for that one and starts the moment it ends (ending Skipped if it failed),
        instead of after a round trip through the scheduler."""
        planned = run.unsubmitted[0]
        task = agent_task if planned.retries == 0 else _with_retries(planned.retries)
        before = run.agent.tasks[planned.index - 1] if previous is not None else None
        # Upstream task runs are final when a task is submitted, except `previous`, which
        # Prefect waits for; recording them all as inputs makes them upstream relations.
        with agent_tags(self.schedule.tags[run.agent.name]):
            future = self.runner.submit(
                task,
                parameters={
                    "label": planned.id,
                    "planned": quote(planned),
                    "context": quote(self.context),
                    "upstream": tuple(self.labels[u] for u in upstream),
                    "upstream_results": quote(run.handed_on),
                    "previous": quote(previous),
                    "runs_after_failure": before is not None
                    and not run.agent.stops_after_failure_of(before),
                },
                wait_for=[allow_failure(previous)] if previous is not None else None,
                dependencies={"upstream": {TaskRunResult(id=u) for u in upstream}},
            )
        run.submitted += 1
        run.last, run.running = future.task_run_id, future
        self.pending += 1
        self.labels[future.task_run_id] = planned.id
        future.add_done_callback(lambda done: self.finished.put((planned, done)))

    def _submit_next(self, run: AgentRun) -> None:
        """Submit the agent's next task, if it has one, to wait for its latest."""
        if run.unsubmitted:
            assert run.last is not None and run.running is not None
            self._submit(run, [run.last], previous=run.running)

    def _skip_unsubmitted(self, run: AgentRun, reason: str, upstream: list[UUID]) -> None:
        """Give each task not yet submitted a Skipped task run, each after the one before."""
        for planned in run.unsubmitted:
            outcome = executor.skipped(planned, reason)
            created = self.client.create_task_run(
                agent_task,
                self.flow_run_id,
                dynamic_key=f"skipped:{planned.id}{self.attempt_key}",
                name=planned.id,
                extra_tags=self.schedule.tags[run.agent.name],
                state=reporting.task_state(outcome, with_data=False),
                task_inputs={"upstream": [TaskRunResult(id=u) for u in upstream]},
            )
            self.labels[created.id] = planned.id
            self.outcomes[planned.id] = outcome
            upstream = [created.id]
            run.submitted += 1
            run.last = created.id

    def _on_task_done(self, planned: PlannedTask, future: PrefectFuture[Any]) -> None:
        """Record a finished task run and decide what its agent does next."""
        outcome = self._outcome(planned, future)
        self.outcomes[planned.id] = outcome
        self.report.task_finished(outcome)
        run = self.agents[planned.agent]
        run.last_outcome = outcome
        if run.status != "running":
            return  # the already submitted next task of an agent that failed
        ending = self._ending(run, planned, outcome)
        if ending is None:
            self._submit_next(run)
        else:
            self._settle(run, ending)

    def _ending(self, run: AgentRun, planned: PlannedTask, outcome: TaskOutcome) -> Ending | None:
        """How the agent ends after `planned`, or None when its next task goes on."""
        if outcome.status == "cancelled" or self.watcher.cancelled.is_set():
            return self._cancel_unsubmitted(run)
        agent = run.agent
        if not outcome.ok and agent.stops_after_failure_of(planned):
            # The task submitted after this one ends Skipped by itself; the rest are skipped here.
            assert run.last is not None
            self._skip_unsubmitted(run, _after_failure_of(planned.id, outcome.message), [run.last])
            cause = f"{planned.id}: {outcome.message}"
            if agent.on_task_failure == "continue":
                cause = f"critical task {cause}"
            return Ending("failed", f"failed at {cause}", cause)
        if planned.index + 1 < len(agent.tasks):
            return None
        ended = [self.outcomes[task.id] for task in agent.tasks]
        done = sum(o.ok for o in ended)
        completed, message = agent.verdict(done, sum(o.ok or o.status == "failed" for o in ended))
        return Ending("completed", message) if completed else Ending("failed", message, message)

    def _outcome(self, planned: PlannedTask, future: PrefectFuture[Any]) -> TaskOutcome:
        try:
            future.wait()
            state = future.state
            outcome = state.result(raise_on_failure=False) if state.is_final() else None
        except Exception as exc:  # the task engine itself failed, e.g. the API refused it
            return executor.failed(planned, f"Prefect could not run the task: {one_line(exc)}")
        if isinstance(outcome, TaskOutcome):
            return outcome
        # Prefect ended the task run, not our code: a crash, or a task that waited for one
        # the run's cancellation stopped.
        if self.watcher.cancelled.is_set():
            return executor.cancelled(planned, "not run: the run was cancelled")
        return executor.failed(planned, state.message or f"task run ended in state {state.name}")

    def _cancel_unsubmitted(self, run: AgentRun) -> Ending:
        """After a cancel, tasks that did not start get no task runs, only a line in the summary."""
        for later in run.unsubmitted:
            self.outcomes[later.id] = executor.cancelled(later, "not run: the run was cancelled")
        run.submitted = len(run.agent.tasks)
        return Ending("cancelled", "the run was cancelled", "the run was cancelled")

    def _settle(self, run: AgentRun, ending: Ending) -> None:
        """End an agent's run, and decide, agent after agent, what the runs waiting for it do."""
        worklist = [(run, ending)]
        while worklist:
            run, ending = worklist.pop()
            if run.status == "running":
                self.running -= 1
            run.status, run.cause, run.running = ending.status, ending.cause, None
            self.report.agent_finished(run.agent, ending.status, ending.message)
            released = []
            for name in self.schedule.dependents[run.agent.name]:
                later = self.agents[name]
                later.waiting_for.discard(run.agent.name)
                if not later.waiting_for:
                    released.append(later)
            worklist.extend(self._release(released))

    def _release(self, runs: list[AgentRun]) -> list[tuple[AgentRun, Ending]]:
        """Agents whose requirements have all settled: queue those that may run; return how
        the others end (cancelled, or skipped after a requirement that did not complete)."""
        endings = []
        for run in runs:
            agent = run.agent
            if self.watcher.cancelled.is_set():
                endings.append((run, self._cancel_unsubmitted(run)))
                continue
            blocked = [self.agents[n] for n in agent.requires if self.agents[n].status != "completed"]
            if blocked:
                upstream = blocked[0]
                what = _WHAT_HAPPENED[upstream.status]
                reason = f"not run: required agent {upstream.agent.name!r} {what}: {upstream.cause}"
                waited = [self.agents[n].last for n in self.schedule.waiting_for[agent.name]]
                self._skip_unsubmitted(run, reason, [u for u in waited if u is not None])
                endings.append((run, Ending("skipped", reason, upstream.cause)))
                continue
            run.status = "ready"
            rank = (PRIORITY_RANK[agent.priority], self.schedule.position[agent.name], agent.name)
            heapq.heappush(self.ready, rank)
        return endings
