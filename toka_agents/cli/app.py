"""The `toka` command's frame: the command groups, the two consoles, the parameter types the
verbs share, and the Prefect API's errors as one line."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal
from uuid import UUID

import cyclopts
from cyclopts import Parameter
from rich.console import Console
from rich.text import Text

from toka_agents import __version__, text
from toka_agents.config.inputs import read_inputs_file
from toka_agents.errors import ConfigError, ConfigIssue, TokaError

app = cyclopts.App(
    name="toka",
    help="Run teams of agents on Prefect: orchestration configs become Prefect flows, "
    "agent code runs in Docker sandboxes.",
    version=__version__,
    suppress_keyboard_interrupt=False,  # `main` says "interrupted" and exits 130
    error_formatter=lambda error: Text(f"error: {text.visible(' '.join(str(error).split()))}"),
)
sandbox_app = cyclopts.App(name="sandbox", help="The Docker sandbox: its image and its containers.")
app.command(sandbox_app)
runtime_app = cyclopts.App(
    name="runtime", help="Run code in a sandbox directly, without an orchestration."
)
app.command(runtime_app)
agent_app = cyclopts.App(
    name="agent",
    help="The agents of configs on Prefect's server: list them with their latest states, "
    "spawn one, monitor a run live, stop a run.",
)
app.command(agent_app)

workspace_app = cyclopts.App(
    name="workspace",
    help="Run workspaces kept as Docker volumes on the engine DOCKER_HOST names (remote engines).",
)
app.command(workspace_app)


# Whatever they print that toka-agents did not write goes through `text` and never as markup.
out = Console(highlight=False, soft_wrap=True, emoji=False)
CANCEL_POLL_SECONDS = 1.0
"""How often a run of this process looks for a cancel (`toka agent stop`, the UI): a read of
its flow run, cheap on any database, so that its containers go within seconds of the cancel."""
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

ConfigPath = Annotated[Path, Parameter(help="Config files (.yaml, .yml, .toml) or directories of them.")]
Conditions = Annotated[
    tuple[str, ...],
    Parameter(help="Conditional task groups to include.", consume_multiple=True, negative=""),
]
OptionalDependencies = Annotated[
    Literal["ignore", "order"] | None,
    Parameter(help="`order`: optional dependencies order agents when both are loaded."),
]
AllowUnsandboxed = Annotated[
    bool,
    Parameter(
        negative="", help="Let agents that set `security.sandbox: false` run (in a relaxed sandbox)."
    ),
]
DryRunFlag = Annotated[bool, Parameter(negative="", help="Walk the DAG without running any code.")]
WatchFlag = Annotated[
    bool,
    Parameter(
        negative="",
        help="Draw the run live from Prefect's records (a bar per agent, its current task, "
        "failures as they happen) instead of log lines.",
    ),
]


InputPairs = Annotated[
    tuple[str, ...],
    Parameter(
        name="--input",
        negative="",
        help="A value of one of the config's inputs, NAME=VALUE (repeatable); lists as a,b or "
        "[a, b]. Wins over --inputs-file.",
    ),
]
InputsFile = Annotated[
    Path | None, Parameter(help="A YAML or JSON file of the inputs' values (NAME: VALUE).")
]


def given_inputs(pairs: tuple[str, ...], file: Path | None) -> dict[str, Any]:
    """The input values of `--inputs-file` and then `--input NAME=VALUE` (a value keeps any
    `=` of its own); raises `ConfigError` with a line for each malformed one."""
    given = read_inputs_file(file) if file is not None else {}
    malformed = []
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            malformed.append(ConfigIssue("<command line>", "--input", f"{pair!r} is not NAME=VALUE"))
            continue
        given[name.strip()] = value
    if malformed:
        raise ConfigError(malformed)
    return given


AgentName = Annotated[str, Parameter(help="The agent to run, with every agent it requires.")]
FlowRunId = Annotated[str, Parameter(help="The flow run's id (the UI's run page shows it).")]


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """Prefect's client errors as one line that says which API did not answer."""
    try:
        yield
    except TokaError:
        raise
    except Exception as exc:
        from prefect.settings import PREFECT_API_URL

        where = PREFECT_API_URL.value() or "Prefect's embedded server"
        said = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise TokaError(f"the Prefect API at {where} failed: {said}") from None


def flow_run_id_of(given: str) -> UUID:
    """A flow run id from the command line; `TokaError` in one line when it is not one."""
    try:
        return UUID(given.strip())
    except ValueError:
        raise TokaError(f"{given!r} is not a flow run id (a UUID such as 0a1b2c3d-...)") from None
