"""The conversation artifact of a running LLM task, written off the task's path.

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
import threading
import time
from collections.abc import Sequence

from toka_agents.llm.loop import redact_message
from toka_agents.llm.messages import Message
from toka_agents.orchestration import reporting

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
            reporting.conversation_so_far(self.task_id, step, shown)
            written = time.monotonic()
