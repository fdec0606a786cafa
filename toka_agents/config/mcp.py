"""What a config says of MCP servers (`mcp_servers:`): the tool servers an agent's LLM tasks use.

An entry is one of two kinds, told apart by the key it has (exactly one of them):
- `command`: a stdio server, run as a process in a container of the agent's sandbox;
- `url`: a server over streamable HTTP, reached from the runner, only when the agent's
  `network_allow` lists its host; `headers_env` names the environment variables its request
  headers are read from at the task's start (the config holds no secret).
"""

from __future__ import annotations

import re
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field, model_validator

from toka_agents.config.base import ConfigModel, Duration

ServerName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$",
        max_length=40,
        description="Letters, digits and '-': the prefix of its tools' names (`NAME__TOOL`).",
    ),
]
HeaderName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$",
        max_length=100,
        description="An HTTP header's name, such as `Authorization`.",
    ),
]
EnvName = Annotated[
    str,
    Field(
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        max_length=100,
        description="An environment variable's name, such as `NOTES_TOKEN`.",
    ),
]
_STDIO_ONLY = ("image", "env")


def server_url(url: str) -> str:
    """`url` as an MCP server's address: http or https, with a host. Raises `ValueError` in
    one line. (Credentials in it are refused by the entry, whose error does not show the URL.)"""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"{url!r} is not an MCP server's URL: it must be http:// or https:// with a host, "
            "such as 'https://mcp.example.com/mcp'"
        )
    if re.search(r"\s", url):
        raise ValueError(f"{url!r} is not an MCP server's URL: it has white space in it")
    return url


class McpServer(ConfigModel):
    """An MCP server: a stdio one (`command`) runs in a container with the agent's
    capabilities, limits and workspace, from the task's first LLM call to its end; an HTTP one
    (`url`) runs elsewhere and is reached from the runner."""

    name: ServerName
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None,
        min_length=1,
        description="A stdio server: the process and its arguments: [python3, -m, mcp_server_time].",
    )
    url: Annotated[str, AfterValidator(server_url)] | None = Field(
        None,
        description="An HTTP server (streamable HTTP): its endpoint, such as "
        "`https://mcp.example.com/mcp`; the agent's `network_allow` must list its host.",
    )
    headers_env: dict[HeaderName, EnvName] = Field(
        {},
        description="With `url`: request headers read from the environment at the task's start, "
        "as {Header-Name: ENV_VAR}; the values are never shown.",
    )
    image: str | None = Field(
        None,
        description="With `command`: the image it runs in (`toka sandbox build --mcp PACKAGE` "
        "makes one); default: the task's.",
    )
    env: dict[str, str] = Field({}, description="With `command`: its process's environment, added.")
    tools: list[Annotated[str, Field(min_length=1)]] | None = Field(
        None, description="The only tools of the server the model is offered; default: all."
    )
    timeout: Duration = Field(30.0, description="How long one call (and the start) may take.")

    @model_validator(mode="after")
    def _one_kind(self) -> McpServer:
        if (self.command is None) == (self.url is None):
            raise ValueError(
                "an MCP server has either `command` (a stdio server in the sandbox) or `url` "
                f"(an HTTP server), {'not both' if self.command else 'and has neither'}"
            )
        if self.url is not None:
            if "@" in urlsplit(self.url).netloc:
                raise ValueError(
                    "an MCP server's URL may not carry credentials: name the variables that hold "
                    "them in `headers_env`"
                )
            given = [key for key in _STDIO_ONLY if getattr(self, key)]  # a dump reads back
            if given:
                raise ValueError(
                    f"`{given[0]}` is for a stdio server (`command`); a `url` server runs "
                    "elsewhere and takes `headers_env`"
                )
        elif self.headers_env:
            raise ValueError("`headers_env` is for an HTTP server (`url`), not a stdio one")
        return self
