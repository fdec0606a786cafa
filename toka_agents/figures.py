"""A task's outcome as people read it: its message in one line, and columns of what it used
(in its sandbox, and an LLM task's model calls, tokens and cost). The run's artifacts and
state messages (`orchestration.reporting`) and the CLI's tables show the same figures; this
knows no Prefect.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from toka_agents import text
from toka_agents.config.limits import format_bytes

if TYPE_CHECKING:  # the CLI's config verbs show no outcome and load no executor
    from toka_agents.executor import TaskOutcome

TASK_MESSAGE_LIMIT = 500
"""The most characters of a task run's state message; a run's is `text.MESSAGE_LIMIT`."""


def task_message(outcome: TaskOutcome) -> str:
    """A task's message as its task run's state and the run's summary show it."""
    return text.one_line(outcome.message, TASK_MESSAGE_LIMIT)


def usage_columns(outcome: TaskOutcome) -> dict[str, str]:
    """What a task used in its sandbox, for tables."""
    return {
        "duration": "-" if outcome.duration is None else f"{outcome.duration:.2f}s",
        "peak memory": format_bytes(outcome.peak_memory),
        "cpu time": "-" if outcome.cpu_seconds is None else f"{outcome.cpu_seconds:.3f}s",
        "peak pids": "-" if outcome.peak_pids is None else str(outcome.peak_pids),
        "stdout / stderr": _pair(outcome.stdout_bytes, outcome.stderr_bytes),
        "workspace written": format_bytes(outcome.disk_written),
    }


def llm_columns(outcome: TaskOutcome) -> dict[str, str]:
    """An LLM task's model calls, tokens (input / output), model time and cost, for tables."""
    if outcome.steps is None:
        return {"model calls": "-", "tokens in/out": "-", "model time": "-", "cost": "-"}
    return {
        "model calls": str(outcome.steps),
        "tokens in/out": f"{outcome.input_tokens or 0} / {outcome.output_tokens or 0}",
        "model time": f"{outcome.model_seconds or 0:.2f}s",
        "cost": "-" if outcome.cost is None else f"{outcome.cost:.4f}",
    }


def _pair(first: int | None, second: int | None) -> str:
    if first is None and second is None:
        return "-"
    return f"{format_bytes(first)} / {format_bytes(second)}"
