"""A run's summary is readable at any width: the table on a terminal wide enough for it, a
block per task otherwise (piped, redirected, a narrow terminal), `--output json` for scripts,
and `--watch` ends with it too. The real `toka orchestrate` runs in subprocesses (stdout a
pipe: not a terminal) against the session's Prefect server; the layout rule is checked on
Rich consoles of chosen widths."""

from __future__ import annotations

import json
import re
import subprocess
from io import StringIO
from uuid import UUID

import pytest
from conftest import run_toka, write_config
from rich.console import Console
from rich.table import Table
from test_flows import task_runs, unique

from toka_agents.cli.rendering import summary
from toka_agents.executor import TaskOutcome

END_TO_END = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

LONG_REASON = " ".join(f"reason{n} of the failure" for n in range(12))
"""A last stderr line of some 250 characters: the failed task's message, far past 80 columns."""

ONE_GOOD_ONE_BAD = """
name: {name}
agents:
  - name: good
    tasks: [{{name: one, code: {{language: shell, source: "echo one"}}}}]
  - name: bad
    tasks: [{{name: boom, code: {{language: shell, source: "echo {reason} >&2; exit 3"}}}}]
"""


def orchestrate(prefect_api: str, tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    path = write_config(tmp_path, ONE_GOOD_ONE_BAD.format(name=unique("summary"), reason=LONG_REASON))
    return run_toka(
        "orchestrate", str(path), *args, "--workspace-dir", str(tmp_path / "runs"),
        env={"PREFECT_API_URL": prefect_api},
    )  # fmt: skip


def blocks_of(lines: list[str]) -> dict[str, list[str]]:
    """The summary's blocks by task id: a heading line, then its indented lines."""
    blocks: dict[str, list[str]] = {}
    for heading in ("good/one", "bad/boom"):
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if not lines[i].startswith("  ")), None)
        blocks[heading] = lines[start + 1 : end]
    return blocks


def assert_block_per_task(lines: list[str]) -> None:
    blocks = blocks_of(lines)
    good, bad = blocks["good/one"], blocks["bad/boom"]
    assert good[0] == "  status: completed" and "  message:" not in good, good
    assert bad[0] == "  status: failed", bad
    for figure in ("duration", "peak memory", "cpu time"):
        assert any(re.fullmatch(rf"  {figure}: \d[\d.]*(s|[KMG]?B)", line) for line in bad), bad
    # The message whole, on its own line: never cut, never folded into the table's `…`.
    assert bad[-2:] == ["  message:", f"    exit code 3: {LONG_REASON}"], bad


@END_TO_END
def test_piped_the_summary_is_a_block_per_task_with_the_message_whole(tmp_path, prefect_api):
    result = orchestrate(prefect_api, tmp_path)
    printed = result.stdout
    assert result.returncode == 1, printed + result.stderr
    assert "┃" not in printed and "…" not in printed, printed
    lines = printed.splitlines()
    assert_block_per_task(lines)
    [end] = [line for line in lines if line.startswith("Run: ")]
    assert end.startswith("Run: Failed: 1 task(s) failed: bad/boom: exit code 3: reason0"), printed
    assert lines.index(end) > lines.index("bad/boom") and "Traceback" not in printed + result.stderr


@END_TO_END
@pytest.mark.parametrize("watched", [(), ("--watch",)], ids=["printed", "watched"])
def test_output_json_is_one_document_of_the_run_and_every_tasks_figures(tmp_path, prefect_api, watched):
    result = orchestrate(prefect_api, tmp_path, "--output", "json", *watched)
    assert result.returncode == 1, result.stdout + result.stderr
    document = json.loads(result.stdout)  # stdout holds the document and nothing else
    flow_run_id = UUID(document["flow_run_id"])
    assert sorted(task_runs(flow_run_id)) == ["bad/boom", "good/one"]
    assert document["state"] == "Failed"
    assert document["message"].startswith("1 task(s) failed: bad/boom: exit code 3: reason0")
    assert document["where_to_look"].endswith(f"/runs/flow-run/{flow_run_id}")
    assert document["workspace"] and document["workspace"].startswith(str(tmp_path / "runs"))
    tasks = {task["task_id"]: task for task in document["tasks"]}
    assert sorted(tasks) == ["bad/boom", "good/one"]
    good, bad = tasks["good/one"], tasks["bad/boom"]
    assert (good["status"], good["exit_code"], good["stdout_tail"]) == ("completed", 0, "one\n")
    assert (bad["status"], bad["exit_code"]) == ("failed", 3)
    assert bad["message"] == f"exit code 3: {LONG_REASON}"
    for task in (good, bad):
        assert task["duration"] > 0 and task["peak_memory"] > 0, task
        assert task["cpu_seconds"] is not None and task["image_digest"].startswith("sha256:"), task
    # What a run says besides goes to stderr: Prefect's log lines, or the live view.
    said_besides = "✗ bad/boom failed" if watched else f"[stderr] {LONG_REASON}"
    assert said_besides in result.stderr, result.stderr


@END_TO_END
def test_watch_piped_ends_with_the_summary(tmp_path, prefect_api):
    result = orchestrate(prefect_api, tmp_path, "--watch")
    printed = result.stdout
    assert result.returncode == 1, printed + result.stderr
    lines = printed.splitlines()
    # The view's lines, then its one line of how the run ended, then the summary.
    [end] = [line for line in lines if line.startswith("Run: ")]
    assert lines.index("good/one: Completed") < lines.index(end), printed
    assert lines.index(end) < lines.index("good/one") < lines.index("bad/boom"), printed
    assert_block_per_task(lines)
    assert any(line.startswith("Flow run: ") for line in lines[lines.index("bad/boom") :]), printed
    assert "┃" not in printed and "…" not in printed, printed


# --- the layout rule, on consoles of chosen widths ------------------------------------------


def outcomes(message: str) -> list[TaskOutcome]:
    return [
        TaskOutcome(
            task_id="good/one", agent="good", task="one", status="completed",
            message="exit code 0 in 0.10s", duration=0.1, peak_memory=9_000_000, cpu_seconds=0.02,
        ),
        TaskOutcome(
            task_id="bad/boom", agent="bad", task="boom", status="cancelled", message=message,
            duration=1.5, peak_memory=12_000_000, cpu_seconds=0.3, steps=2, input_tokens=10,
            output_tokens=4, model_seconds=0.5,
        ),
    ]  # fmt: skip


def printed(console: Console, stream: StringIO, message: str) -> str:
    console.print(summary(outcomes(message), console), soft_wrap=True)
    return stream.getvalue()


def console_of(width: int, *, terminal: bool) -> tuple[Console, StringIO]:
    stream = StringIO()
    console = Console(
        file=stream, width=width, force_terminal=terminal, color_system=None, highlight=False
    )
    return console, stream


def test_a_wide_terminal_keeps_the_table_every_column_whole():
    console, stream = console_of(200, terminal=True)
    assert isinstance(summary(outcomes("exit code 3: disk full"), console), Table)
    shown = printed(console, stream, "exit code 3: disk full")
    header = next(line for line in shown.splitlines() if "┃ task" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")] == [
        "task", "status", "duration", "peak memory", "cpu time",
        "model calls", "tokens in/out", "model time", "cost", "message",
    ]  # fmt: skip
    row = r"│ bad/boom\s+│ cancelled │ 1\.50s\s+│ 11\.44MB\s+│ 0\.300s\s+│ 2\s+│ 10 / 4\s+│"
    assert re.search(row, shown), shown
    assert "disk full" in shown and "…" not in shown


def test_a_narrow_terminal_and_a_pipe_get_a_block_per_task_the_message_whole():
    message = f"exit code 3: {LONG_REASON}"
    for width, terminal in ((80, True), (200, False)):
        console, stream = console_of(width, terminal=terminal)
        shown = printed(console, stream, message)
        lines = shown.splitlines()
        assert "┃" not in shown and "…" not in shown, shown
        blocks = blocks_of(lines)
        assert blocks["bad/boom"][:2] == ["  status: cancelled", "  duration: 1.50s"]
        assert "  tokens in/out: 10 / 4" in blocks["bad/boom"]
        said = blocks["bad/boom"][blocks["bad/boom"].index("  message:") + 1 :]
        if terminal:  # wrapped at words to the terminal, every line indented
            assert len(said) > 1 and all(len(line) <= width for line in said), said
        assert " ".join(line.strip() for line in said) == message, said


def test_task_text_in_the_blocks_stays_literal_and_cannot_forge_a_line():
    hostile = "[bold]loud[/] \x1b[2J\nRun: Completed: forged\n\u202eevil " + "x" * 120
    console, stream = console_of(60, terminal=True)
    shown = printed(console, stream, hostile)
    assert "\x1b" not in shown and "\u202e" not in shown, repr(shown)
    assert "[bold]loud[/] \\x1b[2J" in shown and "\\u202eevil" in shown
    assert not [line for line in shown.splitlines() if line.startswith("Run: ")], shown
