"""Pydantic models of an orchestration: the native config format and what every dialect loads into.

These models are the contract of the native YAML/TOML format (`toka schema` prints their
JSON Schema). They know nothing of Prefect or Docker: limits are plain numbers (bytes,
cores, seconds) parsed by `config.limits`, capabilities are plain names.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Discriminator,
    Field,
    PlainSerializer,
    PrivateAttr,
    Tag,
    model_validator,
)

from toka_agents.config.base import ConfigModel as _Model
from toka_agents.config.base import Duration, Name
from toka_agents.config.inputs import Inputs
from toka_agents.config.limits import (
    at_most_cpu,
    at_most_memory,
    at_most_pids,
    at_most_workspace,
    format_bytes,
    parse_cpu,
    parse_memory,
)
from toka_agents.config.mcp import McpServer
from toka_agents.config.people import (
    APPROVAL_HELP,
    APPROVAL_TAGS,
    HUMAN_HELP,
    TOOL_APPROVAL_HELP,
    Approval,
    CodeApproval,
    HumanRole,
)
from toka_agents.config.sandbox_settings import SandboxSettings
from toka_agents.config.workspace import OutputEntry, WorkspaceSeed

Priority = Literal["critical", "high", "medium", "low"]
PRIORITY_RANK: dict[str, int] = {"critical": 0, "high": 1, "medium": 2, "low": 3}
FailurePolicy = Literal["stop", "continue"]

# Docker refuses memory limits below 6MB.
_MIN_MEMORY = 6 * 1024**2


def _at_least_docker_minimum(size: int) -> int:
    if size < _MIN_MEMORY:
        raise ValueError(f"memory {format_bytes(size)} is below 6MB, the smallest limit Docker accepts")
    return size


def _size(at_most: Callable[[int], int], examples: list[str]) -> Any:
    """A size in the memory grammar (`512MB`), at least Docker's minimum and at most `at_most`'s
    bound, written back in the same grammar."""
    return Annotated[
        int,
        BeforeValidator(parse_memory),
        AfterValidator(_at_least_docker_minimum),
        AfterValidator(at_most),
        PlainSerializer(format_bytes, return_type=str, when_used="json"),
        Field(json_schema_extra={"type": "string", "examples": examples}),
    ]


MemorySize = _size(at_most_memory, ["256MB", "1GB"])
WorkspaceSize = _size(at_most_workspace, ["1GB", "20GB"])
CpuShare = Annotated[
    float,
    BeforeValidator(parse_cpu),
    AfterValidator(at_most_cpu),
    Field(json_schema_extra={"type": "string", "examples": ["50%", "0.5", "2 cores"]}),
]
ProcessCount = Annotated[int, Field(gt=0), AfterValidator(at_most_pids)]


DEFAULT_IMAGE = "toka-sandbox:1"
"""The sandbox image built from `sandboxes/python` by `toka sandbox build`."""


class Limits(_Model):
    """Resource limits of a sandbox container. Unset fields inherit from the level above."""

    memory: MemorySize | None = Field(None, description="Memory limit: 512MB, 1GB (1024-based).")
    cpu: CpuShare | None = Field(None, description="CPU share: 50%, 0.5 or '2 cores'.")
    timeout: Duration | None = Field(None, description="Wall-clock limit per task: 30s, 5m, 2h.")
    pids: ProcessCount | None = Field(None, description="Most processes and threads at once.")
    workspace: WorkspaceSize | None = Field(
        None,
        description="Size of the run's workspace, which its tasks share (the largest any task "
        "is given wins): a write past it fails with 'no space left on device'.",
    )

    def over(self, base: Limits) -> Limits:
        """These limits, with every unset field taken from `base`."""
        mine = {
            name: value for name in type(self).model_fields if (value := getattr(self, name)) is not None
        }
        return base.model_copy(update=mine) if mine else base


DEFAULT_LIMITS = Limits(memory="512MB", cpu="1 core", timeout="10m", pids=256, workspace="1GB")
"""What a task gets when no level of the config sets a limit."""


class CodeSource(_Model):
    """Code to run in the sandbox: inline `source` or a `file` relative to the config file."""

    language: Literal["python", "shell"]
    source: str | None = None
    file: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _exactly_one_origin(cls, data: Any) -> Any:
        if isinstance(data, dict) and (data.get("source") is None) == (data.get("file") is None):
            raise ValueError("give exactly one of `source` (inline code) or `file` (a path)")
        return data


class CodeTask(_Model):
    """A task that runs code in the agent's sandbox."""

    kind: Literal["code"] = "code"
    name: Name
    description: str = ""
    code: CodeSource
    priority: Priority | None = Field(None, description="`critical`: its failure fails its agent.")
    limits: Limits = Limits()
    image: str | None = Field(None, description="The sandbox image of this task (default: its agent's).")
    condition: str | None = Field(
        None, description="Run this task only when the run names this condition."
    )
    approval: CodeApproval = Field(None, description=APPROVAL_HELP)


SESSION_HELP = (
    "Whether an LLM task's tool calls share one live container for the task's life (Python "
    "variables, /tmp and processes persist between `run_code` calls); false: a fresh container "
    "for every call."
)


class LlmTask(_Model):
    """A task an LLM agent loop carries out from an instruction."""

    kind: Literal["llm"] = "llm"
    name: Name
    instruction: str = Field(min_length=1)
    expected_output: str | None = Field(None, description="What its finish summary should hand on.")
    description: str = ""
    priority: Priority | None = None
    estimated_duration: str | None = Field(None, description="A hint for people: 2h, 1d, 1w.")
    tools: list[str] = []
    limits: Limits = Limits()
    image: str | None = Field(None, description="The sandbox image of its code (default: its agent's).")
    condition: str | None = Field(
        None, description="Run this task only when the run names this condition."
    )
    approval: Approval | None = Field(None, description=TOOL_APPROVAL_HELP)
    human: HumanRole | None = Field(None, description=HUMAN_HELP + " Default: its agent's.")
    sandbox_session: bool | None = Field(None, description=SESSION_HELP + " Default: its agent's.")


def _task_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        if "kind" in value:
            return {"code": "code-task", "llm": "llm-task"}.get(value["kind"])
        if "code" in value:
            return "code-task"
        if "instruction" in value:
            return "llm-task"
        return None
    return {"code": "code-task", "llm": "llm-task"}.get(getattr(value, "kind", None))


AgentTask = Annotated[
    Annotated[CodeTask, Tag("code-task")] | Annotated[LlmTask, Tag("llm-task")],
    Discriminator(
        _task_kind,
        custom_error_type="task_kind",
        custom_error_message="a task needs `code` (a code task) or `instruction` (an LLM task)",
    ),
]
# Pydantic puts union tags into error locations; the loader drops them.
TASK_TAGS = frozenset({"code-task", "llm-task"}) | APPROVAL_TAGS


class TokenPrice(_Model):
    """What a million tokens cost, in the provider's currency."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


class LlmSettings(_Model):
    """Which model LLM tasks use, how to reach it, and how far a task may go with it.

    The key itself is never part of the settings: they name where it is (`api_key_env`, an
    environment variable, or `api_key_secret`, a Prefect Secret block).
    """

    provider: Literal["openai", "anthropic"] = Field(
        description="openai: Chat Completions (OpenAI, Ollama, vLLM, LM Studio, LiteLLM); "
        "anthropic: the Messages API."
    )
    model: str | None = Field(
        None, min_length=1, description="The model's name. Default: the environment's TOKA_LLM_MODEL."
    )
    base_url: str | None = Field(
        None,
        description="The API's root, as the official SDKs take it: https://api.openai.com/v1, "
        "http://localhost:11434/v1 (Ollama), https://api.anthropic.com. Default: the environment's "
        "OPENAI_BASE_URL or ANTHROPIC_BASE_URL, as the official SDKs read it, else the provider's.",
    )
    api_key_env: str | None = Field(
        None,
        description="Environment variable holding the key. With neither this nor "
        "`api_key_secret`: OPENAI_API_KEY or ANTHROPIC_API_KEY when set, as the official SDKs read it.",
    )
    api_key_secret: str | None = Field(
        None, description="Name of a Prefect Secret block holding the key."
    )
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int = Field(4096, gt=0, description="Most tokens the model may answer with, per call.")
    timeout: Duration | None = Field(
        None,
        description="Limit of one request: 30s, 2m. Default: 2m. A request past it is abandoned, "
        "not retried.",
    )
    max_retries: int = Field(
        4, ge=0, description="Retries of one call after 429, 5xx or a lost connection."
    )
    requests_per_minute: int | None = Field(None, gt=0)
    tokens_per_minute: int | None = Field(None, gt=0)
    price_per_million_tokens: TokenPrice | None = None
    max_steps: int = Field(30, gt=0, description="Most model calls in one task.")
    max_tokens_per_task: int | None = Field(
        200_000, gt=0, description="Most input plus output tokens of all model calls in one task."
    )
    options: dict[str, Any] = {}


class LlmOverrides(_Model):
    """LLM settings one run sets over the config's (run parameters, CLI flags).

    Each field set replaces that field of every agent's settings; a provider and a model
    together also configure agents that have none.
    """

    provider: Literal["openai", "anthropic"] | None = None
    model: str | None = Field(None, min_length=1)
    base_url: str | None = None
    api_key_env: str | None = None
    api_key_secret: str | None = None
    timeout: Duration | None = Field(None, description="Limit of one request, for this run.")

    def over(self, settings: LlmSettings | None) -> LlmSettings | None:
        """`settings` with these overrides applied; None when neither says which model."""
        changes = self.model_dump(exclude_none=True)
        if settings is not None:
            return settings.model_copy(update=changes)
        if self.provider is not None and self.model is not None:
            return LlmSettings(**changes)
        return None


class Origin(_Model):
    """Where an agent was written: its file, dialect, and the key paths of its parts."""

    file: str
    path: str = ""
    dialect: str = "native"
    requires_key: str = "requires"
    requires_paths: tuple[str, ...] = Field(
        (), description="Key path of each `requires` entry, where a dialect spreads them."
    )
    sandbox_key: str = Field(
        "sandbox", description="Key path of the sandbox switch, from the file's root."
    )

    def key(self, *parts: str | int) -> str:
        return ".".join(str(p) for p in (self.path, *parts) if p != "")

    def requirement_key(self, index: int) -> str:
        if index < len(self.requires_paths):
            return self.requires_paths[index]
        return self.key(self.requires_key, index)


_IN_MEMORY = Origin(file="<memory>")

_ALLOWED_HOST_PATTERN = re.compile(
    r"(?P<host>[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?)(:(?P<port>[0-9]{1,5}))?"
)


def allowed_host(entry: str) -> str:
    """`entry` as a host to allow (lower case); raises `ValueError` when it is not one."""
    found = _ALLOWED_HOST_PATTERN.fullmatch(entry)
    if found is None or len(found["host"]) > 253 or not 0 < int(found["port"] or 1) < 65536:
        raise ValueError(
            f"{entry!r} is not a host to allow: a host name or IPv4 address, optionally with "
            "`:port` (1-65535), such as 'api.example.com' or '10.0.0.5:8000'"
        )
    return entry.lower()


def _host_or_placeholder(entry: str) -> str:
    # An entry with braces may hold an input's placeholder: planning checks it once filled.
    return entry if "{" in entry else allowed_host(entry)


AllowedHost = Annotated[str, AfterValidator(_host_or_placeholder)]


class Agent(_Model):
    """One agent: who it is, what it may touch and use, and its ordered tasks."""

    name: Name
    description: str = ""
    priority: Priority = "medium"
    workstream: str | None = Field(None, description="Group of agents; defaults to the agent name.")
    requires: list[Name] = Field([], description="Agents that must complete successfully first.")
    optional_requires: list[Name] = Field(
        [], description="Agents whose results are useful if there; they order nothing by default."
    )
    capabilities: list[str] = []
    network_allow: list[AllowedHost] = Field(
        [],
        description="The only hosts (`host` or `host:port`) the agent's sandbox may reach, through "
        "the run's egress proxy; every other destination, DNS included, is refused.",
    )
    limits: Limits = Limits()
    image: str | None = None
    sandbox: bool = True
    env: dict[str, str] = {}
    retries: int = Field(0, ge=0)
    llm: LlmSettings | None = None
    on_task_failure: FailurePolicy | None = Field(
        None, description="What a failed task does to its agent; default: the orchestration's."
    )
    min_success_ratio: float | None = Field(
        None, ge=0, le=1, description="With `continue`; default: the orchestration's."
    )
    tasks: list[AgentTask] = Field(min_length=1)
    outputs: list[OutputEntry] = Field(
        [], description="Files it writes: named to the agents after it, and the run's artifacts."
    )
    human: HumanRole | None = Field(None, description=HUMAN_HELP + " Default: `defaults.human`.")
    mcp_servers: list[McpServer] = Field(
        [], description="MCP servers its LLM tasks use, and the orchestration's (by name, its own win)."
    )
    sandbox_session: bool = Field(True, description=SESSION_HELP)
    extra: dict[str, Any] = Field(
        {}, description="Keys of the source spec that toka-agents keeps but does not act on."
    )

    # A factory returning one shared, frozen Origin: a plain default would be deep-copied
    # into every agent, which costs more than validating the agent.
    _origin: Origin = PrivateAttr(default_factory=lambda: _IN_MEMORY)

    @property
    def origin(self) -> Origin:
        return self._origin

    def located(self, origin: Origin) -> Agent:
        self._origin = origin
        return self

    @model_validator(mode="after")
    def _unique_task_names(self) -> Agent:
        seen: set[str] = set()
        for task in self.tasks:
            if task.name in seen:
                raise ValueError(f"two tasks are named {task.name!r}")
            seen.add(task.name)
        return self


class Defaults(_Model):
    """What every agent inherits unless it says otherwise."""

    limits: Limits = Limits()
    capabilities: list[str] = []
    image: str | None = None
    env: dict[str, str] = {}
    retries: int = Field(0, ge=0)
    human: HumanRole | None = Field(None, description=HUMAN_HELP)


class Settings(_Model):
    """Orchestration-wide settings, which several files may contribute to."""

    name: Name | None = None
    description: str = ""
    max_concurrent_agents: int = Field(4, ge=1)
    defaults: Defaults = Defaults()
    llm: LlmSettings | None = None
    optional_dependencies: Literal["ignore", "order"] = Field(
        "ignore", description="`order`: optional dependencies order agents when both are loaded."
    )
    allow_unsandboxed: bool = False
    sandbox: SandboxSettings = SandboxSettings()
    on_task_failure: FailurePolicy | None = Field(
        None,
        description="What a failed task does to its agent. `stop`: its later tasks do not run and "
        "the agent fails. `continue`: they run, and the agent completes when the share of its "
        "tasks done reaches `min_success_ratio`. A failed `critical` task always fails its agent. "
        "Default: `stop`; for agents from Toka's specs, `continue`.",
    )
    min_success_ratio: float | None = Field(
        None,
        ge=0,
        le=1,
        description="With `continue`: the least share of an agent's attempted tasks that must be "
        "done for it to complete, 0 to 1. Default: 1; for agents from Toka's specs, 0.8.",
    )
    mcp_servers: list[McpServer] = Field(
        [], description="MCP servers every agent's LLM tasks use; an agent may add its own."
    )
    human_timeout: Duration = Field(
        3600.0, description="How long a question to a person waits for its answer (default 1h)."
    )
    inputs: Inputs = Field(
        {},
        description="The values a run takes, by name. With them declared, `{name}` in LLM "
        "instructions, `env` values and `network_allow` is the input's value (`{{name}}`: the "
        "text `{name}`); code reads $TOKA_INPUT_<NAME>, and all of them as JSON in $TOKA_INPUTS.",
        json_schema_extra={"propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"}},
    )
    workspace: WorkspaceSeed | None = Field(
        None,
        description="What the workspace holds before the first task: `{from: DIR}` or `{git: URL}`.",
    )
    outputs: list[OutputEntry] = Field(
        [], description="Files of the workspace handed back as the run's artifacts when it ends."
    )
    extra: dict[str, Any] = {}


class OrchestrationFile(Settings):
    """The native config format: settings plus agents, in one YAML or TOML file.

    `name` defaults to the file's name. Several files may be loaded together: their agents
    join, and settings a later file sets override an earlier file's, key by key.
    """

    agents: list[Agent] = Field(min_length=1)


class Orchestration(Settings):
    """Everything loaded from one or more files: what the planner reads."""

    name: Name
    agents: list[Agent]
    sources: list[str] = []
