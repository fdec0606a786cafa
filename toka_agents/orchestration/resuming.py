"""Resuming a run: what a later attempt of a flow run takes from the attempts before it.

A failed or cancelled flow run can run again under its own id: Prefect's Retry of a
deployment's run, or `toka orchestrate --resume ID` (`run(..., resume=ID)`) for any run. Then

- agent tasks that completed are not run again: their outcomes are Prefect results, persisted
  under a cache key made of the flow run's id, the task and a hash of its inputs (its plan and
  its upstream outcomes), and read back as `Cached` task runs;
- model and tool calls that completed inside a task that did not are answered from storage
  the same way (key: flow run, task, step and a hash of the request), so a resumed LLM task
  replays its conversation up to where it stopped and pays only for the calls after it;
- the workspace is the first attempt's.

Results live in Prefect's result storage: by default files under `PREFECT_HOME/storage`, which
every process on the machine with the same PREFECT_HOME finds (set `PREFECT_LOCAL_STORAGE_PATH`
or a default result storage block to share them between machines). Only completed work is
kept; secrets are redacted from step results before they are stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow, Task, get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import ObjectNotFound
from prefect.flow_engine import run_flow
from prefect.states import State
from prefect.transactions import CommitMode, get_transaction, transaction
from pydantic import BaseModel
from pydantic_core import to_jsonable_python

from toka_agents.errors import ExecutionError
from toka_agents.llm.loop import redact
from toka_agents.planning import PlannedTask
from toka_agents.sandbox.workspace import default_root

ATTEMPT_KEY_SPAN = 1_000_000
"""Task runs an attempt may make of one Prefect task before its dynamic keys meet the next's."""


def fingerprint(*values: Any) -> str:
    """A hash of values as JSON: pydantic models by their fields, anything else by its repr."""
    text = json.dumps(to_jsonable_python(values, fallback=repr), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _plain(value: Any) -> Any:
    """A parameter as the task function gets it, whether or not Prefect unwrapped its `quote`."""
    return value.unquote() if hasattr(value, "unquote") else value


def _flow_run_id(context: TaskRunContext) -> UUID:
    flow_run_id = context.task_run.flow_run_id
    assert flow_run_id is not None, "agent tasks run inside a flow run"
    return flow_run_id


def agent_task_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """An agent task's result key: its flow run, the task, and what it was given."""
    planned: PlannedTask = _plain(parameters["planned"])
    upstream = _plain(parameters.get("upstream_results")) or {}
    digest = fingerprint(planned, sorted(upstream.items()))
    return f"toka-{_flow_run_id(context)}-task-{digest}"


def step_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """A model or tool call's result key: its flow run, its label (`writer/compute · model 2`)
    and its request (the messages and tools sent, or the tool call)."""
    digest = fingerprint(parameters["label"], _plain(parameters["args"]))
    return f"toka-{_flow_run_id(context)}-step-{digest}"


def approval_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """A person's approval's result key: its flow run, its label (what it holds: the task or
    the tool call's step, `writer/compute · run_code 2 · approval`) and what was proposed."""
    digest = fingerprint(parameters["label"], _plain(parameters["proposal"]))
    return f"toka-{_flow_run_id(context)}-approval-{digest}"


def keep_only_if(completed: bool) -> None:
    """Store the running task's result only when it completed: a skipped or cancelled task
    (Prefect stores those results too) must run on resume. Failed ones are never stored."""
    current = get_transaction()
    if current is not None and not completed:
        current.write_on_commit = False


@contextlib.contextmanager
def steps_kept_as_they_end() -> Iterator[None]:
    """Inside it, each step's result is stored as soon as the step ends, not when its agent
    task ends (Prefect's default for nested task runs), so a task that fails or is cancelled
    keeps the model calls it made."""
    with transaction(commit_mode=CommitMode.EAGER):
        yield


def separate_attempts(context: FlowRunContext, tasks: Sequence[Task[..., Any]]) -> None:
    """Give this attempt's task runs dynamic keys of their own: task runs of two attempts of
    one flow run that share a key are one row on the server, and the UI's graph breaks."""
    attempt = context.flow_run.run_count if context.flow_run is not None else 1
    if attempt > 1:
        for task in tasks:
            context.task_run_dynamic_keys[task.task_key] = (attempt - 1) * ATTEMPT_KEY_SPAN - 1


def workspace_name(plan_name: str, flow_run_id: UUID, root: Path | None, started: datetime) -> str:
    """The run's workspace directory: the first attempt's when there is one. It ends with the
    last 8 hex digits of the flow run's id: Prefect's ids are UUIDv7, whose first digits are a
    clock, the same for runs a schedule makes at once."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", plan_name).strip("-") or "run"
    suffix = flow_run_id.hex[-8:]
    base = (root or default_root()).expanduser().resolve()
    earlier = sorted(base.glob(f"{glob_escape(safe)}-*-{suffix}")) if base.is_dir() else []
    if earlier:
        return earlier[0].name
    return f"{plan_name}-{started.strftime('%Y%m%d-%H%M%S')}-{suffix}"


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def redacting(fn: Callable[..., Any], secrets: Sequence[str]) -> Callable[..., Any]:
    """`fn` whose pydantic result has every secret replaced, so none reaches result storage."""
    if not any(secrets):
        return fn

    def call(*args: Any) -> Any:
        result = fn(*args)
        if isinstance(result, BaseModel):
            text = result.model_dump_json()
            cleaned = redact(text, secrets)
            if cleaned != text:
                return type(result).model_validate_json(cleaned)
        return result

    return call


def resume_flow_run(flow: Flow[[], Any], flow_run_id: UUID | str) -> State[Any]:
    """Run a failed, cancelled or crashed flow run of `flow` again, under its own id; return
    its new final state. Raises `ExecutionError` (one line) for a run that cannot be resumed."""
    try:
        wanted = flow_run_id if isinstance(flow_run_id, UUID) else UUID(str(flow_run_id).strip())
    except ValueError:
        raise ExecutionError(f"cannot resume {flow_run_id!r}: it is not a flow run id") from None
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(wanted)
            flow_name = client.read_flow(flow_run.flow_id).name
        except ObjectNotFound:
            raise ExecutionError(f"cannot resume {wanted}: Prefect has no such flow run") from None
    if flow_name != flow.name:
        raise ExecutionError(
            f"cannot resume {wanted}: it is a run of {flow_name!r}, and this config is {flow.name!r}"
        )
    state = flow_run.state
    if state is None or not (state.is_failed() or state.is_cancelled() or state.is_crashed()):
        shown = state.name if state is not None else "without a state"
        raise ExecutionError(
            f"cannot resume {wanted}: it is {shown}; "
            "only a failed, cancelled or crashed run can be resumed"
        )
    return run_flow(flow, flow_run=flow_run, return_type="state")  # type: ignore[return-value]
