"""The conversation artifact of an LLM task: the whole conversation as Markdown, written when
the task ends, and its running versions while the task runs, written off the task's path.

A step hands `RunningConversation` the conversation so far and goes on at once; a thread of
the task's redacts and writes the latest it was handed, at most once every `INTERVAL` seconds,
so steps that came meanwhile are folded into its next write. A Prefect API call per step would
cost the loop a round trip each (tens to hundreds of milliseconds on a loaded server), and the
server would keep a version of the whole conversation a step; the UI still shows it as it
grows. `close` writes what is still pending at once and waits, so the task's final artifact is
the last.
"""

from __future__ import annotations

import contextvars
import json
import threading
import time
from collections.abc import Sequence

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from toka_agents import text
from toka_agents.errors import one_line
from toka_agents.executor import TaskOutcome
from toka_agents.figures import llm_columns
from toka_agents.llm.loop import redact_message
from toka_agents.llm.messages import AssistantMessage, Message, ToolMessage
from toka_agents.orchestration import reporting
from toka_agents.orchestration.reporting.outputs import fenced
from toka_agents.planning import PlannedTask

CLOSE_WAIT = 30.0
"""Seconds `close` waits for the last running version to be written."""
INTERVAL = 1.0
"""Seconds at least between two running versions (a model call takes about that or more)."""


class RunningConversation:
    """The running versions of one task's conversation artifact (see the module)."""

    def __init__(self, task_id: str, secrets: Sequence[str] = ()) -> None:
        self.task_id = task_id
        self.secrets = secrets
        self._pending: tuple[str, list[Message]] | None = None
        self._closed = False
        self._changed = threading.Condition()
        self._context = contextvars.copy_context()  # the task run's: its artifacts are the task's
        self._writer: threading.Thread | None = None

    def show(self, step: str, conversation: list[Message]) -> None:
        """Have the conversation as of `step` written, soon."""
        with self._changed:
            if self._closed:
                return
            self._pending = (step, list(conversation))
            if self._writer is None:
                self._writer = threading.Thread(
                    target=self._context.run,
                    args=(self._write,),
                    name=f"toka-conversation {self.task_id}",
                    daemon=True,
                )
                self._writer.start()
            self._changed.notify()

    def close(self) -> None:
        """Write what is pending, then stop."""
        with self._changed:
            self._closed = True
            self._changed.notify()
            writer = self._writer
        if writer is not None:
            writer.join(CLOSE_WAIT)

    def _write(self) -> None:
        written = time.monotonic() - INTERVAL
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._pending is not None or self._closed)
                if self._pending is None:
                    return
                due = written + INTERVAL - time.monotonic()
                self._changed.wait_for(lambda: self._closed, timeout=max(due, 0.0))
                (step, conversation), self._pending = self._pending, None  # type: ignore[misc]
            shown = [redact_message(message, self.secrets) for message in conversation]
            conversation_so_far(self.task_id, step, shown)
            written = time.monotonic()


def conversation_artifact(task: PlannedTask, outcome: TaskOutcome, conversation: list[Message]) -> None:
    """The whole conversation of an LLM task as a markdown artifact of its task run. The
    executor hands it over with the secrets already redacted. Never raises: a conversation that
    cannot be written is logged, and the task keeps its outcome."""
    try:
        create_markdown_artifact(
            markdown=conversation_markdown(task, outcome, conversation),
            key=reporting.artifact_key(task.id, "conversation"),
            description=f"The conversation of {task.id} with its model ({outcome.status})",
        )
    except Exception as exc:  # the API failed us; the task's outcome stands
        get_run_logger().error(
            "could not write the conversation artifact of %s: %s", text.visible(task.id), one_line(exc)
        )


def conversation_so_far(task_id: str, step: str, conversation: list[Message]) -> None:
    """The conversation artifact of a running LLM task as of `step`, so the UI shows it while
    the task runs (`RunningConversation` calls it, off the task's path); the task's
    end writes the final one. Never raises."""
    heading = [f"# {task_id}: running", "", f"after {step}"]
    try:
        create_markdown_artifact(
            markdown="\n".join(heading + _conversation_lines(conversation)),
            key=reporting.artifact_key(task_id, "conversation"),
            description=f"The conversation of {task_id} with its model (running)",
        )
    except Exception as exc:  # the API failed us; the task goes on
        get_run_logger().warning(
            "could not update the conversation artifact of %s: %s", text.visible(task_id), one_line(exc)
        )


def conversation_markdown(task: PlannedTask, outcome: TaskOutcome, conversation: list[Message]) -> str:
    columns = llm_columns(outcome)
    heading = [
        f"# {task.id}: {outcome.status}",
        "",
        f"{outcome.message}",
        "",
        " | ".join(f"{name}: {value}" for name, value in columns.items()),
    ]
    return "\n".join(heading + _conversation_lines(conversation))


def _conversation_lines(conversation: list[Message]) -> list[str]:
    lines: list[str] = []
    for message in conversation:
        if isinstance(message, ToolMessage):
            title = f"## tool result: {message.name}" + (" (error)" if message.is_error else "")
        else:
            title = f"## {message.role}"
        lines += ["", title, ""]
        if message.content:
            lines.append(fenced(message.content))
        if isinstance(message, AssistantMessage):
            for call in message.tool_calls:
                lines += [
                    "",
                    f"**calls `{call.name}`**",
                    "",
                    fenced(json.dumps(call.arguments, indent=2)),
                ]
    return lines
