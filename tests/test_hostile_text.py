"""Hostile text is only text: whatever a task, a model, a tool, a file name or a config holds
reaches the terminal literally. Rich markup is not rendered, control characters other than
newline and tab show as escapes (`\\x1b`), and state messages are one bounded line.

A property test feeds arbitrary text (markup, escape sequences, undecodable bytes) through
every printer of the CLI into a Rich console, on a colour terminal and plain; then the real
`toka orchestrate` (with and without --watch) runs a task that prints and writes hostile
text; then a model's long multi-line refusal becomes a task run's state message.
"""

from __future__ import annotations

import json
import re
from io import StringIO
from pathlib import Path
from uuid import uuid4

import pytest
from conftest import run_toka, write_config
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from llm_server import Fault, scripted_server
from prefect.client.schemas.objects import FlowRun, TaskRun
from prefect.states import Completed, Failed
from rich.console import Console
from test_flows import task_runs, unique

from toka_agents import cli, run, text
from toka_agents.api import RunResult
from toka_agents.errors import ConfigIssue
from toka_agents.executor import TaskOutcome
from toka_agents.orchestration import reporting, watching
from toka_agents.planning import Plan, PlannedAgent, PlannedTask, Validation

MARKUP = [
    "[/]",
    "[/] boom",
    "[link=file:///etc/passwd]x[/link]",
    "[blink]",
    "[bold red]loud",
    "\x1b[2J",
    "\x1b]0;TITLE\x07",
    "\x1b]8;;file:///etc/passwd\x1b\\click\x1b]8;;\x1b\\",
    "\x9b2J",
    "\u202eevil",
    ":warning:",
    "\r\rfake",
]
"""What the probe found rendered or obeyed, and kin: Rich markup, CSI and OSC sequences (clear
screen, window title, hyperlink), the C1 CSI, a bidi override, an emoji code, carriage returns."""

SGR = re.compile(r"\x1b\[[0-9;]*m")
"""The colour sequences Rich writes itself on a terminal: the only escapes allowed out."""
CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
"""What must never reach the terminal raw: controls but newline and tab, bidi controls, lone
surrogates (which a UTF-8 stream would refuse to encode)."""

pieces = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(max_codepoint=0x9F), max_size=30),  # dense in controls
    st.binary(max_size=30).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
    st.sampled_from(MARKUP),
)
hostile = st.lists(pieces, min_size=1, max_size=5).map("".join)


def consoles() -> list[tuple[Console, StringIO, bool]]:
    """A colour terminal and a plain stream, each wide enough that nothing wraps."""
    found = []
    for terminal in (True, False):
        stream = StringIO()
        console = Console(
            file=stream,
            force_terminal=terminal,
            color_system="truecolor" if terminal else None,
            width=10_000,
            highlight=False,
            emoji=False,
        )
        found.append((console, stream, terminal))
    return found


def assert_literal(printed: str, given_text: str, *, terminal: bool) -> None:
    """No escape Rich did not write, no raw control character, and the hostile parts shown."""
    bare = SGR.sub("", printed) if terminal else printed
    assert "\x1b" not in bare, repr(printed)
    assert not CONTROLS.search(bare), repr(printed)
    assert "\x1b]" not in printed  # never an OSC (titles, hyperlinks)
    if "\x1b" in given_text.strip():
        assert "\\x1b" in bare, repr(printed)
    for markup in MARKUP:
        if markup in given_text:
            assert text.visible(markup, newlines=False) in bare, (markup, bare)


def print_each_way(printer, given_text: str) -> None:
    for console, stream, terminal in consoles():
        printer(console)
        assert_literal(stream.getvalue(), given_text, terminal=terminal)


PROPERTY = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def outcome(value: str, status: str = "failed") -> TaskOutcome:
    return TaskOutcome(task_id=value, agent=value, task=value, status=status, message=value)


@PROPERTY
@given(value=hostile, status=st.sampled_from(["failed", "skipped", "completed", "cancelled"]))
def test_the_summary_table_and_run_line_show_task_text_literally(value: str, status: str) -> None:
    outcomes = [outcome(value, status)]
    state = Failed(message=value)
    result = RunResult(state=state, flow_run_id=uuid4(), workspace=None, outcomes=outcomes)
    print_each_way(lambda console: cli.print_run(result, console), value)


def file_names() -> st.SearchStrategy[str]:
    def makeable(name: str) -> bool:
        try:
            encoded = name.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            return False
        return (
            b"/" not in encoded
            and b"\0" not in encoded
            and name not in (".", "..")
            and (0 < len(encoded) <= 255)
        )

    return hostile.filter(makeable)


@PROPERTY
@given(names=st.lists(file_names(), min_size=1, max_size=4, unique=True))
def test_the_workspace_listing_shows_file_names_literally_one_a_line(
    names: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    workspace = tmp_path_factory.mktemp("workspace")
    for name in names:
        (workspace / name).write_bytes(b"")
    flow_run_id = uuid4()
    result = RunResult(state=Completed(), flow_run_id=flow_run_id, workspace=workspace, outcomes=[])
    for console, stream, terminal in consoles():
        cli.print_where(result, console)
        printed = stream.getvalue()
        for name in names:
            assert_literal(printed, name, terminal=terminal)
        lines = SGR.sub("", printed).splitlines()
        # One line per entry, whatever the names hold: none can forge a line of its own.
        assert len(lines) == 1 + len(names) + 2, lines
        assert [line for line in lines if line.startswith("Flow run: ")] == [f"Flow run: {flow_run_id}"]


def run_view(value: str) -> watching.RunView:
    flow_run = FlowRun(name=value, flow_id=uuid4(), state=Failed(message=value))
    task = watching.TaskView(
        id=uuid4(), name=f"{value}/{value}", agent=value, status="failed", state_name=value,
        message=value,
    )  # fmt: skip
    agents = {value: watching.AgentView(value, total=2, failed=1, current=value)}
    return watching.RunView(flow_run=flow_run, tasks=[task], agents=agents)


@PROPERTY
@given(value=hostile)
def test_the_live_view_and_its_lines_show_run_text_literally(value: str) -> None:
    view = run_view(value)
    [task] = view.tasks

    def draw(console: Console) -> None:
        console.print(watching.render(view))
        console.print(watching.failure_line(task), markup=False)
        console.print(watching.task_line(task), markup=False)
        console.print(watching.end_line(view), markup=False)

    print_each_way(draw, value)
    for line in (watching.failure_line(task), watching.task_line(task), watching.end_line(view)):
        assert "\n" not in line


def planned(value: str) -> Plan:
    task = PlannedTask.model_construct(id=f"{value}/{value}", agent=value, name=value, kind="code")
    agent = PlannedAgent.model_construct(
        name=value, priority=value, workstream=value, requires=(value,), tasks=(task,)
    )
    return Plan.model_construct(
        name=value, description=value, agents=(agent,), waves=((value,),), warnings=(value,)
    )


@PROPERTY
@given(value=hostile)
def test_config_text_in_plans_issues_and_warnings_is_shown_literally(value: str) -> None:
    plan = planned(value)
    checked = Validation(issues=[], warnings=[ConfigIssue(value, value, value), value], plan=plan)

    def show(console: Console) -> None:
        cli.print_plan(plan, console)
        cli.print_issues([ConfigIssue(value, value, value)], console)
        cli.print_warnings(checked, all_of_them=True, console=console)

    print_each_way(show, value)


@PROPERTY
@given(value=hostile, state_name=st.sampled_from(["Failed", "Completed", "Running"]))
@example(value="\t[/]", state_name="Failed")  # Rich measured the tab as no width and cut the cell
def test_agent_list_shows_task_run_text_literally(value: str, state_name: str) -> None:
    plan = planned(value)
    state = Failed(message=value) if state_name == "Failed" else Completed(message=value)
    found = TaskRun(name=f"{value}/{value}", task_key="k", dynamic_key="0", state=state)
    for latest in ({value: watching.LatestRun(found)}, {value: None}):
        print_each_way(
            lambda console, latest=latest: console.print(cli.agents_table(plan, latest)), value
        )


@PROPERTY
@given(value=hostile, length=st.integers(0, 3_000))
def test_state_messages_are_one_visible_line_within_their_bound(value: str, length: int) -> None:
    long_value = (value * (length // max(len(value), 1) + 1))[:length] if value else value
    task_message = reporting.task_state(outcome(long_value)).message
    assert task_message is not None and len(task_message) <= reporting.TASK_MESSAGE_LIMIT
    run_message = reporting.config_failed_state([ConfigIssue(long_value, "x", long_value)] * 3).message
    assert run_message is not None and len(run_message) <= text.MESSAGE_LIMIT
    for message in (task_message, run_message):
        assert "\n" not in message and not CONTROLS.search(message), repr(message)
        if len(long_value.strip()) > reporting.TASK_MESSAGE_LIMIT:
            assert re.search(r" \.\.\. \(cut: [0-9,]+ more characters\)$", task_message), task_message
    print_each_way(lambda console: console.print(task_message, markup=False), "")


def test_one_line_names_the_cut_and_counts_the_texts_own_characters() -> None:
    assert text.one_line("x" * 5_000, 100) == "x" * 67 + " ... (cut: 4,933 more characters)"
    assert len(text.one_line("\x1b" * 5_000, 500)) <= 500
    assert text.one_line(" first\r\nsecond\n") == "first\\nsecond"
    assert text.visible("a\x1b[2J\tb\nc\u202ed\x9b\udcff") == "a\\x1b[2J\tb\nc\\u202ed\\x9b\\xff"


# --- the real `toka`, end to end ------------------------------------------------------------

HOSTILE_TASK = r"""
name: {name}
agents:
  - name: evil
    capabilities: [filesystem-write]
    tasks:
      - name: boom
        code:
          language: shell
          source: |
            touch "/workspace/$(printf 'evil\n\033[2Jname')"
            printf '[link=file:///etc/passwd]click[/link]\n\033[2J\n' >&2
            printf '\033]0;TITLE\007 [/] boom\n' >&2
            exit 1
"""

END_TO_END = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


@END_TO_END
def test_orchestrate_prints_hostile_output_literally_and_exits_1(tmp_path, prefect_api):
    path = write_config(tmp_path, HOSTILE_TASK.format(name=unique("hostile")))
    result = run_toka(
        "orchestrate", str(path), "--workspace-dir", str(tmp_path / "runs"),
        env={"PREFECT_API_URL": prefect_api},
    )  # fmt: skip
    printed, logged = result.stdout, result.stderr
    assert result.returncode == 1, printed + logged
    assert "Traceback" not in printed + logged, logged
    assert "\x1b" not in printed + logged, repr(printed + logged)  # piped: no colours either
    assert not CONTROLS.search(printed + logged), repr(printed + logged)
    assert "evil/boom\n  status: failed\n" in printed  # the summary, piped: one block a task
    assert "exit code 1: \\x1b]0;TITLE\\x07 [/] boom" in printed
    assert re.search(r"^Run: Failed: 1 task\(s\) failed: evil/boom: exit code 1: ", printed, re.M)
    assert re.search(r"^Flow run: \S+$", printed, re.M), printed
    assert "  evil\\n\\x1b[2Jname" in printed.splitlines(), printed  # the listing: one line
    # The task's output in Prefect's log lines: markup as typed, escapes visible.
    assert "[stderr] [link=file:///etc/passwd]click[/link]" in logged, logged
    assert "[stderr] \\x1b[2J" in logged and "[stderr] \\x1b]0;TITLE\\x07 [/] boom" in logged


@END_TO_END
def test_watch_piped_prints_hostile_output_literally_and_exits_1(tmp_path, prefect_api):
    path = write_config(tmp_path, HOSTILE_TASK.format(name=unique("hostile-watched")))
    result = run_toka(
        "orchestrate", str(path), "--watch", "--workspace-dir", str(tmp_path / "runs"),
        env={"PREFECT_API_URL": prefect_api},
    )  # fmt: skip
    printed = result.stdout + result.stderr
    assert result.returncode == 1, printed
    assert "Traceback" not in printed and "\x1b" not in printed, repr(printed)
    assert not CONTROLS.search(printed), repr(printed)
    lines = result.stdout.splitlines()
    assert "✗ evil/boom failed: exit code 1: \\x1b]0;TITLE\\x07 [/] boom" in lines, printed
    assert "Run: Failed: 1 task(s) failed: evil/boom: exit code 1: \\x1b]0;TITLE\\x07 [/] boom" in lines
    assert "  evil\\n\\x1b[2Jname" in lines and any(line.startswith("Flow run: ") for line in lines)


REFUSED = """
name: {name}
llm: {llm}
agents:
  - name: writer
    tasks: [{{name: compute, instruction: Compute the sum of 1 to 10.}}]
"""


@END_TO_END
def test_a_long_multi_line_refusal_is_a_one_line_bounded_state_message(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A provider's validation error: 5,000 characters over 100 lines, an escape among them.
    detail = "\n".join(f"field {n}: \x1b[31m" + "v" * 40 for n in range(100))
    monkeypatch.setenv("TOKA_TEST_LLM_KEY", "sk-test")
    with scripted_server(Fault(400, detail)) as server:
        llm = {
            "provider": "openai",
            "model": "scripted-1",
            "base_url": server.openai_base_url,
            "api_key_env": "TOKA_TEST_LLM_KEY",
        }
        path = write_config(tmp_path, REFUSED.format(name=unique("refused"), llm=json.dumps(llm)))
        result = run(path, workspace_root=tmp_path / "runs")
    assert not result.ok
    [refused] = result.outcomes
    # A provider's error is one visible line wherever it goes: the model step's task run shows
    # Prefect's message of the error itself.
    assert "\n" not in refused.message and "\x1b" not in refused.message
    message = task_runs(result.flow_run_id)["writer/compute"].state.message
    assert message.startswith("openai model scripted-1 at ") and "refused the request: 400" in message
    assert "\n" not in message and "\x1b" not in message, repr(message)
    assert len(message) <= reporting.TASK_MESSAGE_LIMIT, len(message)
    assert re.search(r" \.\.\. \(cut: [0-9,]+ more characters\)$", message), message
    assert "field 0: \\x1b[31m" in message
