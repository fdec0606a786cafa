"""Running configs: `toka orchestrate` (here, printed or watched live) and `toka deploy`."""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from cyclopts import Parameter, validators
from pydantic import ValidationError
from rich.console import Console

from toka_agents import planning, text
from toka_agents.cli.app import (
    CANCEL_POLL_SECONDS,
    AllowUnsandboxed,
    Conditions,
    ConfigPath,
    DryRunFlag,
    InputPairs,
    InputsFile,
    OptionalDependencies,
    WatchFlag,
    app,
    err,
    given_inputs,
    out,
)
from toka_agents.cli.rendering import print_issues, print_json, print_run, print_warnings
from toka_agents.config.fragments import issues_from_validation
from toka_agents.config.loader import load
from toka_agents.config.models import LlmOverrides
from toka_agents.errors import ConfigError

if TYPE_CHECKING:  # imported where a run starts: the other verbs start without Prefect
    from toka_agents.api import RunResult
    from toka_agents.orchestration.flow import RunOptions

Output = Literal["table", "json"]


@app.command
def orchestrate(
    *paths: ConfigPath,
    input_: InputPairs = (),
    inputs_file: InputsFile = None,
    conditions: Conditions = (),
    agents: Annotated[
        tuple[str, ...],
        Parameter(
            name="--agent",
            negative="",
            help="Run only this agent and the agents it requires (repeatable). Default: every agent.",
        ),
    ] = (),
    dry_run: DryRunFlag = False,
    watch: WatchFlag = False,
    output: Annotated[
        Output,
        Parameter(
            help="`json`: one JSON document on stdout, the run and every task's outcome, for "
            "scripts. `table`: a table on a wide terminal, otherwise a block per task."
        ),
    ] = "table",
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
    llm_timeout: Annotated[
        str | None,
        Parameter(
            help="The limit of one model request for this run, e.g. 10m (a slow local model "
            "needs more than the default 2m)."
        ),
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
        toka orchestrate flows/examples/inputs.yaml --input topic="solar power" --input days=3
    """
    inputs = given_inputs(input_, inputs_file)
    if llm_model == "" or llm_base_url == "":
        err.print("error: --llm-model and --llm-base-url cannot be empty", markup=False)
        return 1
    try:
        overrides = LlmOverrides(
            provider=llm_provider, model=llm_model, base_url=llm_base_url, timeout=llm_timeout
        )
    except ValidationError as exc:
        for issue in issues_from_validation(exc, "<command line>"):
            err.print(f"error: --llm-{issue.path}: {text.visible(issue.message)}", markup=False)
        return 1
    settings: planning.PlanSettings = dict(
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        max_concurrent_agents=max_concurrent_agents,
        allow_unsandboxed=allow_unsandboxed or None,
        llm_overrides=overrides,
        inputs=inputs,
    )
    checked = planning.validate(paths, **settings)
    print_warnings(checked)
    if checked.plan is None:
        print_issues(checked.issues)
        return 1
    planned = checked.plan
    if agents:
        try:
            planned = planning.plan(planning.select_agents(load(*paths), agents), **settings)
        except ConfigError as exc:
            print_issues(exc.issues)
            return 1
    from toka_agents.orchestration.flow import RunOptions

    options = RunOptions(
        workspace_root=workspace_dir,
        dry_run=dry_run,
        resume=resume,
        cancel_poll_seconds=CANCEL_POLL_SECONDS,
    )
    result = run_and_show(planned, options, watch=watch, output=output)
    return 0 if result.ok else 1


def run_and_show(
    planned: planning.Plan, options: RunOptions, *, watch: bool, output: Output = "table"
) -> RunResult:
    """Run the plan in this process, watched live or not, then show how it ended: the summary
    and where to look, or (`json`) one JSON document, alone on stdout."""
    from toka_agents.api import run_plan

    if not watch:
        result = run_plan(planned, options)
        ended_shown = False
    else:  # with `json`, the view goes to stderr: stdout holds the document alone
        result, ended_shown = run_watched(planned, options, err if output == "json" else out)
    if output == "json":
        print_json(result)
    else:
        print_run(result, out, with_end=not ended_shown)
    return result


def run_watched(planned: planning.Plan, options: RunOptions, console: Console) -> tuple[RunResult, bool]:
    """Run the plan in this process while a thread draws it live from the server on `console`.
    Also says whether the view drew it to its end (its last line is how the run ended)."""
    from toka_agents.api import run_plan
    from toka_agents.orchestration import watching

    watch = watching.Watch(console, totals=watching.planned_tasks(planned))
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
    if failed:
        err.print(f"the live view stopped: {text.visible(str(failed[0]))}", markup=False)
    return result, not failed and watch.view is not None


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
    input_: InputPairs = (),
    inputs_file: InputsFile = None,
) -> int:
    """Create or update a Prefect deployment that runs the configs on a work pool's workers.

    Its run form asks for each of the configs' inputs; `--input` sets the deployment's values
    (its scheduled runs use them; a custom run may change them).

    The paths are stored absolute; run it from the UI, with `prefect deployment run`, or on
    its schedule, once a worker polls the pool. For example:

        toka deploy flows/examples/quickstart.yaml --name nightly --cron "0 3 * * *"
    """
    from toka_agents.orchestration.deployments import FLOW_NAME
    from toka_agents.orchestration.deployments import deploy as deploy_configs

    if not name:
        err.print("error: give the deployment a name: --name NAME", markup=False)
        return 1
    if not paths:
        err.print("error: give at least one config path", markup=False)
        return 1
    try:
        seconds = None if interval is None else float(interval)
    except ValueError:
        err.print(f"error: --interval {interval!r} is not a number of seconds", markup=False)
        return 1
    inputs = given_inputs(input_, inputs_file)
    deployment_id = deploy_configs(
        *paths,
        name=name,
        cron=cron,
        interval=seconds,
        work_pool=work_pool,
        paused=paused,
        inputs=inputs or None,
    )
    full_name = f"{FLOW_NAME}/{name}"
    out.print(f"Deployment {full_name}: {deployment_id}", markup=False)
    out.print(f"Start a worker:  prefect worker start --pool {work_pool}", markup=False)
    out.print(f"Run it now:      prefect deployment run {full_name}", markup=False)
    return 0
