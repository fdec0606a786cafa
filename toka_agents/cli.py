"""The `toka` command: validate, plan and orchestrate configs, print the schema, build the sandbox."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal
from uuid import UUID

import cyclopts
from cyclopts import Parameter, validators
from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL
from rich.console import Console
from rich.table import Table
from rich.text import Text

from toka_agents import __version__, graphs, planning, text
from toka_agents.api import RunResult, run_plan
from toka_agents.config.limits import format_bytes
from toka_agents.config.models import DEFAULT_IMAGE, LlmOverrides, OrchestrationFile
from toka_agents.errors import ConfigError, ConfigIssue, TokaError
from toka_agents.executor import TaskOutcome
from toka_agents.orchestration.flow import RUN_LABEL, RunOptions
from toka_agents.orchestration.reporting import llm_columns, task_message
from toka_agents.planning import Validation
from toka_agents.sandbox import (
    LABEL_MANAGED,
    connect,
    image_status,
    remove_labeled,
    remove_orphans,
)
from toka_agents.sandbox.egress import remove_networks
from toka_agents.sandbox.images import build_images

if TYPE_CHECKING:
    from toka_agents.orchestration.watching import LatestRun

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


@workspace_app.command(name="get")
def workspace_get(flow_run_id: UUID, destination: Path, /) -> int:
    """Copy a run's workspace volume into DESTINATION (made if missing), e.g.
    `toka workspace get 0b6e...-... ./out`. The engine is the one DOCKER_HOST names."""
    from toka_agents.sandbox.workspace import copy_out

    copied, left_out = copy_out(connect(), str(flow_run_id), destination)
    if left_out:
        err.print(f"warning: {text.visible(left_out.warning(destination))}", markup=False)
    out.print(
        f"copied {len(copied)} path(s) of run {flow_run_id}'s workspace to "
        + text.visible(str(destination)),
        markup=False,
    )
    return 0


@workspace_app.command(name="rm")
def workspace_rm(flow_run_id: UUID, /) -> int:
    """Remove a run's workspace volume from the engine DOCKER_HOST names."""
    from toka_agents.sandbox.workspace import remove_volume

    out.print(f"removed volume {remove_volume(connect(), str(flow_run_id))}", markup=False)
    return 0


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
WatchFlag = Annotated[
    bool,
    Parameter(
        negative="",
        help="Draw the run live from Prefect's records (a bar per agent, its current task, "
        "failures as they happen) instead of log lines.",
    ),
]


def print_issues(issues: list[ConfigIssue], console: Console | None = None) -> None:
    """Each config problem on one line: `FILE: key.path: message`."""
    for issue in issues:
        (console or err).print(text.one_line(str(issue), None), markup=False)


def print_warnings(
    checked: Validation, *, all_of_them: bool = False, console: Console | None = None
) -> None:
    """Plan warnings always; file warnings (Toka schema departures) in full only on request."""
    console = console or err
    planned = checked.plan.warnings if checked.plan else ()
    for warning in planned:
        console.print(f"warning: {text.one_line(str(warning), None)}", markup=False)
    from_files = [w for w in checked.warnings if w not in planned]
    if all_of_them:
        for warning in from_files:
            console.print(f"warning: {text.one_line(str(warning), None)}", markup=False)
    elif from_files:
        console.print(
            f"{len(from_files)} more warning(s) about the files: `toka validate` lists them",
            markup=False,
        )


@app.command
def validate(
    *paths: ConfigPath,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
    allow_unsandboxed: AllowUnsandboxed = False,
) -> int:
    """Check configs: print every problem as `FILE: key.path: message`; exit 1 if there are any.

    Warnings (Toka schema departures, capabilities the model does not know) never fail."""
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        allow_unsandboxed=allow_unsandboxed or None,
    )
    print_warnings(checked, all_of_them=True)
    if not checked.ok:
        print_issues(checked.issues)
        err.print(f"{len(checked.issues)} problem(s) found", markup=False)
        return 1
    assert checked.plan is not None
    plan = checked.plan
    out.print(
        f"ok: {text.visible(plan.name, newlines=False)}: {len(plan.agents)} agents, "
        f"{len(plan.tasks)} tasks, {len(plan.waves)} waves",
        markup=False,
    )
    return 0


@app.command
def plan(
    *paths: ConfigPath,
    json_: Annotated[
        bool, Parameter(name="--json", negative="", help="Print the plan as JSON.")
    ] = False,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
    allow_unsandboxed: AllowUnsandboxed = False,
) -> int:
    """Show the plan: agents in waves, their tasks and settings, the dependency edges."""
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        allow_unsandboxed=allow_unsandboxed or None,
    )
    print_warnings(checked)
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    if json_:
        print(json.dumps(checked.plan.to_json(), indent=2))
        return 0
    print_plan(checked.plan, out)
    return 0


def print_plan(planned: planning.Plan, console: Console) -> None:
    """The plan's name and description, then a row per agent: its wave, settings and tasks."""
    console.print(
        Text.assemble(
            (text.visible(planned.name, newlines=False), "bold"), ": ", text.visible(planned.description)
        )
    )
    table = Table("wave", "agent", "priority", "workstream", "requires", "tasks")
    wave_of = {name: i for i, wave in enumerate(planned.waves, 1) for name in wave}
    for agent in planned.agents:
        table.add_row(
            str(wave_of[agent.name]),
            _cell(agent.name),
            _cell(agent.priority),
            _cell(agent.workstream),
            _cell(", ".join(agent.requires) or "-"),
            Text("\n").join(_cell(f"{task.name} ({task.kind})") for task in agent.tasks) or "-",
        )
    console.print(table)


def _cell(value: str, style: str = "") -> Text:
    """A table cell of text toka-agents did not write: one visible line, never markup."""
    return Text(text.visible(value, newlines=False), style=style)


@app.command
def orchestrate(
    *paths: ConfigPath,
    conditions: Conditions = (),
    dry_run: Annotated[
        bool, Parameter(negative="", help="Walk the DAG without running any code.")
    ] = False,
    watch: WatchFlag = False,
    max_concurrent_agents: Annotated[
        int | None,
        Parameter(help="Overrides the config's bound (at least 1).", validator=validators.Number(gte=1)),
    ] = None,
    optional_dependencies: OptionalDependencies = None,
    allow_unsandboxed: AllowUnsandboxed = False,
    workspace_dir: Annotated[
        Path | None, Parameter(help="Where run workspaces go (default $TOKA_HOME/runs, ~/.toka/runs).")
    ] = None,
    llm_provider: Annotated[
        Literal["openai", "anthropic"] | None,
        Parameter(
            help="The LLM provider of every agent, for this run (with --llm-model for agents with none)."
        ),
    ] = None,
    llm_model: Annotated[
        str | None, Parameter(help="The model of every LLM agent, for this run.")
    ] = None,
    llm_base_url: Annotated[
        str | None,
        Parameter(help="The provider's API root for this run, e.g. http://localhost:11434/v1."),
    ] = None,
    resume: Annotated[
        str | None,
        Parameter(
            help="Run this failed or cancelled flow run of the config again, by its id: tasks and "
            "model calls that completed are not run again, and its workspace is reused."
        ),
    ] = None,
) -> int:
    """Run an orchestration as a Prefect flow run: on the server in PREFECT_API_URL, or on
    Prefect's embedded server when none is set.

    Exits 1 when the run does not complete. For example:

        toka orchestrate flows/examples/quickstart.yaml --watch
    """
    if llm_model == "" or llm_base_url == "":
        err.print("--llm-model and --llm-base-url cannot be empty", markup=False)
        return 1
    checked = planning.validate(
        paths,
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        max_concurrent_agents=max_concurrent_agents,
        allow_unsandboxed=allow_unsandboxed or None,
        llm_overrides=LlmOverrides(provider=llm_provider, model=llm_model, base_url=llm_base_url),
    )
    print_warnings(checked)
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    options = RunOptions(
        workspace_root=workspace_dir,
        dry_run=dry_run,
        resume=resume,
        cancel_poll_seconds=CANCEL_POLL_SECONDS,
    )
    result = _run_watched(checked.plan, options) if watch else _run_printed(checked.plan, options)
    return 0 if result.ok else 1


def _run_printed(planned: planning.Plan, options: RunOptions) -> RunResult:
    result = run_plan(planned, options)
    print_run(result, out)
    return result


def _run_watched(planned: planning.Plan, options: RunOptions) -> RunResult:
    """Run the plan in this process while a thread draws it live from the server."""
    from toka_agents.orchestration import watching

    watch = watching.Watch(out, totals=watching.planned_tasks(planned))
    failed: list[BaseException] = []

    def follow() -> None:
        try:
            watch.run()
        except Exception as exc:  # the view failed, not the run: say so, let the run go on
            failed.append(exc)

    follower = threading.Thread(target=contextvars.copy_context().run, args=(follow,), daemon=True)
    with watching.FlowRunSpotter(watch).attached(), watching.quiet_console_logs():
        follower.start()
        try:
            result = run_plan(planned, options)
            if result.flow_run_id is not None:
                watch.found(result.flow_run_id)
        finally:
            watch.stop()
            follower.join(timeout=30)
    if failed or watch.view is None:
        if failed:
            err.print(f"the live view stopped: {text.visible(str(failed[0]))}", markup=False)
        print_run(result, out)
        return result
    print_where(result, out)
    return result


def print_run(result: RunResult, console: Console) -> None:
    """The summary table of every task, the run's end, and where to find what it left."""
    console.print(summary_table(result.outcomes))
    if any(outcome.steps is not None for outcome in result.outcomes):
        tokens_in = sum(o.input_tokens or 0 for o in result.outcomes)
        tokens_out = sum(o.output_tokens or 0 for o in result.outcomes)
        costs = [o.cost for o in result.outcomes if o.cost is not None]
        cost = f", cost {sum(costs):.4f}" if costs else ""
        console.print(f"Tokens: {tokens_in} in, {tokens_out} out{cost}", markup=False)
    message = text.one_line(result.state.message or "")
    console.print(f"Run: {text.visible(result.state.name)}: {message}", markup=False)
    print_where(result, console)


def summary_table(outcomes: list[TaskOutcome]) -> Table:
    with_llm = any(outcome.steps is not None for outcome in outcomes)
    llm_headers = list(llm_columns(outcomes[0])) if with_llm else []
    table = Table("task", "status", "duration", "peak memory", "cpu time", *llm_headers, "message")
    table.columns[0].overflow = "fold"
    table.columns[0].min_width = 24
    colors = {"completed": "green", "dry-run": "green", "failed": "red", "skipped": "yellow"}
    for outcome in outcomes:
        table.add_row(
            _cell(outcome.task_id),
            _cell(outcome.status, colors.get(outcome.status, "yellow")),
            "-" if outcome.duration is None else f"{outcome.duration:.2f}s",
            format_bytes(outcome.peak_memory),
            "-" if outcome.cpu_seconds is None else f"{outcome.cpu_seconds:.3f}s",
            *(llm_columns(outcome).values() if with_llm else ()),
            Text("" if outcome.status == "completed" else task_message(outcome)),
        )
    return table


def print_where(result: RunResult, console: Console) -> None:
    """The workspace and its entries (one visible line each, whatever their names hold), and
    the flow run with where to look at it."""
    if result.workspace is not None and result.workspace.is_dir():
        console.print(
            f"Workspace (what the agents wrote): {text.visible(str(result.workspace))}", markup=False
        )
        for entry in sorted(result.workspace.iterdir()):
            name = text.visible(entry.name, newlines=False)
            console.print(f"  {name}{'/' if entry.is_dir() else ''}", markup=False)
    elif result.workspace is not None and result.flow_run_id is not None:  # a volume on the engine
        console.print("Workspace: a volume on the Docker engine; to copy it out:", markup=False)
        console.print(f"  toka workspace get {result.flow_run_id} DEST", markup=False)
    if result.flow_run_id is not None:
        console.print(f"Flow run: {result.flow_run_id}", markup=False)
        console.print(_where_to_look(str(result.flow_run_id)), markup=False)


def _where_to_look(flow_run_id: str) -> str:

    if PREFECT_API_URL.value():
        ui = PREFECT_UI_URL.value() or PREFECT_API_URL.value().removesuffix("/api")
        return f"In the Prefect UI: {ui}/runs/flow-run/{flow_run_id}"
    return (
        "Recorded by Prefect's embedded server; to browse it, run `prefect server start` and open "
        f"http://127.0.0.1:4200/runs/flow-run/{flow_run_id}"
    )


@app.command
def graph(
    *paths: ConfigPath,
    format: Annotated[
        Literal["mermaid", "dot", "svg", "png"], Parameter(help="What to draw.")
    ] = "mermaid",
    output: Annotated[Path | None, Parameter(help="Write here instead of standard output.")] = None,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
) -> int:
    """Draw the DAG: Mermaid or Graphviz DOT text, or an SVG/PNG image rendered by Graphviz."""
    checked = planning.validate(
        paths, conditions=conditions, optional_dependencies=optional_dependencies
    )
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    if format in ("svg", "png"):
        data = graphs.render(checked.plan, format)
        if output is None and format == "png" and sys.stdout.isatty():
            err.print("refusing to write PNG bytes to a terminal: use --output FILE", markup=False)
            return 1
    else:
        data = (graphs.mermaid if format == "mermaid" else graphs.dot)(checked.plan).encode()
    if output is None:
        if sys.stdout.isatty() and format in ("mermaid", "dot"):
            data = text.visible(data.decode()).encode()  # the configs' names, on a terminal
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        output.write_bytes(data)
        err.print(f"wrote {output} ({len(data)} bytes)", markup=False)
    return 0


@app.command
def schema() -> int:
    """Print the JSON Schema of the native config format, for editors."""
    print(json.dumps(OrchestrationFile.model_json_schema(mode="validation"), indent=2))
    return 0


@sandbox_app.command
def build(
    *,
    force: Annotated[
        bool, Parameter(negative="", help="Rebuild even when the image is current.")
    ] = False,
) -> int:
    """Build the sandbox images (Python and shell): from a registry when one answers, otherwise
    offline from Debian."""
    build_images(connect(), force=force, log=lambda line: out.print(text.visible(line), markup=False))
    return 0


@sandbox_app.command
def check() -> int:
    """Say whether the Docker engine answers and the sandbox image is current."""
    client = connect()
    version = client.version().get("Version", "?")
    status = image_status(client)
    out.print(f"Docker engine {version}: image {DEFAULT_IMAGE} is {status}", markup=False)
    return 0 if status == "current" else 1


@sandbox_app.command
def clean(
    *,
    run: Annotated[
        UUID | None,
        Parameter(help="Remove the containers of this flow run (its id), whoever owns them."),
    ] = None,
    all: Annotated[
        bool, Parameter(negative="", help="Remove every toka-agents container, running runs' too.")
    ] = False,
) -> int:
    """Remove the sandbox containers that toka-agents processes left when they were killed.

    A run removes its own containers whatever happens to it, and the next run on this host
    removes those of killed processes; this does it now. `--run` removes one run's containers
    only, `--all` every toka-agents container on the engine."""
    if run is not None and all:
        err.print("give --run or --all, not both", markup=False)
        return 1
    client = connect()
    if run is not None or all:
        labels = {LABEL_MANAGED: "1", **({RUN_LABEL: str(run)} if run is not None else {})}
        removed = remove_labeled(client, labels)
        remove_networks(client, labels)  # egress networks, once their containers are gone
    else:
        removed = len(remove_orphans(client))
    out.print(f"removed {removed} container(s)", markup=False)
    return 0


EXEC_USAGE_ERROR = 2
EXEC_SANDBOX_ERROR = 125  # as `docker run` when the engine fails it
EXEC_TIMEOUT = 124  # as `timeout(1)`
EXEC_MEMORY_KILL = 137  # 128 + SIGKILL, as a shell reports an OOM-killed process


@runtime_app.command(name="exec")
def runtime_exec(
    *,
    language: Annotated[Literal["python", "shell"], Parameter(help="The code's language.")],
    code: Annotated[str | None, Parameter(help="The code to run.")] = None,
    file: Annotated[Path | None, Parameter(help="A file holding the code to run.")] = None,
    memory: Annotated[str, Parameter(help="Memory limit, swap off: 64MB, 1GB, ...")] = "64MB",
    cpu: Annotated[str, Parameter(help="CPU share: 50%, 0.5 or '2 cores'.")] = "50%",
    timeout: Annotated[str, Parameter(help="Wall-clock limit: 10s, 2m, ...")] = "10s",
    pids: Annotated[
        int, Parameter(help="Most processes and threads at once.", validator=validators.Number(gte=1))
    ] = 64,
    network: Annotated[
        bool, Parameter(negative="", help="Join Docker's bridge network (otherwise: no network at all).")
    ] = False,
    image: Annotated[str, Parameter(help="The sandbox image (it needs python3).")] = DEFAULT_IMAGE,
) -> int:
    """Run code in a sandbox container with these limits; print its output as it comes, then
    what it used (on stderr). Exits with the code's status, 124 on a timeout, 137 on a memory
    kill, 125 when the sandbox itself fails, 2 on a bad argument. For example:

        toka runtime exec --language python --code "print(6 * 7)" --memory 32MB --timeout 5s
    """
    from toka_agents.config.limits import format_seconds, parse_cpu, parse_duration, parse_memory
    from toka_agents.errors import SandboxError
    from toka_agents.sandbox import Sandbox, SandboxSpec

    if (code is None) == (file is None):
        err.print("give the code with --code SRC or --file PATH, one of them", markup=False)
        return EXEC_USAGE_ERROR
    if file is not None:
        try:
            code = file.read_text()
        except OSError as exc:
            err.print(f"cannot read --file {file}: {exc.strerror or exc}", markup=False)
            return EXEC_USAGE_ERROR
        except UnicodeDecodeError:
            err.print(f"cannot read --file {file}: it is not UTF-8 text", markup=False)
            return EXEC_USAGE_ERROR
    try:
        limits = {
            "memory": parse_memory(memory),
            "cpus": parse_cpu(cpu),
            "timeout": parse_duration(timeout),
        }
    except ValueError as exc:
        err.print(f"{exc}", markup=False)
        return EXEC_USAGE_ERROR
    assert code is not None
    spec = SandboxSpec(
        image=image,
        language=language,
        source=code,
        pids=pids,
        network="bridge" if network else None,
        **limits,
    )

    def pass_on(stream: str, data: bytes) -> None:
        sink = sys.stdout.buffer if stream == "stdout" else sys.stderr.buffer
        sink.write(data)
        sink.flush()

    try:
        with Sandbox(connect(), {"org.toka-agents.runtime": "exec"}) as sandbox:
            result = sandbox.run(spec, on_output=pass_on)
    except SandboxError as exc:
        err.print(f"error: {text.visible(str(exc))}", markup=False)
        return EXEC_SANDBOX_ERROR
    # The code's own output passed through raw above, as `docker run` does: the user ran it.
    # What toka-agents says about it is shown literally.
    if result.failure:
        err.print(text.visible(result.failure), markup=False)
    cut = [name for name in ("stdout", "stderr") if getattr(result, f"{name}_truncated")]
    err.print(
        f"exit code {result.exit_code} · wall {format_seconds(round(result.duration, 3))} · "
        f"cpu {format_seconds(result.cpu_seconds)} · peak memory {format_bytes(result.peak_memory)} "
        f"of {format_bytes(result.memory_limit)} · stdout {format_bytes(result.stdout_bytes)}, "
        f"stderr {format_bytes(result.stderr_bytes)}"
        + (f" ({' and '.join(cut)} cut at {format_bytes(result.output_limit)})" if cut else ""),
        markup=False,
    )
    if result.timed_out:
        return EXEC_TIMEOUT
    if result.oom_killed:
        return EXEC_MEMORY_KILL
    if result.error is not None or result.exit_code is None:
        return EXEC_SANDBOX_ERROR
    return result.exit_code


@app.command
def deploy(
    *paths: ConfigPath,
    name: Annotated[
        str | None, Parameter(help="Required. The deployment is `toka-orchestrate/NAME`.")
    ] = None,
    cron: Annotated[
        str | None, Parameter(help="Run on this cron schedule (UTC), e.g. '0 3 * * *'.")
    ] = None,
    interval: Annotated[str | None, Parameter(help="Run every this many seconds.")] = None,
    work_pool: Annotated[
        str, Parameter(help="The work pool whose workers run it (create it first).")
    ] = "toka",
    paused: Annotated[bool, Parameter(negative="", help="Create it with its schedule paused.")] = False,
) -> int:
    """Create or update a Prefect deployment that runs the configs on a work pool's workers.

    The paths are stored absolute; run it from the UI, with `prefect deployment run`, or on
    its schedule, once a worker polls the pool. For example:

        toka deploy flows/examples/quickstart.yaml --name nightly --cron "0 3 * * *"
    """
    from toka_agents.orchestration.deployments import FLOW_NAME
    from toka_agents.orchestration.deployments import deploy as deploy_configs

    if not name:
        err.print("give the deployment a name: --name NAME", markup=False)
        return 1
    if not paths:
        err.print("give at least one config path", markup=False)
        return 1
    try:
        seconds = None if interval is None else float(interval)
    except ValueError:
        err.print(f"--interval {interval!r} is not a number of seconds", markup=False)
        return 1
    deployment_id = deploy_configs(
        *paths, name=name, cron=cron, interval=seconds, work_pool=work_pool, paused=paused
    )
    full_name = f"{FLOW_NAME}/{name}"
    out.print(f"Deployment {full_name}: {deployment_id}", markup=False)
    out.print(f"Start a worker:  prefect worker start --pool {work_pool}", markup=False)
    out.print(f"Run it now:      prefect deployment run {full_name}", markup=False)
    return 0


# --- toka agent ... ----------------------------------------------------------------------

AgentName = Annotated[str, Parameter(help="The agent to run, with every agent it requires.")]
FlowRunId = Annotated[str, Parameter(help="The flow run's id (the UI's run page shows it).")]


@contextlib.contextmanager
def _prefect_api() -> Iterator[None]:
    """Prefect's client errors as one line that says which API did not answer."""
    try:
        yield
    except TokaError:
        raise
    except Exception as exc:
        where = PREFECT_API_URL.value() or "Prefect's embedded server"
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise TokaError(f"the Prefect API at {where} failed: {text}") from None


def _flow_run_id(text: str) -> UUID:
    try:
        return UUID(text.strip())
    except ValueError:
        raise TokaError(f"{text!r} is not a flow run id (a UUID such as 0a1b2c3d-...)") from None


@agent_app.command(name="list")
def agent_list(
    *paths: ConfigPath,
    conditions: Conditions = (),
    optional_dependencies: OptionalDependencies = None,
) -> int:
    """List the agents of the configs, each with its latest task run on the Prefect server.

    Latest among the runs of the config's own flow and of toka deployments. For example:

        toka agent list flows/examples/quickstart.yaml
    """
    from toka_agents.orchestration.deployments import FLOW_NAME
    from toka_agents.orchestration.watching import latest_task_runs

    if not paths:
        raise TokaError("give at least one config path")
    checked = planning.validate(
        paths, conditions=conditions, optional_dependencies=optional_dependencies
    )
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    planned = checked.plan
    with _prefect_api():
        latest = latest_task_runs(planned, [planned.name, FLOW_NAME])
    # Piped, the table keeps one line per agent, for grep, instead of wrapping at 80 columns.
    console = out if out.is_terminal else Console(highlight=False, width=200, emoji=False)
    console.print(agents_table(planned, latest))
    return 0


def agents_table(planned: planning.Plan, latest: dict[str, LatestRun | None]) -> Table:
    """A row per agent: its settings and its latest task run (state, task, end)."""
    table = Table("agent", "workstream", "priority", "tasks", "requires", "latest", "task", "ended")
    colors = {"Completed": "green", "Failed": "red", "Crashed": "red", "Running": "cyan"}
    for agent in planned.agents:
        found = latest[agent.name]
        when = found.task_run.end_time if found else None
        table.add_row(
            _cell(agent.name),
            _cell(agent.workstream),
            _cell(agent.priority),
            str(len(agent.tasks)),
            _cell(", ".join(agent.requires) or "-"),
            _cell(found.state_name, colors.get(found.state_name, "yellow")) if found else "never run",
            _cell(found.task) if found else "-",
            when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else "-",
        )
    return table


@agent_app.command
def spawn(
    *paths: ConfigPath,
    agent: AgentName,
    deployment: Annotated[
        str | None,
        Parameter(
            help="Run it on this deployment (`toka-orchestrate/NAME` or NAME) instead of in this "
            "process; config paths given here replace the deployment's."
        ),
    ] = None,
    watch: WatchFlag = False,
    conditions: Conditions = (),
    dry_run: Annotated[
        bool, Parameter(negative="", help="Walk the DAG without running any code.")
    ] = False,
    workspace_dir: Annotated[
        Path | None, Parameter(help="Where run workspaces go (in this process).")
    ] = None,
) -> int:
    """Run one agent and every agent it requires, in this process or on a deployment.

    Exits 1 when the run does not complete (with --deployment, only when watched). For example:

        toka agent spawn flows/examples/quickstart.yaml --agent report --watch
        toka agent spawn --deployment quickstart --agent report
    """
    from toka_agents.config import load

    if not paths and deployment is None:
        raise TokaError("give config paths, or --deployment NAME to use a deployment's")
    planned = None
    if paths:
        planned = planning.plan(planning.select_agents(load(*paths), [agent]), conditions=conditions)
    if deployment is None:
        assert planned is not None
        options = RunOptions(
            workspace_root=workspace_dir, dry_run=dry_run, cancel_poll_seconds=CANCEL_POLL_SECONDS
        )
        result = _run_watched(planned, options) if watch else _run_printed(planned, options)
        return 0 if result.ok else 1
    return _spawn_on_deployment(deployment, agent, paths, conditions, dry_run, watch, planned)


def _spawn_on_deployment(
    deployment: str,
    agent: str,
    paths: tuple[Path, ...],
    conditions: tuple[str, ...],
    dry_run: bool,
    watch: bool,
    planned: planning.Plan | None,
) -> int:
    from toka_agents.orchestration import runs, watching

    parameters: dict[str, object] = {"agents": [agent]}
    if paths:
        parameters["paths"] = [str(path.resolve()) for path in paths]
    if conditions:
        parameters["conditions"] = list(conditions)
    if dry_run:
        parameters["dry_run"] = True
    with _prefect_api():
        flow_run = runs.start_on_deployment(deployment, parameters)
    out.print(
        f"Flow run: {flow_run.id} ({text.visible(flow_run.name, newlines=False)}) on "
        + text.visible(runs.deployment_name(deployment), newlines=False),
        markup=False,
    )
    if not watch:
        out.print(f"Follow it: toka agent monitor {flow_run.id}", markup=False)
        out.print(_where_to_look(str(flow_run.id)), markup=False)
        return 0
    totals = watching.planned_tasks(planned) if planned is not None else None
    with _prefect_api():
        view = watching.Watch(out, flow_run_id=flow_run.id, totals=totals).run()
    return 0 if view is not None and view.completed else 1


@agent_app.command
def monitor(flow_run_id: FlowRunId, /) -> int:
    """Draw a run live until it ends: a bar per agent, its current task, its failures.

    Works for any run on the server (started from the UI, a schedule, another machine).
    Exits 0 when the run completed, 1 otherwise. For example:

        toka agent monitor 0a1b2c3d-1111-2222-3333-444455556666
    """
    from toka_agents.orchestration import watching

    run_id = _flow_run_id(flow_run_id)
    with _prefect_api():
        view = watching.Watch(out, flow_run_id=run_id).run()
    return 0 if view is not None and view.completed else 1


@agent_app.command
def stop(flow_run_id: FlowRunId, /) -> int:
    """Cancel a run through Prefect; its sandbox containers go with it.

    Whoever runs it (this machine's `toka`, a worker) kills its containers; what the local
    Docker engine still holds of it is removed once it has ended. Exits 0 when the run is
    cancelled. For example:

        toka agent stop 0a1b2c3d-1111-2222-3333-444455556666
    """
    from toka_agents.orchestration import runs

    run_id = _flow_run_id(flow_run_id)
    with _prefect_api():
        before = runs.read_flow_run(run_id)
        if before.state is not None and before.state.is_final():
            ended = text.visible(before.state.name, newlines=False)
            out.print(f"Flow run {run_id} has already ended: {ended}", markup=False)
            return 0 if runs.is_cancelled(before) else 1
        flow_run = runs.stop(run_id)
    state = text.visible(flow_run.state.name, newlines=False) if flow_run.state else "?"
    removed = runs.remove_local_containers(run_id) if runs.is_cancelled(flow_run) else None
    left = f"; removed {removed} container(s) it left" if removed else ""
    out.print(f"Flow run {run_id}: {state}{left}", markup=False)
    if not runs.is_cancelled(flow_run):
        err.print(
            f"the run is {state} and has not ended yet: whoever runs it ends it at its next look",
            markup=False,
        )
        return 1
    return 0


class VisibleLogLines(logging.Formatter):
    """Prefect's console log lines with their control characters shown as escapes (`\\x1b`):
    they carry task output, state messages and the providers' errors, and Prefect's console
    handler prints them to the terminal as they are."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return text.visible(self.inner.format(record))


def show_log_lines_literally() -> None:
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not isinstance(
            handler.formatter, VisibleLogLines
        ):
            handler.setFormatter(VisibleLogLines(handler.formatter or logging.Formatter()))


def main() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    show_log_lines_literally()
    try:
        app()
    except ConfigError as exc:
        print_issues(exc.issues)
        sys.exit(1)
    except TokaError as exc:
        err.print(f"error: {text.visible(str(exc))}", markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted", markup=False)
        sys.exit(130)


if __name__ == "__main__":
    main()
