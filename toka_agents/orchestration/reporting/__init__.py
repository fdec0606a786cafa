"""Reporting: the only writer of Prefect states' messages, artifacts and events.

It turns `TaskOutcome`s into task run states, keeps one progress artifact per agent moving
from 0 to 100%, emits an event per finished task (with what it used) and per finished agent,
and ends a run with a table artifact of every task and the flow run's final state.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.events import emit_event
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel

from toka_agents import text
from toka_agents.errors import one_line
from toka_agents.executor import TaskOutcome
from toka_agents.figures import TASK_MESSAGE_LIMIT, llm_columns, task_message, usage_columns
from toka_agents.planning import Plan, PlannedAgent, PlannedTask


def task_state(outcome: TaskOutcome, *, with_data: bool = True) -> State[TaskOutcome]:
    """The final state of an agent task's Prefect task run; `with_data=False` leaves the
    outcome out, for a task run created in its final state (the scheduler holds the outcome).
    Its message is the outcome's as one visible line (`text.one_line`); the outcome keeps its own."""
    data = outcome if with_data else None
    message = task_message(outcome)
    if outcome.status == "completed":
        return Completed(message=message, data=data)
    if outcome.status == "dry-run":
        return Completed(name="DryRun", message=message, data=data)
    if outcome.status == "skipped":
        return Cancelled(name="Skipped", message=message, data=data)
    if outcome.status == "cancelled":
        return Cancelled(message=message, data=data)
    return Failed(message=message, data=data)


RunLogger = logging.Logger | logging.LoggerAdapter[Any]


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


class RunReport:
    """Progress artifacts and events of one run, updated as its tasks finish.

    An agent gets its progress artifact when it starts, and its workstream with its first
    agent that starts: agents that never run (skipped, cancelled) say so in their task
    runs, and a run of thousands of agents does not open with thousands of API calls.
    Artifact writes are API calls; they go, in order, to one writer thread, so that the
    scheduler never waits for them before starting the next task. `finish` waits for them.
    """

    def __init__(self, plan: Plan, workspace: Path | None) -> None:
        self.plan = plan
        self.workspace = workspace
        self._agents = {agent.name: agent for agent in plan.agents}
        self._done: dict[str, int] = {agent.name: 0 for agent in plan.agents}
        self._workstreams: dict[str, list[PlannedAgent]] = {}
        for agent in plan.agents:
            self._workstreams.setdefault(agent.workstream, []).append(agent)
        self._workstream_done = dict.fromkeys(self._workstreams, 0)
        self._workstream_total = {
            name: sum(len(member.tasks) for member in members)
            for name, members in self._workstreams.items()
        }
        self._progress: dict[str, UUID] = {}
        self._before_creation: dict[str, tuple[float, str]] = {}  # progress that came first
        self._opened: set[str] = set()  # artifacts whose creation is queued
        self._latest: dict[str, tuple[float, str]] = {}
        self._flush_queued = False
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toka-report")
        self._writes: list[Future[None]] = []
        self._context = contextvars.copy_context()  # the flow run the artifacts belong to

    def _later(self, write: Callable[[], None]) -> None:
        self._writes.append(self._writer.submit(self._context.run, write))

    def agent_started(self, agent: PlannedAgent) -> None:
        """Open the agent's progress artifact, and its workstream's if it is the first."""
        for key, progress in (
            (agent.name, _agent_progress(agent, self._done[agent.name])),
            (f"workstream:{agent.workstream}", self._workstream_progress(agent.workstream)),
        ):
            if key not in self._opened:
                self._opened.add(key)
                self._later(functools.partial(self._create_progress_artifact, key, *progress))

    def _create_progress_artifact(self, key: str, percent: float, text: str) -> None:
        self._progress[key] = create_progress_artifact(progress=percent, description=text)
        newer = self._before_creation.pop(key, None)  # the writer is one thread: no lock needed
        if newer is not None:
            update_progress_artifact(self._progress[key], *newer)

    def task_finished(self, outcome: TaskOutcome) -> None:
        """Emit the task's event, and move its agent's progress if it is done."""
        if outcome.status in TASK_EVENTS:
            self.task_event(outcome)
        if not outcome.ok:
            return
        agent = self._agents[outcome.agent]
        self._done[agent.name] += 1
        self._workstream_done[agent.workstream] += 1
        with self._lock:
            self._latest[agent.name] = _agent_progress(agent, self._done[agent.name])
            self._latest[f"workstream:{agent.workstream}"] = self._workstream_progress(agent.workstream)
            if not self._flush_queued:
                self._flush_queued = True
                self._later(self._flush_progress)

    def _flush_progress(self) -> None:
        """Write the latest progress of each artifact that moved: when tasks finish faster
        than the API takes the writes, only the newest value of each is written."""
        with self._lock:
            latest, self._latest = self._latest, {}
            self._flush_queued = False
        for key, (percent, description) in latest.items():
            if key in self._progress:
                update_progress_artifact(self._progress[key], percent, description)
            else:  # its creation is queued behind this flush (or failed, which the summary says)
                self._before_creation[key] = (percent, description)

    def _workstream_progress(self, name: str) -> tuple[float, str]:
        done, total = self._workstream_done[name], self._workstream_total[name]
        members = len(self._workstreams[name])
        return _percent(done, total), f"workstream {name}: {done}/{total} tasks of {members} agents done"

    def task_event(self, outcome: TaskOutcome) -> None:
        """`toka.task.completed|failed|cancelled`, with everything the task used measured in
        its payload (None where nothing was measured, as for a task that never started)."""
        self._emit(
            "task",
            outcome.task_id,
            outcome.status,
            payload=task_figures(outcome),
            labels={"toka.agent": outcome.agent},
        )

    def agent_finished(self, agent: PlannedAgent, status: str, message: str) -> None:
        self._emit(
            "agent",
            agent.name,
            status,
            payload={"message": message, "tasks": len(agent.tasks)},
            labels={"toka.workstream": agent.workstream, "toka.priority": agent.priority},
        )

    def _emit(
        self, kind: str, name: str, status: str, *, payload: dict[str, Any], labels: dict[str, str]
    ) -> None:
        """The event `toka.<kind>.<status>` about the resource `toka.<kind>.<plan>.<name>`."""
        toka_event(f"toka.{kind}.{status}", kind, self.plan.name, name, payload, labels)

    def finish(self, outcomes: Iterable[TaskOutcome], warnings: Iterable[str] = ()) -> None:
        """Wait for the progress writes, then write the run's table artifact: every task with
        status, duration, peak memory and cpu time, and the run's `warnings` (missing outputs)
        in its description. Never raises: a run whose summary cannot be written keeps its own
        result, and the log says what failed."""
        logger = get_run_logger()
        self._writer.shutdown(wait=True)
        failed_writes = [write.exception() for write in self._writes if write.exception()]
        if failed_writes:
            logger.warning(
                "could not update %d progress artifact(s): %s",
                len(failed_writes),
                one_line(failed_writes[0]),
            )
        outcomes = list(outcomes)
        with_llm = any(outcome.steps is not None for outcome in outcomes)
        rows = [
            {
                "task": outcome.task_id,
                "agent": outcome.agent,
                "status": outcome.status,
                **usage_columns(outcome),
                **(llm_columns(outcome) if with_llm else {}),
                "message": outcome.message,
            }
            for outcome in outcomes
        ]
        where = f" Workspace: {self.workspace}" if self.workspace else ""
        where += "".join(f" Warning: {text.one_line(warning, 300)}." for warning in warnings)
        try:
            create_table_artifact(
                table=rows,
                key=artifact_key(self.plan.name, "summary"),
                description=f"Every task of {self.plan.name}.{where}",
            )
            notes = agent_notes(self.plan)
            if notes:
                create_markdown_artifact(
                    markdown=notes,
                    key=artifact_key(self.plan.name, "agents"),
                    description=f"What the agents of {self.plan.name} carry beyond their tasks",
                )
        except Exception as exc:  # the API failed us; the run's result stands
            logger.error("could not write the run's summary artifact: %s", one_line(exc))


TASK_EVENTS = ("completed", "failed", "cancelled")
"""Task statuses that emit a `toka.task.<status>` event: those of tasks that ran."""

TASK_FIGURES = (
    "status",
    "message",
    "exit_code",
    "duration",
    "peak_memory",
    "cpu_seconds",
    "peak_pids",
    "stdout_bytes",
    "stderr_bytes",
    "disk_written",
    "output_truncated",
    "image",
    "image_digest",
    "steps",
    "input_tokens",
    "output_tokens",
    "model_seconds",
    "cost",
)
"""What a task event's payload carries: bytes, seconds and counts as plain numbers."""


def person_event(kind: str, run_name: str, task: PlannedTask, said: dict[str, str]) -> None:
    """`toka.human.<kind>` about a task of the run `run_name`: `asked` (the question),
    `answered` (the answer), `approval-requested` (what and its detail), `approved` or
    `rejected` (and the comment). Its resource is the task's, as in the task's own events."""
    payload = {"task": task.id, **{key: _cut(value) for key, value in said.items()}}
    toka_event(f"toka.human.{kind}", "task", run_name, task.id, payload, {"toka.agent": task.agent})


EVENT_TEXT = 10_000
"""Characters of a question, an answer or a proposal an event carries (Prefect refuses
events over 1.5 MB); the form and the conversation keep them whole."""


def _cut(value: str) -> str:
    return (
        value
        if len(value) <= EVENT_TEXT
        else value[:EVENT_TEXT] + f" ... (cut: {len(value) - EVENT_TEXT:,} more characters)"
    )


def toka_event(
    event: str, kind: str, run_name: str, name: str, payload: dict[str, Any], labels: dict[str, str]
) -> None:
    """`event` about the resource `toka.<kind>.<run_name>.<name>` (a task, an agent)."""
    emit_event(
        event=event,
        resource={
            "prefect.resource.id": f"toka.{kind}.{run_name}.{name}",
            "prefect.resource.name": name,
            **labels,
        },
        payload=payload,
    )


def task_figures(outcome: TaskOutcome) -> dict[str, Any]:
    return {name: getattr(outcome, name) for name in TASK_FIGURES}


def usage_artifact(task: PlannedTask, outcome: TaskOutcome) -> None:
    """What one task used (and, for an LLM task, its model calls, tokens and cost), as a small
    table artifact of its own task run, so the task run's page answers "what did this use".
    Never raises: the task keeps its outcome."""
    used = {**usage_columns(outcome), **(llm_columns(outcome) if outcome.steps is not None else {})}
    try:
        create_table_artifact(
            table=[{"what": what, "used": value} for what, value in used.items()],
            key=artifact_key(task.id, "usage"),
            description=f"What {task.id} used ({outcome.status})",
        )
    except Exception as exc:  # the API failed us; the task's outcome stands
        get_run_logger().warning(
            "could not write the usage artifact of %s: %s", text.visible(task.id), one_line(exc)
        )


def agent_notes(plan: Plan) -> str:
    """Markdown of the keys each agent's spec holds that toka-agents keeps but does not act on."""
    sections = []
    for agent in plan.agents:
        if not agent.extra:
            continue
        lines = [f"## {agent.name}", ""]
        lines += [f"- **{key}**: {_short(value)}" for key, value in agent.extra.items()]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def _short(value: object, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _percent(done: int, total: int) -> float:
    return 100.0 * done / total if total else 100.0


def _agent_progress(agent: PlannedAgent, done: int) -> tuple[float, str]:
    text = f"{agent.name} ({agent.workstream}, {agent.priority}): {done}/{len(agent.tasks)} tasks done"
    return _percent(done, len(agent.tasks)), text


class RunSummary(BaseModel):
    """What a flow run returns: where its workspace is, how every task ended, and what the run
    warns of (an output it did not find, a workspace it could not archive)."""

    workspace: str | None
    outcomes: list[TaskOutcome]
    warnings: list[str] = []


class RunNotCompleted(Exception):
    """The data of a failed or cancelled flow run's state: its one-line message, with the run's
    summary. When a worker runs the flow, Prefect's engine raises a failed state's data (and
    logs it): this makes that the run's own reason, where a summary gave `TypeError:
    Unexpected result for failed state: RunSummary(...)` and the whole summary."""

    def __init__(self, message: str, summary: RunSummary) -> None:
        super().__init__(message)
        self.summary = summary

    def __reduce__(self) -> tuple[Any, ...]:  # pickled with the summary, as a result is stored
        return type(self), (str(self), self.summary)


def run_state(
    plan: Plan,
    outcomes: list[TaskOutcome],
    workspace: Path | None,
    *,
    cancelled: bool,
    warnings: list[str] | None = None,
) -> State[RunSummary | RunNotCompleted]:
    """The flow run's final state, with a one-line message that names what failed; its data
    is the run's summary, within a `RunNotCompleted` when the run failed or was cancelled."""
    where = str(workspace) if workspace else None
    summary = RunSummary(workspace=where, outcomes=outcomes, warnings=warnings or [])
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    done = [o for o in outcomes if o.ok]
    counts = f"{len(done)} of {len(plan.tasks)} tasks done"
    if cancelled:
        message = f"cancelled: {counts}"
        return Cancelled(message=message, data=RunNotCompleted(message, summary))
    if failed:
        first = "; ".join(f"{o.task_id}: {task_message(o)}" for o in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        # An agent whose own task failed is named among the failures, not as skipped.
        skipped_agents = sorted({o.agent for o in skipped} - {o.agent for o in failed})
        tail = f"; skipped agents: {', '.join(skipped_agents)}" if skipped_agents else ""
        message = text.one_line(f"{len(failed)} task(s) failed: {first}{more}{tail}")
        return Failed(message=message, data=RunNotCompleted(message, summary))
    return Completed(message=text.one_line(f"{len(plan.agents)} agents, {counts}"), data=summary)


def recovered_state(what: str, data: Any) -> State[Any]:
    """The state of a step the agent loop recovers from (a malformed model reply): Completed,
    so the UI does not show it as a failure, with a message naming what was recovered."""
    message = text.one_line(f"recovered: {what}; the model is asked again", TASK_MESSAGE_LIMIT)
    return Completed(message=message, data=data)


def refused_state(reason: str) -> State[RunNotCompleted]:
    """The state of a flow run that refused to start any task."""
    return _not_started(f"refused before starting any task: {reason}")


def config_failed_state(issues: Iterable[object]) -> State[RunNotCompleted]:
    """The state of a flow run whose config did not load: its problems on one line, `; ` between
    them, as many as fit."""
    problems = [str(issue) for issue in issues]
    return _not_started(f"{len(problems)} config problem(s): " + "; ".join(problems))


def _not_started(reason: str) -> State[RunNotCompleted]:
    """Failed with `reason`, and no task's outcome (a worker's engine raises it, named)."""
    message = text.one_line(reason)
    nothing_ran = RunSummary(workspace=None, outcomes=[])
    return Failed(message=message, data=RunNotCompleted(message, nothing_ran))
