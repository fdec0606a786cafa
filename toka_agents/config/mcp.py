"""What a config says of MCP servers (`mcp_servers:`): the tool servers an agent's LLM tasks use,
each run as a process in a container of the agent's sandbox."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from toka_agents.config.base import ConfigModel, Duration

ServerName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$",
        max_length=40,
        description="Letters, digits and '-': the prefix of its tools' names (`NAME__TOOL`).",
    ),
]


class McpServer(ConfigModel):
    """A stdio MCP server: `command` runs in a container with the agent's capabilities, limits
    and workspace, from the task's first LLM call to its end."""

    name: ServerName
    command: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="The process and its arguments: [python3, -m, mcp_server_time]."
    )
    image: str | None = Field(
        None,
        description="The image it runs in (`toka sandbox build --mcp PACKAGE` makes one); "
        "default: the task's.",
    )
    env: dict[str, str] = {}
    tools: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="The only tools of the server the model is offered; default: all."
    )
    timeout: Duration = Field(30.0, description="How long one call (and the start) may take.")
