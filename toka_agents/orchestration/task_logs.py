"""What toka-agents' task runs say in their logs.

A code task's output, line by line as it prints it (`OutputLog`). Each LLM step's story: a
model call names the tools the model asked for (arguments cut) and its tokens; a tool call
shows what it ran (code cut) and how it ended (exit code, output tail). And Prefect's own lines
about a toka task that failed, as one line of its reason: Prefect logs a task that returns a
Failed state as `Task run failed with state: Failed(..., result=TaskOutcome(...))` followed by
a stray `NoneType: None`, and a step that raises an error toka-agents expects (a refused
request, a cancel) with its whole traceback. Likewise the traceback Prefect's engine logs
for a toka run that failed, whose reason its last line has said.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from prefect.states import State

from toka_agents import text
from toka_agents.errors import TokaError, one_line
from toka_agents.llm.messages import ModelReply, ToolCall
from toka_agents.llm.tools import ToolResult
from toka_agents.orchestration.reporting import RunLogger, RunNotCompleted
from toka_agents.sandbox import SandboxCancelled

TOKA_TASKS = frozenset({"agent-task", "agent-step", "agent-approval"})
"""The Prefect task names of toka-agents' task runs (`orchestration.tasks`)."""
EXPECTED_ERRORS = (TokaError, SandboxCancelled)
"""Errors that end a toka task run as toka-agents means them to: their message is the reason."""
ARGUMENT_LIMIT = 300
CODE_LIMIT = 2000
RESULT_LIMIT = 2000


class _FailureLines(logging.Filter):
    """Rewrites Prefect's failure lines about toka's task runs (logger `prefect.task_runs`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if getattr(record, "task_name", None) not in TOKA_TASKS or not message.startswith(
            "Task run failed with"
        ):
            return True
        if record.args:  # a retry: "... with %s: %r - Retry %s/%s will start %s"
            _, subject, *retry = record.args  # type: ignore[misc]
            reason = _reason(subject)
            if reason is None:
                return True
            record.msg, record.args = "Task run failed: %s - Retry %s/%s will start %s", (reason, *retry)
        elif message.startswith("Task run failed with state"):
            return False  # the final failure: Prefect's `Finished in state Failed('...')` says it
        else:
            reason = _reason(record.exc_info[1] if record.exc_info else None)
            if reason is None:
                return True  # an error toka-agents does not expect keeps its traceback
            record.msg, record.args = "Task run failed: %s", (reason,)
        record.exc_info, record.exc_text = None, None
        return True


def _reason(subject: object) -> str | None:
    """A failed state's message, or an expected error's: None for anything else."""
    if isinstance(subject, State):
        return text.one_line(subject.message or "", 500)
    if isinstance(subject, EXPECTED_ERRORS):
        return one_line(subject)
    return None


class _RunFailureLine(logging.Filter):
    """Drops the engine's traceback of a toka run that failed (logger `prefect.flow_runs`).

    Run by a worker, Prefect's engine raises a failed run's `RunNotCompleted` once the flow
    has ended and logs it whole (`Engine execution exited with unexpected exception`), after
    `Finished in state Failed('...')` has said the run's reason."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], RunNotCompleted))


_FILTERS = {"prefect.task_runs": _FailureLines(), "prefect.flow_runs": _RunFailureLine()}


def tidy_failure_lines() -> None:
    """Install the rewriting of Prefect's failure lines for toka's task and flow runs in this
    process (idempotent: once per process, whichever run calls it)."""
    for name, line_filter in _FILTERS.items():
        logger = logging.getLogger(name)
        if line_filter not in logger.filters:
            logger.addFilter(line_filter)


def log_step(logger: RunLogger, args: Sequence[Any], result: Any) -> None:
    """The story of one LLM step, from what it was given and what it gave back."""
    if isinstance(result, ModelReply):
        logger.info("%s", model_story(result))
    elif isinstance(result, ToolResult) and args and isinstance(args[0], ToolCall):
        call = args[0]
        logger.info("%s", call_story(call))
        logger.info("%s", text.visible(_cut(result.content, RESULT_LIMIT)))


def model_story(reply: ModelReply) -> str:
    tokens = f"{reply.input_tokens} tokens in, {reply.output_tokens} out"
    if not reply.tool_calls:
        said = text.one_line(reply.text, ARGUMENT_LIMIT) if reply.text else "(nothing)"
        return f"the model answered without a tool call ({tokens}): {said}"
    asked = "; ".join(_call_line(call) for call in reply.tool_calls)
    return f"the model asks for {asked} ({tokens})"


def call_story(call: ToolCall) -> str:
    if call.name == "run_code":
        source = str(call.arguments.get("source", ""))
        language = call.arguments.get("language", "?")
        return f"run_code runs {text.visible(str(language))}:\n{text.visible(_cut(source, CODE_LIMIT))}"
    return _call_line(call)


def _call_line(call: ToolCall) -> str:
    arguments = json.dumps(call.arguments, ensure_ascii=False)
    return f"{text.visible(call.name)}({text.one_line(arguments, ARGUMENT_LIMIT)})"


def _cut(shown: str, limit: int) -> str:
    shown = shown.rstrip()
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}\n... (cut: {len(shown) - limit:,} more characters)"


class OutputLog:
    """Logs what a task prints, line by line as it prints it, up to `max_lines` lines.

    Past the bound, lines are only counted, and closing says how many more were written (the
    task's result keeps the tails of both streams). Closing also logs a last line that has
    no newline. Each byte is looked at once, so logging is linear in the output.
    """

    def __init__(self, logger: RunLogger, max_lines: int = 2000, max_line_bytes: int = 16384) -> None:
        self.logger = logger
        self.max_lines = max_lines
        self.max_line_bytes = max_line_bytes
        self.logged = 0
        self.not_logged = 0
        self._partial = {"stdout": bytearray(), "stderr": bytearray()}

    def __call__(self, stream: str, data: bytes) -> None:
        partial = self._partial[stream]
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            partial += data[start:end]
            self._line(stream, partial)
            partial.clear()
            start = end + 1
        partial += data[start:]
        if len(partial) > self.max_line_bytes:  # a line without end: log it in pieces
            self._line(stream, partial)
            partial.clear()

    def _line(self, stream: str, line: bytearray) -> None:
        if self.logged >= self.max_lines:
            self.not_logged += 1
            return
        self.logged += 1
        shown = text.visible(line.decode("utf-8", "replace").rstrip())  # it reaches terminals
        self.logger.info(shown if stream == "stdout" else f"[stderr] {shown}")

    def close(self) -> None:
        for stream, partial in self._partial.items():
            if partial:
                self._line(stream, partial)
                partial.clear()
        if self.not_logged:
            self.logger.info(
                "... %d more output line(s) not logged (at most %d are); the task's result "
                "keeps the last lines of stdout and stderr",
                self.not_logged,
                self.max_lines,
            )
            self.not_logged = 0

    def __enter__(self) -> OutputLog:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
