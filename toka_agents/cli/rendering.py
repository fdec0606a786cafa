"""How the `toka` command shows things: config problems and warnings, the plan, a run's summary
and where its results are (or all of it as one JSON document), the agents' table, and
Prefect's log lines.

A run's summary is a table on a terminal wide enough for it, and otherwise (piped, redirected,
a narrow terminal) one block of lines per task, which stays readable at any width.

Everything here that toka-agents did not write (task output, messages, names from a config or
a file system) goes through `text` and is printed as `Text` or with `markup=False`: shown
literally, never as markup or terminal escapes.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from toka_agents import planning, text
from toka_agents.config.inputs import as_text
from toka_agents.errors import ConfigIssue
from toka_agents.figures import llm_columns, task_message, usage_columns
from toka_agents.planning import Validation

if TYPE_CHECKING:  # run and watch verbs only: the others start without Prefect
    from toka_agents.api import RunResult
    from toka_agents.executor import TaskOutcome
    from toka_agents.orchestration.watching import LatestRun

from toka_agents.cli.app import err


def print_issues(issues: list[ConfigIssue], console: Console | None = None) -> None:
    """Each config problem on one line: `FILE: key.path: message`."""
    for issue in issues:
        (console or err).print(text.one_line(str(issue), None), markup=False)


def print_warnings(
    checked: Validation, *, all_of_them: bool = False, console: Console | None = None
) -> None:
    """Plan warnings always; file warnings (Toka schema departures) in full only on request."""
    console = console or err
    planned = checked.plan.warnings if checked.plan else ()
    for warning in planned:
        console.print(f"warning: {text.one_line(str(warning), None)}", markup=False)
    from_files = [w for w in checked.warnings if w not in planned]
    if all_of_them:
        for warning in from_files:
            console.print(f"warning: {text.one_line(str(warning), None)}", markup=False)
    elif from_files:
        console.print(
            f"{len(from_files)} more warning(s) about the files: `toka validate` lists them",
            markup=False,
        )


def print_plan(planned: planning.Plan, console: Console) -> None:
    """The plan's name and description, then a row per agent: its wave, settings and tasks."""
    console.print(
        Text.assemble(
            (text.visible(planned.name, newlines=False), "bold"), ": ", text.visible(planned.description)
        )
    )
    table = Table("wave", "agent", "priority", "workstream", "requires", "tasks")
    wave_of = {name: i for i, wave in enumerate(planned.waves, 1) for name in wave}
    for agent in planned.agents:
        table.add_row(
            str(wave_of[agent.name]),
            _cell(agent.name),
            _cell(agent.priority),
            _cell(agent.workstream),
            _cell(", ".join(agent.requires) or "-"),
            Text("\n").join(_cell(f"{task.name} ({task.kind})") for task in agent.tasks) or "-",
        )
    console.print(table)
    if planned.workspace_seed is not None:
        seed = planned.workspace_seed
        how = "copied from" if seed.from_ is not None else "cloned from"
        console.print(Text.assemble(("workspace: ", "bold"), how, " ", _cell(seed.source or "-")))
    if planned.outputs:
        shown = [
            output.path + (f" ({output.title})" if output.title else "") for output in planned.outputs
        ]
        console.print(Text.assemble(("outputs: ", "bold"), _cell(", ".join(shown))))


def print_inputs(planned: planning.Plan, console: Console) -> None:
    """The config's inputs, each with its type, default and the value this plan uses, then
    the LLM tasks' instructions as the inputs filled them. Nothing for a config without inputs."""
    if not planned.declared_inputs:
        return
    table = Table("input", "type", "default", "value", "description", title="Inputs")
    for name, declared in planned.declared_inputs.items():
        choices = declared.choices
        kind = declared.type + (f" ({' | '.join(map(str, choices))})" if choices else "")
        default = "required" if declared.required else _input_text(declared.default)
        table.add_row(
            _cell(name),
            _cell(kind),
            _cell(default),
            _cell(_input_text(planned.inputs.get(name))),
            _cell(declared.title or declared.description),
        )
    console.print(table)
    for task in planned.tasks:
        if task.instruction is not None:
            console.print(Text.assemble((f"{task.id}: ", "bold"), _cell(task.instruction)))


def _input_text(value: Any) -> str:
    return "-" if value is None else json.dumps(value) if isinstance(value, list) else as_text(value)


def _cell(value: str, style: str = "") -> Text:
    """Text toka-agents did not write, for a table cell or a line: one visible line, never markup.
    Tabs become spaces: Rich measures a tab as no width, then cuts the cell it widens."""
    return Text(text.visible(value, newlines=False).expandtabs(), style=style)


def print_run(result: RunResult, console: Console, *, with_end: bool = True) -> None:
    """The summary of every task, the run's end, and where to find what it left.
    `with_end=False` leaves the run's end out, for a live view that printed it already."""
    console.print(summary(result.outcomes, console), soft_wrap=True)
    if any(outcome.steps is not None for outcome in result.outcomes):
        tokens_in = sum(o.input_tokens or 0 for o in result.outcomes)
        tokens_out = sum(o.output_tokens or 0 for o in result.outcomes)
        costs = [o.cost for o in result.outcomes if o.cost is not None]
        cost = f", cost {sum(costs):.4f}" if costs else ""
        console.print(f"Tokens: {tokens_in} in, {tokens_out} out{cost}", markup=False)
    if with_end:
        message = text.one_line(result.state.message or "")
        console.print(f"Run: {text.visible(result.state.name)}: {message}", markup=False)
    for warning in result.warnings:
        console.print(f"Warning: {text.one_line(warning)}", markup=False)
    print_where(result, console)


MESSAGE_MIN_WIDTH = 30
"""The narrowest a message is wrapped to: in the table's column, or below a task's block."""
_UNBOUNDED = 1_000_000
_STATUS_COLORS = {"completed": "green", "dry-run": "green", "failed": "red", "skipped": "yellow"}


def summary(outcomes: list[TaskOutcome], console: Console) -> RenderableType:
    """Every task's outcome as `console` can show it: the table on a terminal wide enough for
    it, otherwise `summary_blocks` (piped or redirected, there is no width to fit)."""
    table = summary_table(outcomes)
    if console.is_terminal and _width_needed(table, console) <= console.width:
        return table
    return summary_blocks(outcomes, console if console.is_terminal else None)


def _width_needed(table: Table, console: Console) -> int:
    """The width at which every column of the table has its natural width but the message,
    which has at least `MESSAGE_MIN_WIDTH`."""
    unbounded = console.options.update_width(_UNBOUNDED)
    natural = Measurement.get(console, unbounded, table).maximum
    messages = table.columns[-1].cells
    longest = max((Measurement.get(console, unbounded, m).maximum for m in messages), default=0)
    return natural - max(0, longest - MESSAGE_MIN_WIDTH)


def summary_table(outcomes: list[TaskOutcome]) -> Table:
    """A row per task: its status, figures and message. Only the message column wraps."""
    with_llm = any(outcome.steps is not None for outcome in outcomes)
    llm_headers = list(llm_columns(outcomes[0])) if with_llm else []
    table = Table("task", "status", "duration", "peak memory", "cpu time", *llm_headers, "message")
    for column in table.columns[:-1]:
        column.no_wrap = True
    table.columns[0].min_width = 24
    for outcome in outcomes:
        table.add_row(
            _cell(outcome.task_id),
            _cell(outcome.status, _STATUS_COLORS.get(outcome.status, "yellow")),
            *_figures(outcome, with_llm=with_llm).values(),
            Text("" if outcome.status == "completed" else task_message(outcome)),
        )
    return table


def summary_blocks(outcomes: list[TaskOutcome], wrap_to: Console | None = None) -> Text:
    """A block per task: its id, a `name: value` line per figure, and its message in full
    below, every line but the id indented. `wrap_to`: wrap the message at words to fit this
    console; None: each line of the message stays one line (for logs and grep)."""
    blocks = []
    for outcome in outcomes:
        color = _STATUS_COLORS.get(outcome.status, "yellow")
        figures = _figures(outcome, with_llm=outcome.steps is not None)
        lines = [
            _cell(outcome.task_id, "bold"),
            Text.assemble("  status: ", _cell(outcome.status, color)),
            *(Text(f"  {name}: {value}") for name, value in figures.items()),
        ]
        if outcome.status != "completed" and outcome.message.strip():
            lines += [Text("  message:"), *_message_lines(outcome.message, wrap_to)]
        blocks.append(Text("\n").join(lines) + "\n")  # a blank line after each block
    return Text("\n").join(blocks)


SUMMARY_FIGURES = ("duration", "peak memory", "cpu time")
"""What the printed summary shows of a task's `usage_columns` (the rest are in its artifact)."""


def _figures(outcome: TaskOutcome, *, with_llm: bool) -> dict[str, str]:
    used = usage_columns(outcome)
    figures = {name: used[name] for name in SUMMARY_FIGURES}
    return {**figures, **llm_columns(outcome)} if with_llm else figures


def _message_lines(message: str, wrap_to: Console | None, indent: str = "    ") -> list[Text]:
    """A message's lines, each visible and indented: none can pass for a line of ours."""
    width = None if wrap_to is None else max(wrap_to.width - len(indent), MESSAGE_MIN_WIDTH)
    lines = []
    for line in message.strip().replace("\r\n", "\n").split("\n"):
        shown = _cell(line)
        pieces = [shown] if width is None else shown.wrap(wrap_to, width, overflow="fold")
        for piece in pieces:
            piece.rstrip()
            lines.append(Text(indent) + piece)
    return lines


def print_json(result: RunResult) -> None:
    """`run_document` as one JSON document on stdout, for scripts. It is ASCII: control
    characters and all beyond ASCII are `\\u` escapes, so what a task wrote stays text."""
    sys.stdout.write(json.dumps(run_document(result), indent=2) + "\n")
    sys.stdout.flush()


def run_document(result: RunResult) -> dict[str, Any]:
    """The run's end, where its workspace and records are (what `print_where` shows), and every
    task's outcome with all its figures."""
    workspace = result.workspace
    entries = workspace_entries(result)
    flow_run_id = None if result.flow_run_id is None else str(result.flow_run_id)
    on_engine = workspace is not None and entries is None and flow_run_id is not None
    return {
        "flow_run_id": flow_run_id,
        "state": result.state.name,
        "message": result.state.message or "",
        "workspace": None if workspace is None else str(workspace),
        "workspace_entries": entries,
        "workspace_copy": f"toka workspace get {flow_run_id} DEST" if on_engine else None,
        "where_to_look": None if flow_run_id is None else where_to_look(flow_run_id),
        "warnings": result.warnings,
        "tasks": [outcome.model_dump(mode="json") for outcome in result.outcomes],
    }


def print_where(result: RunResult, console: Console) -> None:
    """The workspace and its entries (one visible line each, whatever their names hold), and
    the flow run with where to look at it."""
    entries = workspace_entries(result)
    if entries is not None:
        console.print(
            f"Workspace (what the agents wrote): {text.visible(str(result.workspace))}", markup=False
        )
        for entry in entries:
            console.print(f"  {text.visible(entry, newlines=False)}", markup=False)
    elif result.workspace is not None and result.flow_run_id is not None:  # a volume on the engine
        console.print("Workspace: a volume on the Docker engine; to copy it out:", markup=False)
        console.print(f"  toka workspace get {result.flow_run_id} DEST", markup=False)
    if result.flow_run_id is not None:
        console.print(f"Flow run: {result.flow_run_id}", markup=False)
        console.print(where_to_look(str(result.flow_run_id)), markup=False)


def workspace_entries(result: RunResult) -> list[str] | None:
    """The names in the run's workspace on this machine (directories with a `/`), or None
    when it is not here (none, or a volume on the engine)."""
    workspace = result.workspace
    if workspace is None or not workspace.is_dir():
        return None
    return [f"{entry.name}{'/' if entry.is_dir() else ''}" for entry in sorted(workspace.iterdir())]


def where_to_look(flow_run_id: str) -> str:
    """Where to look at a flow run: its page in the UI of the server the run was recorded by."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if PREFECT_API_URL.value():
        ui = PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return f"In the Prefect UI: {ui}/runs/flow-run/{flow_run_id}"
    return (
        "Recorded by Prefect's embedded server; to browse it, run `prefect server start` and open "
        f"http://127.0.0.1:4200/runs/flow-run/{flow_run_id}"
    )


def agents_table(planned: planning.Plan, latest: dict[str, LatestRun | None]) -> Table:
    """A row per agent: its settings and its latest task run (state, task, end)."""
    table = Table("agent", "workstream", "priority", "tasks", "requires", "latest", "task", "ended")
    colors = {"Completed": "green", "Failed": "red", "Crashed": "red", "Running": "cyan"}
    for agent in planned.agents:
        found = latest[agent.name]
        when = found.task_run.end_time if found else None
        table.add_row(
            _cell(agent.name),
            _cell(agent.workstream),
            _cell(agent.priority),
            str(len(agent.tasks)),
            _cell(", ".join(agent.requires) or "-"),
            _cell(found.state_name, colors.get(found.state_name, "yellow")) if found else "never run",
            _cell(found.task) if found else "-",
            when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-",
        )
    return table


class VisibleLogLines(logging.Formatter):
    """Prefect's console log lines with their control characters shown as escapes (`\\x1b`):
    they carry task output, state messages and the providers' errors, and Prefect's console
    handler prints them to the terminal as they are."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return text.visible(self.inner.format(record))


def show_log_lines_literally() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, VisibleLogLines
        ):
            handler.setFormatter(VisibleLogLines(handler.formatter or logging.Formatter()))
