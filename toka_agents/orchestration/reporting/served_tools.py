"""The record of what an LLM task's MCP servers offered its model: each tool's name,
description and input schema as the model saw them, in a Markdown artifact of the task run, so
that a description written to steer the model (a poisoned tool) can be audited afterwards."""

from __future__ import annotations

import json

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from toka_agents import text
from toka_agents.errors import one_line
from toka_agents.llm.messages import ToolSpec
from toka_agents.orchestration.reporting.outputs import fenced, shown_literally
from toka_agents.planning import PlannedTask


def served_tools_markdown(task: PlannedTask, tools: list[ToolSpec]) -> str:
    lines = [f"# {shown_literally(task.id)}: the tools its MCP servers offered", ""]
    for tool in tools:
        lines += [
            f"## {shown_literally(tool.name)}",
            "",
            fenced(text.visible(tool.description)),
            "",
            fenced(json.dumps(tool.parameters, indent=2, ensure_ascii=False), "json"),
            "",
        ]
    return "\n".join(lines)


def served_tools_artifact(task: PlannedTask, tools: list[ToolSpec], key: str) -> None:
    """Write the artifact `key` of the tools offered. Never raises: the task's outcome stands."""
    try:
        create_markdown_artifact(
            markdown=served_tools_markdown(task, tools),
            key=key,
            description=f"The {len(tools)} tool(s) the MCP servers of {task.id} offered its model",
        )
    except Exception as exc:  # the API failed us
        get_run_logger().error(
            "could not write the served tools artifact of %s: %s", text.visible(task.id), one_line(exc)
        )
