"""Reporting: the only writer of Prefect states' messages, artifacts, events and task output logs.

It turns `TaskOutcome`s into task run states, keeps one progress artifact per agent moving
from 0 to 100%, emits an event per finished agent, and ends a run with a table artifact of
every task and the flow run's final state.
"""

from __future__ import annotations

import contextvars
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

from toka_agents.config.limits import format_bytes
from toka_agents.executor import TaskOutcome
from toka_agents.planning import Plan, PlannedAgent
from toka_agents.sandbox.containers import OutputCallback


def task_state(outcome: TaskOutcome) -> State[TaskOutcome]:
    """The final state of an agent task's Prefect task run."""
    if outcome.status == "completed":
        return Completed(message=outcome.message, data=outcome)
    if outcome.status == "dry-run":
        return Completed(name="DryRun", message=outcome.message, data=outcome)
    if outcome.status == "skipped":
        return Cancelled(name="Skipped", message=outcome.message, data=outcome)
    if outcome.status == "cancelled":
        return Cancelled(message=outcome.message, data=outcome)
    return Failed(message=outcome.message, data=outcome)


def output_logger(logger: logging.Logger | logging.LoggerAdapter[Any]) -> OutputCallback:
    """Log what a task prints, line by line, as it prints it."""
    partial = {"stdout": b"", "stderr": b""}

    def on_output(stream: str, data: bytes) -> None:
        *lines, partial[stream] = (partial[stream] + data).split(b"\n")
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            logger.info(text if stream == "stdout" else f"[stderr] {text}")

    return on_output


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes."""
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


class RunReport:
    """Progress artifacts and events of one run, updated as its tasks finish.

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
        self._latest: dict[str, tuple[float, str]] = {}
        self._flush_queued = False
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toka-report")
        self._writes: list[Future[None]] = []
        self._context = contextvars.copy_context()  # the flow run the artifacts belong to
        self._later(self._create_progress_artifacts)

    def _later(self, write: Callable[[], None]) -> None:
        self._writes.append(self._writer.submit(self._context.run, write))

    def _create_progress_artifacts(self) -> None:
        for agent in self.plan.agents:
            percent, text = _agent_progress(agent, 0)
            self._progress[agent.name] = create_progress_artifact(progress=percent, description=text)
        for name in self._workstreams:
            percent, text = self._workstream_progress(name)
            self._progress[f"workstream:{name}"] = create_progress_artifact(
                progress=percent, description=text
            )

    def task_finished(self, outcome: TaskOutcome) -> None:
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
        for key, (percent, text) in latest.items():
            update_progress_artifact(self._progress[key], percent, text)

    def _workstream_progress(self, name: str) -> tuple[float, str]:
        done, total = self._workstream_done[name], self._workstream_total[name]
        members = len(self._workstreams[name])
        return _percent(done, total), f"workstream {name}: {done}/{total} tasks of {members} agents done"

    def agent_finished(self, agent: PlannedAgent, status: str, message: str) -> None:
        emit_event(
            event=f"toka.agent.{status}",
            resource={
                "prefect.resource.id": f"toka.agent.{self.plan.name}.{agent.name}",
                "prefect.resource.name": agent.name,
                "toka.workstream": agent.workstream,
                "toka.priority": agent.priority,
            },
            payload={"message": message, "tasks": len(agent.tasks)},
        )

    def finish(self, outcomes: Iterable[TaskOutcome]) -> None:
        """Wait for the progress writes, then write the run's table artifact: every task with
        status, duration, peak memory and cpu time."""
        self._writer.shutdown(wait=True)
        for write in self._writes:
            if write.exception() is not None:
                get_run_logger().warning("could not update a progress artifact: %s", write.exception())
        rows = [
            {
                "task": outcome.task_id,
                "agent": outcome.agent,
                "status": outcome.status,
                "duration": "-" if outcome.duration is None else f"{outcome.duration:.2f}s",
                "peak memory": format_bytes(outcome.peak_memory),
                "cpu time": "-" if outcome.cpu_seconds is None else f"{outcome.cpu_seconds:.3f}s",
                "message": outcome.message,
            }
            for outcome in outcomes
        ]
        where = f" Workspace: {self.workspace}" if self.workspace else ""
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
    """What a flow run returns: where its workspace is and how every task ended."""

    workspace: str | None
    outcomes: list[TaskOutcome]


def run_state(
    plan: Plan, outcomes: list[TaskOutcome], workspace: Path | None, *, cancelled: bool
) -> State[RunSummary]:
    """The flow run's final state, with a message that names what failed."""
    summary = RunSummary(workspace=str(workspace) if workspace else None, outcomes=outcomes)
    failed = [o for o in outcomes if o.status == "failed"]
    skipped = [o for o in outcomes if o.status == "skipped"]
    done = [o for o in outcomes if o.ok]
    counts = f"{len(done)} of {len(plan.tasks)} tasks done"
    if cancelled:
        return Cancelled(message=f"cancelled: {counts}", data=summary)
    if failed:
        first = "; ".join(f"{o.task_id}: {o.message}" for o in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        skipped_agents = sorted({o.agent for o in skipped})
        tail = f"; skipped agents: {', '.join(skipped_agents)}" if skipped_agents else ""
        return Failed(message=f"{len(failed)} task(s) failed: {first}{more}{tail}", data=summary)
    return Completed(message=f"{len(plan.agents)} agents, {counts}", data=summary)


def refused_state(reason: str) -> State[None]:
    """The state of a flow run that refused to start any task."""
    return Failed(message=f"refused before starting any task: {reason}")


def config_failed_state(issues: Iterable[object]) -> State[None]:
    """The state of a flow run whose config did not load: every problem, one per line."""
    lines = [str(issue) for issue in issues]
    return Failed(message=f"{len(lines)} config problem(s):\n" + "\n".join(lines))
