"""What a config says of people in the loop: who may ask a person (`human: ask`) and what
waits for a person's approval (`approval:` of a task)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Discriminator, Field, Tag, field_validator

from toka_agents.config.base import ConfigModel

HumanRole = Literal["ask"]
HUMAN_HELP = (
    "`ask`: its LLM tasks get the tool ask_human(question), which pauses the run until a person "
    "answers in the Prefect UI's Resume form or with `toka agent answer`."
)

APPROVABLE_TOOLS = ("run_code", "list_files", "read_file", "write_file")
"""The built-in tools whose calls an approval may hold (`finish` and `ask_human` need none)."""
_SERVER_TOOL = re.compile(r"[A-Za-z0-9_-]+__[A-Za-z0-9_.-]+")


def _approvable(name: str) -> str:
    if name in APPROVABLE_TOOLS or _SERVER_TOOL.fullmatch(name):
        return name
    raise ValueError(
        f"{name!r} is not a tool an approval can hold: one of {', '.join(APPROVABLE_TOOLS)}, "
        "or an MCP server's tool as SERVER__TOOL"
    )


class ToolApproval(ConfigModel):
    """Each call of these tools waits for a person's approval, its arguments shown."""

    tools: list[Annotated[str, AfterValidator(_approvable)]] = Field(min_length=1)

    @field_validator("tools")
    @classmethod
    def _each_once(cls, tools: list[str]) -> list[str]:
        twice = sorted({tool for tool in tools if tools.count(tool) > 1})
        if twice:
            raise ValueError(f"{', '.join(twice)} named more than once")
        return tools


def _approval_kind(value: Any) -> str | None:
    if isinstance(value, (dict, ToolApproval)):
        return "tool-approval"
    return "task-approval" if value == "required" else None


APPROVAL_TAGS = frozenset({"task-approval", "tool-approval"})
"""The union tags of `Approval` that pydantic puts into error locations (the loader drops them)."""
_APPROVAL_FORMS = (
    "`approval` is `required` (the task waits for a person before it starts) or, on an LLM "
    "task, `{tools: [run_code, ...]}` (each call of those tools waits)"
)
Approval = Annotated[
    Annotated[Literal["required"], Tag("task-approval")] | Annotated[ToolApproval, Tag("tool-approval")],
    Discriminator(_approval_kind, custom_error_type="approval", custom_error_message=_APPROVAL_FORMS),
]
"""An LLM task's `approval:`."""


def _task_approval(value: Any) -> Any:
    if value is None or value == "required":
        return value
    if isinstance(value, dict):
        raise ValueError(
            "a code task waits before it starts (`approval: required`); tool approvals are for LLM tasks"
        )
    raise ValueError(_APPROVAL_FORMS)


CodeApproval = Annotated[Literal["required"] | None, BeforeValidator(_task_approval)]
"""A code task's `approval:`."""


APPROVAL_HELP = (
    "`required`: the task waits for a person's approval before it starts, showing what will "
    "run; rejected, it fails with the person's comment."
)
TOOL_APPROVAL_HELP = APPROVAL_HELP + (
    " `{tools: [run_code, ...]}`: each call of those tools waits for approval, showing its "
    "arguments; a rejected call is a tool error the model reads."
)
