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
import queue
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow, Task, flow, get_client, get_run_logger, tags
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRunResult
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.states import State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure, quote

from toka_agents import executor, reporting
from toka_agents.config.models import PRIORITY_RANK
from toka_agents.errors import SandboxError
from toka_agents.executor import ExecutionContext, TaskOutcome
from toka_agents.planning import OptionalMode, Plan, PlannedAgent, PlannedTask, validate
from toka_agents.sandbox import Sandbox, connect, create_workspace, remove_orphans

RUN_LABEL = "org.toka-agents.run"


@dataclass(frozen=True)
class RunOptions:
    """How a compiled flow runs, beyond what the plan says."""

    workspace_root: Path | None = None
    dry_run: bool = False
    cancel_poll_seconds: float = 2.0


def _after_failure_of(task_id: str, message: str | None) -> str:
    """Why a task of an agent did not run: an earlier task of the same agent failed."""
    return f"not run: earlier task {task_id} failed: {message}"


def _run_agent_task(
    label: str,
    planned: PlannedTask,
    context: ExecutionContext,
    skip_reason: str | None,
    upstream: tuple[str, ...] = (),
    upstream_results: dict[str, TaskOutcome] | None = None,
    previous: PrefectFuture[Any] | None = None,
) -> State[TaskOutcome]:
    if skip_reason is None and previous is not None and not previous.state.is_completed():
        skip_reason = _after_failure_of(upstream[-1], previous.state.message)
    if skip_reason is not None:
        outcome = executor.skipped(planned, skip_reason)
    else:
        output = reporting.output_logger(get_run_logger())
        outcome = executor.run_task(planned, context, output, upstream_results)
    return reporting.task_state(outcome)


agent_task: Task[..., State[TaskOutcome]] = Task(
    _run_agent_task,
    name="agent-task",
    task_run_name="{label}",
    cache_policy=NO_CACHE,
    description="One task of one agent: code in a Docker sandbox, or an LLM task.",
)


@functools.cache
def _with_retries(retries: int) -> Task[..., State[TaskOutcome]]:
    return agent_task.with_options(retries=retries)


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


@flow(name="toka-orchestrate", validate_parameters=True)
def orchestrate(
    paths: list[str],
    conditions: list[str] | None = None,
    dry_run: bool = False,
    max_concurrent_agents: int | None = None,
    optional_dependencies: OptionalMode | None = None,
    allow_unsandboxed: bool = False,
) -> reporting.RunSummary:
    """Load, plan and run the orchestration in `paths` (config files or directories).

    The flow that deployments run: its parameters are the form the Prefect UI shows.
    """
    checked = validate(
        paths,
        conditions=conditions or (),
        optional_dependencies=optional_dependencies,
        max_concurrent_agents=max_concurrent_agents,
        allow_unsandboxed=allow_unsandboxed or None,
    )
    if checked.plan is None:
        return reporting.config_failed_state(checked.issues)  # type: ignore[return-value]
    return execute_plan(schedule_of(checked.plan), RunOptions(dry_run=dry_run))  # type: ignore[return-value]


def execute_plan(schedule: Schedule, options: RunOptions) -> State[reporting.RunSummary]:
    """Run a plan inside the current flow run; return the flow run's final state."""
    plan = schedule.plan
    flow_run = FlowRunContext.get().flow_run  # type: ignore[union-attr]
    assert flow_run is not None, "execute_plan runs inside a flow run"
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning("%s", warning)
    refusal = executor.llm_refusal(plan, dry_run=options.dry_run)
    if refusal is not None:
        return reporting.refused_state(refusal)  # type: ignore[return-value]
    workspace = None
    if not options.dry_run:
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        workspace = create_workspace(
            options.workspace_root, f"{plan.name}-{stamp}-{flow_run.id.hex[:8]}"
        )
        logger.info("Workspace: %s", workspace)
    report = reporting.RunReport(plan, workspace)
    labels = {RUN_LABEL: str(flow_run.id)}

    sandbox, sandbox_error = None, None
    needs_sandbox = not options.dry_run and any(task.kind == "code" for task in plan.tasks)
    if needs_sandbox:
        try:
            client = connect(pool_size=2 * plan.max_concurrent_agents + 2)
            if orphans := remove_orphans(client):
                logger.warning(
                    "Removed %d sandbox container(s) left by toka-agents processes that were killed",
                    len(orphans),
                )
            sandbox = Sandbox(client, labels)
        except SandboxError as exc:
            sandbox_error = str(exc)
            logger.error("%s", exc)
    context = ExecutionContext(
        sandbox=sandbox,
        workspace=workspace,
        run_id=str(flow_run.id),
        sandbox_error=sandbox_error,
        dry_run=options.dry_run,
        labels=labels,
    )
    watcher = CancellationWatcher(flow_run.id, options.cancel_poll_seconds, sandbox)
    watcher.start()
    try:
        outcomes = Scheduler(schedule, context, report, watcher).run()
    finally:
        watcher.stop()
        if sandbox is not None:
            sandbox.cancel()  # stops anything still running when we leave early
            sandbox.remove_leftovers()
    report.finish(outcomes)
    return reporting.run_state(plan, outcomes, workspace, cancelled=watcher.cancelled.is_set())


class CancellationWatcher:
    """Watches the flow run's state; when someone cancels it (the UI, the API), kills the
    run's containers so its tasks end at once and no new ones start.

    Runs started by a Prefect worker are also cancelled by signal; this covers runs started
    in-process, such as `toka orchestrate`, which no worker supervises.
    """

    def __init__(self, flow_run_id: UUID, interval: float, sandbox: Sandbox | None) -> None:
        self.flow_run_id = flow_run_id
        self.interval = interval
        self.sandbox = sandbox
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
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.interval):
                try:
                    state = client.read_flow_run(self.flow_run_id).state
                except Exception:  # a flaky API read must not end the run; try again
                    continue
                if state is not None and (state.is_cancelling() or state.is_cancelled()):
                    self.cancelled.set()
                    if self.sandbox is not None:
                        self.sandbox.cancel()
                    return


class Scheduler:
    """Starts agents as their requirements complete, within the concurrency bound."""

    def __init__(
        self,
        schedule: Schedule,
        context: ExecutionContext,
        report: reporting.RunReport,
        watcher: CancellationWatcher,
    ) -> None:
        self.schedule = schedule
        self.plan = schedule.plan
        self.agents = schedule.agents
        self.context = context
        self.report = report
        self.watcher = watcher
        self.waiting = {name: set(before) for name, before in schedule.waiting_for.items()}
        self.status: dict[str, str] = {}  # agent -> completed | failed | skipped | cancelled
        self.cause: dict[str, str] = {}  # agent -> the failure that stopped it, for downstream messages
        self.last_future: dict[str, PrefectFuture[Any]] = {}
        self.task_label: dict[UUID, str] = {}
        self.last_outcome: dict[str, TaskOutcome] = {}
        self.handed_on: dict[str, dict[str, TaskOutcome]] = {}
        self.outcomes: dict[str, TaskOutcome] = {}
        self.finished: queue.Queue[tuple[PlannedTask, PrefectFuture[Any]]] = queue.Queue()
        self.pending = 0
        self.running: set[str] = set()
        self.ready: list[tuple[int, int, str]] = []
        self.next_task: dict[str, int] = {}  # agent -> index of its first task not yet submitted

    def run(self) -> list[TaskOutcome]:
        # A running agent holds two workers: its running task, and its next one waiting for it.
        workers = 2 * self.plan.max_concurrent_agents + 1
        with ThreadPoolTaskRunner(max_workers=workers) as self.runner:
            try:
                for name, before in self.waiting.items():
                    if not before:
                        self._make_ready(name)
                while True:
                    self._start_ready_agents()
                    if self.pending == 0:
                        break
                    try:
                        planned, future = self.finished.get(timeout=0.5)
                    except queue.Empty:
                        continue
                    self.pending -= 1
                    self._on_task_done(planned, future)
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM, a bug): kill the containers first, or leaving
                # the task runner would wait for every running task to reach its timeout.
                if self.context.sandbox is not None:
                    self.context.sandbox.cancel()
                raise
        return sorted(self.outcomes.values(), key=lambda o: self.schedule.task_position[o.task_id])

    def _make_ready(self, name: str) -> None:
        agent = self.agents[name]
        if self.watcher.cancelled.is_set():
            self._cancel_rest(agent, 0)
            return
        failed = [n for n in agent.requires if self.status.get(n) != "completed"]
        if failed:
            upstream = failed[0]
            word = {"failed": "failed", "skipped": "did not run", "cancelled": "was cancelled"}
            cause = self.cause[upstream]
            reason = f"not run: required agent {upstream!r} {word[self.status[upstream]]}: {cause}"
            self._skip_agent(agent, reason, cause=cause)
            return
        heapq.heappush(self.ready, (PRIORITY_RANK[agent.priority], self.schedule.position[name], name))

    def _start_ready_agents(self) -> None:
        while self.ready and len(self.running) < self.plan.max_concurrent_agents:
            _, _, name = heapq.heappop(self.ready)
            agent = self.agents[name]
            if self.watcher.cancelled.is_set():
                self._cancel_rest(agent, 0)
                continue
            if not agent.tasks:
                self._finish_agent(agent, "completed", "no tasks to run", cause="")
                continue
            self.running.add(name)
            finished = self.finished_upstream(agent)
            self.handed_on[name] = {n: self.last_outcome[n] for n in finished if n in self.last_outcome}
            upstream = [self.last_future[n] for n in finished if n in self.last_future]
            first = self._submit(agent, agent.tasks[0], upstream, skip_reason=None)
            self.next_task[name] = 1
            self._submit_next(agent, first)

    def _submit_next(self, agent: PlannedAgent, previous: PrefectFuture[Any]) -> None:
        """Submit the agent's next task to wait for `previous`: its task run then exists, and
        starts the moment `previous` ends, instead of after a round trip through the scheduler.
        If `previous` fails, it ends Skipped."""
        index = self.next_task[agent.name]
        if index < len(agent.tasks):
            self._submit(agent, agent.tasks[index], [previous], skip_reason=None, previous=previous)
            self.next_task[agent.name] = index + 1

    def finished_upstream(self, agent: PlannedAgent) -> list[str]:
        """Agents this one waits for, and those it optionally depends on that have finished."""
        waited = self.schedule.waiting_for[agent.name]
        optional = [n for n in agent.optional_requires if n in self.status and n not in waited]
        return [*waited, *optional]

    def _submit(
        self,
        agent: PlannedAgent,
        planned: PlannedTask,
        upstream: list[PrefectFuture[Any]],
        skip_reason: str | None,
        previous: PrefectFuture[Any] | None = None,
    ) -> PrefectFuture[Any]:
        task = agent_task if planned.retries == 0 or skip_reason else _with_retries(planned.retries)
        # Upstream task runs are final when a task is submitted, except `previous`, which
        # Prefect waits for; recording them all as inputs makes them upstream relations.
        with tags(*self.schedule.tags[agent.name]):
            future = self.runner.submit(
                task,
                parameters={
                    "label": planned.id,
                    "planned": quote(planned),
                    "context": quote(self.context),
                    "skip_reason": skip_reason,
                    "upstream": tuple(self.task_label[f.task_run_id] for f in upstream),
                    "upstream_results": quote(self.handed_on.get(agent.name, {})),
                    "previous": quote(previous),
                },
                wait_for=[allow_failure(previous)] if previous is not None else None,
                dependencies={"upstream": {TaskRunResult(id=f.task_run_id) for f in upstream}},
            )
        self.pending += 1
        self.last_future[agent.name] = future
        self.task_label[future.task_run_id] = planned.id
        future.add_done_callback(lambda done: self.finished.put((planned, done)))
        return future

    def _on_task_done(self, planned: PlannedTask, future: PrefectFuture[Any]) -> None:
        future.wait()
        state = future.state
        outcome = state.result(raise_on_failure=False) if state.is_final() else None
        if not isinstance(outcome, TaskOutcome):
            outcome = self._outcome_of_prefect_state(planned, state)
        self.outcomes[planned.id] = outcome
        self.last_outcome[planned.agent] = outcome
        self.report.task_finished(outcome)
        agent = self.agents[planned.agent]
        if agent.name not in self.running:
            return  # a task of an agent that is already settled
        cancelled = outcome.status == "cancelled" or self.watcher.cancelled.is_set()
        if outcome.ok and planned.index + 1 < len(agent.tasks) and not cancelled:
            self._submit_next(agent, self.last_future[agent.name])
            return
        self.running.discard(agent.name)
        if outcome.ok and planned.index + 1 == len(agent.tasks):
            self._finish_agent(agent, "completed", f"{len(agent.tasks)} tasks done", cause="")
            return
        if cancelled:
            self._cancel_rest(agent, self.next_task[agent.name])
            return
        # The task submitted after this one ends Skipped by itself; the rest are skipped here.
        for later in agent.tasks[self.next_task[agent.name] :]:
            reason = _after_failure_of(planned.id, outcome.message)
            self._submit(agent, later, [self.last_future[agent.name]], reason)
        cause = f"{planned.id}: {outcome.message}"
        self._finish_agent(agent, "failed", f"failed at {cause}", cause=cause)

    def _outcome_of_prefect_state(self, planned: PlannedTask, state: State[Any]) -> TaskOutcome:
        """The outcome of a task run that Prefect ended, not our code: a crash, or a task that
        waited for one the run's cancellation stopped."""
        if self.watcher.cancelled.is_set():
            return executor.cancelled(planned, "not run: the run was cancelled")
        return executor.failed(planned, state.message or f"task run ended in state {state.name}")

    def _cancel_rest(self, agent: PlannedAgent, start: int) -> None:
        """After a cancel, tasks that did not start get no task runs, only a line in the summary."""
        self.running.discard(agent.name)
        for later in agent.tasks[start:]:
            self.outcomes[later.id] = executor.cancelled(later, "not run: the run was cancelled")
        self._finish_agent(agent, "cancelled", "the run was cancelled", cause="the run was cancelled")

    def _skip_agent(self, agent: PlannedAgent, reason: str, cause: str) -> None:
        waited = self.schedule.waiting_for[agent.name]
        upstream = [self.last_future[n] for n in waited if n in self.last_future]
        for planned in agent.tasks:
            upstream = [self._submit(agent, planned, upstream, skip_reason=reason)]
        self._finish_agent(agent, "skipped", reason, cause=cause)

    def _finish_agent(self, agent: PlannedAgent, status: str, message: str, *, cause: str) -> None:
        self.status[agent.name] = status
        self.cause[agent.name] = cause
        self.report.agent_finished(agent, status, message)
        for later in self.schedule.dependents[agent.name]:
            self.waiting[later].discard(agent.name)
            if not self.waiting[later]:
                self._make_ready(later)
