"""What waits for a person's approval, as plain data: the proposal a person is shown (a
task's code or instruction, a tool call's arguments) and the hook that asks for the approval.

The hook is the Prefect wing's (`orchestration.people`): it pauses the run with a form that
shows the proposal and returns once a person approves, or raises `Rejected` (with their
comment), `NoAnswer` (no decision in time) or `LlmCancelled` (the run was cancelled).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from pydantic import BaseModel, ConfigDict

from toka_agents.llm.messages import ToolCall
from toka_agents.planning import PlannedTask


class Proposal(BaseModel):
    """What a person approves or rejects: `what` in a few words, `detail` shown as it is,
    fenced as `syntax` (python, shell, json, or plain text)."""

    model_config = ConfigDict(frozen=True)

    what: str
    detail: str
    syntax: str = ""


AskApproval = Callable[[PlannedTask, Proposal], None]
"""Holds `task` until a person approves the proposal; raises as the module says."""


def task_proposal(task: PlannedTask) -> Proposal:
    """A task's approval before it starts: its code, or its instruction."""
    if task.code is not None and task.code.source is not None:
        language = task.code.language
        return Proposal(what=f"run its {language} code", detail=task.code.source, syntax=language)
    return Proposal(what="start on its instruction", detail=task.instruction or task.description)


def call_proposal(call: ToolCall) -> Proposal:
    """A tool call's approval: `run_code` shows its program, any other tool its arguments."""
    source, language = call.arguments.get("source"), call.arguments.get("language")
    if call.name == "run_code" and isinstance(source, str) and isinstance(language, str):
        return Proposal(what=f"call run_code ({language})", detail=source, syntax=language)
    arguments = json.dumps(call.arguments, indent=2, ensure_ascii=False)
    return Proposal(what=f"call {call.name}", detail=arguments, syntax="json")


def approve_call(ask: AskApproval, task: PlannedTask, call: ToolCall) -> None:
    """Hold `call` of `task` until a person approves it (`ask` raises when not)."""
    ask(task, call_proposal(call))
