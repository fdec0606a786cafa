"""The agent verbs on Prefect's server: `toka agent list`, `spawn`, `monitor` and `stop`, and
the replies of a person a run waits for: `answer`, `approve` and `reject`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from uuid import UUID

from cyclopts import Parameter
from rich.console import Console

from toka_agents import planning, text
from toka_agents.cli.app import (
    CANCEL_POLL_SECONDS,
    AgentName,
    Conditions,
    ConfigPath,
    DryRunFlag,
    FlowRunId,
    InputPairs,
    InputsFile,
    OptionalDependencies,
    WatchFlag,
    agent_app,
    err,
    flow_run_id_of,
    given_inputs,
    out,
    prefect_api,
)
from toka_agents.cli.configs import plan_to_show
from toka_agents.cli.orchestrating import run_and_show
from toka_agents.cli.rendering import (
    agents_table,
    where_to_look,
)
from toka_agents.errors import TokaError

if TYPE_CHECKING:  # Prefect loads only in the verbs that use it
    from toka_agents.orchestration.people import Waiting


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
    from toka_agents.orchestration.watching import latest_task_runs, waiting_line, waiting_runs

    if not paths:
        raise TokaError("give at least one config path")
    planned = plan_to_show(paths, conditions, optional_dependencies)
    if planned is None:
        return 1
    with prefect_api():
        latest = latest_task_runs(planned, [planned.name, FLOW_NAME])
        agents = {agent.name for agent in planned.agents}
        waiting = [w for w in waiting_runs([planned.name, FLOW_NAME]) if w.agent in agents]
    # Piped, the table keeps one line per agent, for grep, instead of wrapping at 80 columns.
    console = out if out.is_terminal else Console(highlight=False, width=200, emoji=False)
    console.print(agents_table(planned, latest))
    for one in waiting:
        console.print(f"flow run {one.flow_run_id}: {waiting_line(one)}", markup=False, soft_wrap=True)
    return 0


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
    input_: InputPairs = (),
    inputs_file: InputsFile = None,
    conditions: Conditions = (),
    dry_run: DryRunFlag = False,
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
    inputs = given_inputs(input_, inputs_file)
    if inputs and deployment is not None:
        raise TokaError("--input and --inputs-file are for a run in this process, not --deployment")
    planned = None
    if paths:
        chosen = planning.select_agents(load(*paths), [agent])
        planned = planning.plan(
            chosen, conditions=conditions, inputs=inputs, require_inputs=deployment is None
        )
    if deployment is None:
        assert planned is not None
        from toka_agents.orchestration.flow import RunOptions

        options = RunOptions(
            workspace_root=workspace_dir, dry_run=dry_run, cancel_poll_seconds=CANCEL_POLL_SECONDS
        )
        result = run_and_show(planned, options, watch=watch)
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
    with prefect_api():
        flow_run = runs.start_on_deployment(deployment, parameters)
    out.print(
        f"Flow run: {flow_run.id} ({text.visible(flow_run.name, newlines=False)}) on "
        + text.visible(runs.deployment_name(deployment), newlines=False),
        markup=False,
    )
    if not watch:
        out.print(f"Follow it: toka agent monitor {flow_run.id}", markup=False)
        out.print(where_to_look(str(flow_run.id)), markup=False)
        return 0
    totals = watching.planned_tasks(planned) if planned is not None else None
    with prefect_api():
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

    run_id = flow_run_id_of(flow_run_id)
    with prefect_api():
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

    run_id = flow_run_id_of(flow_run_id)
    with prefect_api():
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


Pause = Annotated[
    str | None,
    Parameter(
        name="--pause",
        help="Reply only if the run still waits on this pause (the id `toka agent list` and "
        "--watch show): a second reply cannot land on the next question or call unseen.",
    ),
]
Comment = Annotated[str, Parameter(name="--comment", help="Why: the run's record keeps it.")]
Reply = Callable[[UUID, str, str | None], "Waiting"]
"""`people.answer`, `approve` or `reject`: each resumes the run with a person's reply."""
RequiredComment = Annotated[
    str,
    Parameter(name="--comment", help="Why it must not run: the task's failure (or the model) says it."),
]


@agent_app.command
def answer(
    flow_run_id: FlowRunId, text_: Annotated[str, Parameter(name="TEXT")], /, *, pause: Pause = None
) -> int:
    """Answer the question a run waits on (an agent's `ask_human`): the run resumes, and the
    agent reads TEXT as the answer. For example:

        toka agent answer 0a1b2c3d-1111-2222-3333-444455556666 "Use the March data" --pause 3f9c2a1b7d0e
    """
    from toka_agents.orchestration.people import answer as answer_question

    return _reply("Answered", answer_question, flow_run_id, text_, pause)


@agent_app.command
def approve(flow_run_id: FlowRunId, /, *, comment: Comment = "", pause: Pause = None) -> int:
    """Approve what a run waits to do (a task with `approval: required`, or a tool call its
    task holds): it runs now. For example:

        toka agent approve 0a1b2c3d-1111-2222-3333-444455556666 --pause 3f9c2a1b7d0e
    """
    from toka_agents.orchestration.people import approve as approve_it

    return _reply("Approved", approve_it, flow_run_id, comment, pause)


@agent_app.command
def reject(flow_run_id: FlowRunId, /, *, comment: RequiredComment, pause: Pause = None) -> int:
    """Reject what a run waits to do: the task fails with your comment, or, for a tool call,
    the model reads it as the call's error. For example:

        toka agent reject 0a1b2c3d-1111-2222-3333-444455556666 --comment "not on main"
    """
    from toka_agents.orchestration.people import reject as reject_it

    return _reply("Rejected", reject_it, flow_run_id, comment, pause)


def _reply(done: str, reply: Reply, flow_run_id: str, text_: str, pause: str | None) -> int:
    """Send a person's reply to the run `flow_run_id` waits on, and say what it answered."""
    run_id = flow_run_id_of(flow_run_id)
    with prefect_api():
        waited = reply(run_id, text_, pause)
    out.print(f"{done} {waited.subject()}; flow run {run_id} resumes", markup=False)
    return 0
