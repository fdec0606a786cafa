"""The scheduler: the loop in the flow body that starts agents as their requirements complete,
at most `max_concurrent_agents` at a time, highest priority first.

A `Schedule` is the plan laid out for it (who waits for whom, in which order, with which
tags); an `AgentRun` is one agent's way through the run, plain data that only the loop
changes. Agents downstream of a failure get task runs that say which upstream failed.
"""

from __future__ import annotations

import heapq
import queue
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.objects import TaskRunResult
from prefect.context import FlowRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import allow_failure, quote

from toka_agents import executor
from toka_agents.config.models import PRIORITY_RANK
from toka_agents.errors import one_line
from toka_agents.executor import ExecutionContext, TaskOutcome
from toka_agents.orchestration import reporting
from toka_agents.orchestration.cancellation import CancellationWatcher
from toka_agents.orchestration.tagging import agent_tags
from toka_agents.orchestration.tasks import after_failure_of, agent_task, with_retries
from toka_agents.planning import Plan, PlannedAgent, PlannedTask
from toka_agents.sandbox.workspace_files import outputs_present


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


@dataclass(eq=False)
class Scheduler:
    """Starts agents as their requirements complete, within the concurrency bound.

    One loop takes finished task runs off a queue and decides what each agent does next.
    Settling an agent (completed, failed, skipped, cancelled) releases the agents that wait
    for it through a worklist, never through recursion, so a chain of any depth is settled
    in one pass. Tasks that cannot run get their Skipped task runs straight from the API,
    without a trip through the task engine.
    """

    schedule: Schedule
    context: ExecutionContext
    report: reporting.RunReport
    watcher: CancellationWatcher
    flow_run_id: UUID
    agents: dict[str, AgentRun] = field(init=False)
    outcomes: dict[str, TaskOutcome] = field(default_factory=dict, init=False)
    finished: queue.Queue[tuple[PlannedTask, PrefectFuture[Any]]] = field(
        default_factory=queue.Queue, init=False
    )
    ready: list[tuple[int, int, str]] = field(default_factory=list, init=False)
    pending: int = field(default=0, init=False)  # task runs submitted, not yet off `finished`
    running: int = field(default=0, init=False)  # agents whose status is "running"
    labels: dict[UUID, str] = field(default_factory=dict, init=False)  # task run id -> task id
    attempt_key: str = field(default="", init=False)

    def __post_init__(self) -> None:
        self.agents = {
            name: AgentRun(self.schedule.agents[name], set(before))
            for name, before in self.schedule.waiting_for.items()
        }
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
        task = agent_task if planned.retries == 0 else with_retries(planned.retries)
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
        agent = self.schedule.agents[planned.agent]
        if planned.index + 1 == len(agent.tasks):
            outcome = self._with_outputs(agent, outcome)
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

    def _with_outputs(self, agent: PlannedAgent, outcome: TaskOutcome) -> TaskOutcome:
        """The outcome of an agent's last task, naming the files of its declared outputs that
        the workspace holds: what the agents after it are handed. The workspace is walked once
        per agent, when its last task is done, not after every task."""
        workspace = self.context.workspace
        if not (agent.outputs and outcome.ok and workspace is not None):
            return outcome
        return outcome.model_copy(update={"files": outputs_present(workspace, agent.outputs)})

    def _ending(self, run: AgentRun, planned: PlannedTask, outcome: TaskOutcome) -> Ending | None:
        """How the agent ends after `planned`, or None when its next task goes on."""
        if outcome.status == "cancelled" or self.watcher.cancelled.is_set():
            return self._cancel_unsubmitted(run)
        agent = run.agent
        if not outcome.ok and agent.stops_after_failure_of(planned):
            # The task submitted after this one ends Skipped by itself; the rest are skipped here.
            assert run.last is not None
            self._skip_unsubmitted(run, after_failure_of(planned.id, outcome.message), [run.last])
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
