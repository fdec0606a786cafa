"""The live view of a run, and the agents' latest states, read from Prefect's API.

Reporting's reader: it only reads (the flow run, its task runs, its progress artifacts)
through Prefect's client, and draws what it read: one progress bar per agent from its task
runs' states, the task each agent is on, and every failure with its reason as it happens.
On a terminal that is a rich live display; otherwise one plain line per change, for logs
and pipes. It works the same for a run in this process (`toka orchestrate --watch`) and for
one started elsewhere (`toka agent monitor`), since it knows only what the server knows.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterType,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateType,
    TaskRunFilter,
    TaskRunFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateType, TaskRun
from prefect.client.schemas.sorting import TaskRunSort
from prefect.exceptions import ObjectNotFound
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from toka_agents import text
from toka_agents.errors import TokaError, one_line
from toka_agents.orchestration.people import Waiting, waiting_on
from toka_agents.planning import Plan

TaskStatus = Literal["waiting", "running", "completed", "failed", "skipped", "cancelled"]
_PAGE = 200
_PROGRESS = re.compile(r"^(?P<agent>\S+) \(.*\): \d+/(?P<total>\d+) tasks done$")
"""The description of an agent's progress artifact (reporting writes it), for its task count."""
_COLORS = {"completed": "green", "failed": "red", "skipped": "yellow", "cancelled": "yellow"}


class WatchError(TokaError):
    """The run cannot be watched: no such flow run, or the API does not answer."""


@dataclass(frozen=True)
class TaskView:
    """One agent task's task run as the server has it."""

    id: UUID
    name: str
    agent: str
    status: TaskStatus
    state_name: str
    message: str


@dataclass
class AgentView:
    """One agent's bar: its task count (if known), what ended how, and its current task."""

    name: str
    total: int | None = None
    done: int = 0
    failed: int = 0
    skipped: int = 0
    cancelled: int = 0
    current: str | None = None

    @property
    def ended(self) -> int:
        return self.done + self.failed + self.skipped + self.cancelled

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.current is not None:
            return "running"
        if self.cancelled:
            return "cancelled"
        if self.skipped and not self.done:
            return "skipped"
        if self.total is not None and self.ended >= self.total:
            return "completed"
        return "waiting" if not self.ended else "running"


@dataclass
class RunView:
    """What the server knows of a run at one moment."""

    flow_run: FlowRun
    tasks: list[TaskView]
    agents: dict[str, AgentView] = field(default_factory=dict)
    waiting: Waiting | None = None
    """What the run waits for while a person is asked."""

    @property
    def state_name(self) -> str:
        return self.flow_run.state.name if self.flow_run.state else "Pending"

    @property
    def final(self) -> bool:
        return self.flow_run.state is not None and self.flow_run.state.is_final()

    @property
    def completed(self) -> bool:
        return self.flow_run.state is not None and self.flow_run.state.is_completed()

    @property
    def settled(self) -> bool:
        """Final, with every task run final too (their states land a moment after the flow's)."""
        return self.final and all(task.status not in ("waiting", "running") for task in self.tasks)


def task_status(task_run: TaskRun) -> TaskStatus:
    state = task_run.state
    if state is None or state.is_scheduled() or state.is_pending() or state.is_paused():
        return "waiting"
    if state.is_running():
        return "running"
    if state.is_completed():
        return "completed"
    if state.is_cancelled() or state.is_cancelling():
        return "skipped" if state.name == "Skipped" else "cancelled"
    return "failed"  # Failed, Crashed


def agent_of(task_run_name: str) -> str | None:
    """The agent of an agent task run (`agent/task`); None for other task runs, such as the
    model and tool calls nested in an LLM task (`agent/task · model 3`)."""
    agent, slash, task = task_run_name.partition("/")
    if not slash or not agent or not task or " · " in task:
        return None
    return agent


def planned_tasks(plan: Plan) -> dict[str, int]:
    """Each agent's number of tasks, in plan order: the bars' lengths when the plan is known."""
    return {agent.name: len(agent.tasks) for agent in plan.agents}


def _task_view(task_run: TaskRun) -> TaskView | None:
    agent = agent_of(task_run.name)
    if agent is None:
        return None
    state = task_run.state
    return TaskView(
        id=task_run.id,
        name=task_run.name,
        agent=agent,
        status=task_status(task_run),
        state_name=state.name if state else "Pending",
        message=(state.message or "") if state else "",
    )


def read_run(client: Any, flow_run_id: UUID, totals: Mapping[str, int] | None = None) -> RunView:
    """The run as the server has it now. `totals`: each agent's task count, when known;
    otherwise they come from the agents' progress artifacts, once an agent has started."""
    try:
        flow_run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        raise WatchError(f"no flow run {flow_run_id} on this Prefect server") from None
    task_runs: list[TaskRun] = []
    while True:
        page = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=_PAGE,
            offset=len(task_runs),
        )
        task_runs.extend(page)
        if len(page) < _PAGE:
            break
    tasks = [view for view in map(_task_view, task_runs) if view is not None]
    agents = {name: AgentView(name, total) for name, total in (totals or {}).items()}
    if totals is None:
        for name, total in _totals_from_artifacts(client, flow_run_id).items():
            agents[name] = AgentView(name, total)
    for task in tasks:
        agent = agents.setdefault(task.agent, AgentView(task.agent))
        if task.status == "running":
            agent.current = task.name.partition("/")[2]
        if task.status in ("completed", "failed", "skipped", "cancelled"):
            counter = "done" if task.status == "completed" else task.status
            setattr(agent, counter, getattr(agent, counter) + 1)
    return RunView(flow_run=flow_run, tasks=tasks, agents=agents, waiting=waiting_on(client, flow_run))


def _totals_from_artifacts(client: Any, flow_run_id: UUID) -> dict[str, int]:
    totals = {}
    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
    )
    for artifact in artifacts:
        match = _PROGRESS.match(artifact.description or "")
        if match:
            totals[match["agent"]] = int(match["total"])
    return totals


# --- drawing -------------------------------------------------------------------------


def render(view: RunView) -> RenderableType:
    """The live display: a title line, then one row per agent. Names come from the server, as
    they were written: each is one visible line, never markup."""
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold")
    for column in ("agent", "progress", "tasks", "status", "current task"):
        table.add_column(column)
    for agent in view.agents.values():
        total = agent.total if agent.total is not None else max(agent.ended, 1)
        color = _COLORS.get(agent.status, "cyan")
        table.add_row(
            Text(_name(agent.name)),
            ProgressBar(total=total, completed=agent.ended, width=24, complete_style=color),
            f"{agent.done}/{agent.total if agent.total is not None else '?'}",
            Text(agent.status, style=color),
            Text(_name(agent.current or "")),
        )
    title = Text.assemble(
        ("flow run ", "dim"),
        (_name(view.flow_run.name), "bold"),
        (f" ({view.flow_run.id}): ", "dim"),
        (_name(view.state_name), "bold"),
    )
    if view.waiting is None:
        return Group(title, table)
    return Group(title, table, Text(waiting_line(view.waiting), style="yellow"))


def _name(name: str) -> str:
    return text.visible(name, newlines=False)


def failure_line(task: TaskView) -> str:
    """A line for a task run that failed, with its state message: one visible line."""
    return f"✗ {_name(task.name)} {_name(task.state_name.lower())}: {text.one_line(task.message)}"


def task_line(task: TaskView) -> str:
    """A plain line for one task run's new state: one visible line."""
    reason = (
        f": {text.one_line(task.message)}" if task.status in ("failed", "skipped", "cancelled") else ""
    )
    return f"{_name(task.name)}: {_name(task.state_name)}{reason}"


def waiting_line(waiting: Waiting) -> str:
    """What a paused run waits for, and the command that answers it: one visible line."""
    asks = "asks" if waiting.kind == "question" else "waits for approval to"
    said = text.one_line(waiting.text, 300)
    return f"? {_name(waiting.agent)}/{_name(waiting.task)} {asks}: {said} → {waiting.commands()}"


def end_line(view: RunView) -> str:
    """The run's end state and message: one visible line."""
    state = view.flow_run.state
    message = text.one_line(state.message) if state and state.message else ""
    return f"Run: {_name(view.state_name)}" + (f": {message}" if message else "")


class Watch:
    """Follows one run on the server until it ends, drawing it on `console`.

    `flow_run_id` may come later (`found`): a run in this process is watched from the
    moment its flow run exists. `stop()` ends the watch early (its run ended in-process);
    the last view is read and drawn before `run` returns.
    """

    def __init__(
        self,
        console: Console,
        *,
        flow_run_id: UUID | None = None,
        totals: Mapping[str, int] | None = None,
        live: bool | None = None,
        interval: float = 0.5,
    ) -> None:
        self.console = console
        self.flow_run_id = flow_run_id
        self.totals = totals
        self.live = console.is_terminal if live is None else live
        self.interval = interval
        self.view: RunView | None = None
        self._found = threading.Event()
        self._stop = threading.Event()
        self._seen: dict[UUID, str] = {}
        self._waiting: Waiting | None = None
        if flow_run_id is not None:
            self._found.set()

    def found(self, flow_run_id: UUID) -> None:
        if self.flow_run_id is None:
            self.flow_run_id = flow_run_id
            self._found.set()

    def stop(self) -> None:
        self._stop.set()
        self._found.set()

    def run(self, settle_seconds: float = 5.0) -> RunView | None:
        """Draw the run until it is final (or `stop()`), then until its task runs are final
        too, for at most `settle_seconds` more. Returns the last view (None: never found)."""
        self._found.wait()
        if self.flow_run_id is None:
            return None
        with get_client(sync_client=True) as client, self._display() as show:
            settle_by: float | None = None
            while True:
                view = self._read(client)
                show(view)
                if view.final or self._stop.is_set():
                    settle_by = settle_by or time.monotonic() + settle_seconds
                    if view.settled or time.monotonic() >= settle_by:
                        break
                if self._stop.is_set():
                    time.sleep(self.interval)  # settling: the task runs' last states land
                else:
                    self._stop.wait(self.interval)
        if self.view is not None:
            self.console.print(end_line(self.view), markup=False, highlight=False)
        return self.view

    def _read(self, client: Any) -> RunView:
        assert self.flow_run_id is not None
        try:
            view = read_run(client, self.flow_run_id, self.totals)
        except WatchError:
            raise
        except Exception as exc:
            if self.view is None:
                raise WatchError(f"cannot read flow run {self.flow_run_id}: {one_line(exc)}") from None
            return self.view  # the API hiccuped: draw what we had and ask again
        self.view = view
        return view

    @contextlib.contextmanager
    def _display(self) -> Iterator[Any]:
        if not self.live:
            yield self._print_changes
            return
        with Live(console=self.console, refresh_per_second=4, transient=False) as live:

            def show(view: RunView) -> None:
                for task in self._changed(view):
                    if task.status == "failed":
                        live.console.print(Text(failure_line(task), style="red"))  # Text: no markup
                live.update(render(view))  # a question waiting is drawn under the bars

            yield show

    def _changed(self, view: RunView) -> list[TaskView]:
        changed = []
        for task in view.tasks:
            if self._seen.get(task.id) != task.state_name:
                self._seen[task.id] = task.state_name
                changed.append(task)
        return changed

    def _print_changes(self, view: RunView) -> None:
        for task in self._changed(view):
            if task.status == "waiting":
                continue
            line = failure_line(task) if task.status == "failed" else task_line(task)
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        if view.waiting is not None and view.waiting != self._waiting:
            self.console.print(waiting_line(view.waiting), markup=False, highlight=False, soft_wrap=True)
        self._waiting = view.waiting


class FlowRunSpotter(logging.Handler):
    """Finds the id of the flow run this process starts, from its first log record (Prefect's
    run loggers give every record the run's `flow_run_id`), and hands it to a `Watch`."""

    LOGGERS = ("prefect.flow_runs", "prefect.task_runs")

    def __init__(self, watch: Watch) -> None:
        super().__init__(logging.DEBUG)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        flow_run_id = getattr(record, "flow_run_id", None)
        if flow_run_id:
            with contextlib.suppress(ValueError):
                self.watch.found(UUID(str(flow_run_id)))

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        loggers = [logging.getLogger(name) for name in self.LOGGERS]
        for logger in loggers:
            logger.addHandler(self)
        try:
            yield
        finally:
            for logger in loggers:
                logger.removeHandler(self)


@contextlib.contextmanager
def quiet_console_logs() -> Iterator[None]:
    """Prefect's log lines stay off the terminal while the live view draws the run (they
    still go to the API, and the view shows failures with their reasons)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    levels = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(handlers, levels, strict=True):
            handler.setLevel(level)


# --- the agents' latest states -------------------------------------------------------


@dataclass(frozen=True)
class LatestRun:
    """An agent's latest task run on the server."""

    task_run: TaskRun

    @property
    def task(self) -> str:
        return self.task_run.name.partition("/")[2]

    @property
    def state_name(self) -> str:
        return self.task_run.state.name if self.task_run.state else "Pending"


def latest_task_runs(plan: Plan, flow_names: Sequence[str]) -> dict[str, LatestRun | None]:
    """Each agent's latest task run among the runs of the flows `flow_names` (the config's
    own flow, and the deployments' flow): the task runs named after one of its tasks."""
    latest: dict[str, LatestRun | None] = {}
    with get_client(sync_client=True) as client:
        for agent in plan.agents:
            names = [task.id for task in agent.tasks]
            found = (
                client.read_task_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=list(flow_names))),
                    task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=names)),
                    sort=TaskRunSort.EXPECTED_START_TIME_DESC,
                    limit=1,
                )
                if names
                else []
            )
            latest[agent.name] = LatestRun(found[0]) if found else None
    return latest


def waiting_runs(flow_names: Sequence[str]) -> list[Waiting]:
    """What the paused runs of the flows `flow_names` wait for: a person's answer or approval."""
    with get_client(sync_client=True) as client:
        paused = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=list(flow_names))),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED]))
            ),
            limit=50,
        )
        return [waiting for run in paused if (waiting := waiting_on(client, run)) is not None]
