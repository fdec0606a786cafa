"""Plan -> Prefect flow: the flow named after the orchestration, and what its body does.

The body sets up what the run shares (LLM keys and rate limits, the workspace, the sandbox,
the cancel watcher), hands the plan to the scheduler, and whatever happens removes the run's
containers and writes its summary. Every agent task is a task run named `<agent>/<task>`,
tagged with its agent, workstream and priority; upstream edges are real Prefect dependencies,
so the UI's graph shows the DAG.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

from prefect import Flow, get_run_logger
from prefect.context import FlowRunContext
from prefect.states import State
from pydantic import SecretStr

from toka_agents import readiness, text
from toka_agents.config.limits import format_bytes
from toka_agents.errors import SandboxError, one_line
from toka_agents.executor import ExecutionContext
from toka_agents.orchestration import archives, people, reporting, resuming, task_logs
from toka_agents.orchestration.cancellation import CancellationWatcher
from toka_agents.orchestration.llm_setup import (
    LlmSetupError,
    rate_limit_hook,
    read_secret_keys,
    upsert_rate_limits,
)
from toka_agents.orchestration.reporting import outputs
from toka_agents.orchestration.scheduler import Schedule, Scheduler, schedule_of
from toka_agents.orchestration.tasks import agent_task, approval_task, approvals_kept, step_task
from toka_agents.planning import Plan
from toka_agents.sandbox import Sandbox, connect, create_workspace, remove_orphans
from toka_agents.sandbox.owners import LABEL_RUN as RUN_LABEL
from toka_agents.sandbox.seeding import seed_workspace
from toka_agents.sandbox.users import LABEL_USER, run_user
from toka_agents.sandbox.workspace import local_workspace
from toka_agents.sandbox.workspace_files import output_files


@dataclass(frozen=True)
class RunOptions:
    """How a compiled flow runs, beyond what the plan says."""

    workspace_root: Path | None = None
    dry_run: bool = False
    cancel_poll_seconds: float = 2.0
    resume: UUID | str | None = None
    """A failed or cancelled flow run of the same plan to run again (see `resuming`)."""


def compile_flow(plan: Plan, options: RunOptions | None = None) -> Flow[[], reporting.RunSummary]:
    """A Prefect flow named after the orchestration that runs the plan when called."""
    chosen = options or RunOptions()
    schedule = schedule_of(plan)

    def run_plan() -> State[reporting.RunSummary | reporting.RunNotCompleted]:
        return execute_plan(schedule, chosen)

    return Flow(
        run_plan,
        name=plan.name,
        description=plan.description or None,
        validate_parameters=False,
    )


def execute_plan(
    schedule: Schedule, options: RunOptions
) -> State[reporting.RunSummary | reporting.RunNotCompleted]:
    """Run a plan inside the current flow run; return the flow run's final state."""
    plan = schedule.plan
    flow_context = FlowRunContext.get()
    assert flow_context is not None and flow_context.flow_run is not None, "runs inside a flow run"
    flow_run = flow_context.flow_run
    resuming.separate_attempts(flow_context, [agent_task, step_task, approval_task])
    task_logs.tidy_failure_lines()
    logger = get_run_logger()
    for warning in plan.warnings:
        logger.warning("%s", text.one_line(warning, None))
    refusal = readiness.llm_refusal(plan, dry_run=options.dry_run)
    api_keys: dict[str, SecretStr] = {}
    if refusal is None and not options.dry_run:
        try:
            api_keys = read_secret_keys(plan)
            upsert_rate_limits(plan)
        except LlmSetupError as exc:
            refusal = str(exc)
    if refusal is not None:
        return reporting.refused_state(refusal)  # type: ignore[return-value]
    workspace, sandbox, sandbox_error = None, None, None
    labels = {RUN_LABEL: str(flow_run.id)}
    client = None
    if not options.dry_run and plan.tasks:  # LLM tasks' tools run in the sandbox too
        try:
            # Not checked here: each call asks the engine, so a task's retries can outlive an outage.
            client = connect(pool_size=2 * plan.max_concurrent_agents + 2, check=False)
            if orphans := remove_orphans(client):
                logger.warning(
                    "Removed %d sandbox container(s) left by toka-agents processes that were killed",
                    len(orphans),
                )
        except SandboxError as exc:
            client, sandbox_error = None, str(exc)
            logger.error("%s", one_line(exc))
    user = run_user(str(flow_run.id), client, label=RUN_LABEL)
    if client is not None:
        sandbox = Sandbox(client, {**labels, LABEL_USER: user}, pool_size=plan.pool_size)
    if not options.dry_run:
        name = resuming.workspace_name(plan.name, flow_run.id, options.workspace_root, datetime.now(UTC))
        try:
            workspace = create_workspace(
                options.workspace_root, name, run_id=str(flow_run.id), user=user
            )
        except SandboxError as exc:  # a workspace volume on an engine that failed
            return reporting.refused_state(str(exc))  # type: ignore[return-value]
        logger.info("Workspace: %s", workspace)
        if plan.workspace_seed is not None and flow_run.run_count <= 1:  # a resumed run has it
            try:
                seeded = seed_workspace(
                    workspace,
                    plan.workspace_seed,
                    plan.workspace_limit,
                    run_id=str(flow_run.id),
                    user=user,
                )
            except SandboxError as exc:
                return reporting.refused_state(str(exc))  # type: ignore[return-value]
            logger.info("%s", text.one_line(seeded.describe(), None))
    report = reporting.RunReport(plan, workspace)
    context = ExecutionContext(
        sandbox=sandbox,
        workspace=workspace,
        run_id=str(flow_run.id),
        sandbox_error=sandbox_error,
        dry_run=options.dry_run,
        workspace_limit=plan.workspace_limit,
        labels=labels,
        agents=dict(schedule.agents),
        api_keys=api_keys,
        sandbox_user=user,
    )
    context.rate_limits = functools.partial(rate_limit_hook, cancel=context.cancel)
    wait = people.Wait(plan.name, plan.human_timeout, context.cancel)
    if sandbox is not None:  # a run that waits for a person keeps no warm container
        wait = people.Wait(plan.name, plan.human_timeout, context.cancel, on_wait=sandbox.empty_pools)
    if any(task.asks_human for task in plan.tasks):
        context.ask_person = functools.partial(people.ask_person, wait)
    if any(task.needs_approval or task.approval_tools for task in plan.tasks):
        context.ask_approval = approvals_kept(functools.partial(people.ask_approval, wait))
    watcher = CancellationWatcher(
        flow_run.id, options.cancel_poll_seconds, sandbox, logger, llm_cancel=context.cancel
    )
    watcher.start()
    scheduler = Scheduler(schedule, context, report, watcher, flow_run.id)
    try:
        scheduler.run()
    finally:
        # Each step here logs its own errors: none may hide the run's own error or skip
        # the summary.
        watcher.stop()
        if sandbox is not None:
            _end_sandbox(sandbox, logger)
        warnings = _hand_back(plan, workspace, str(flow_run.id), logger) if workspace else []
        report.finish(scheduler.results(), warnings)
    outcomes = scheduler.results()
    cancelled = watcher.cancelled.is_set()
    return reporting.run_state(plan, outcomes, workspace, cancelled=cancelled, warnings=warnings)


def _hand_back(plan: Plan, workspace: Path, run_id: str, logger: reporting.RunLogger) -> list[str]:
    """The run's outputs as artifacts and its whole workspace kept in the result storage;
    return a warning for each output that is missing and each step that failed. Never raises."""
    warnings: list[str] = []
    try:
        with local_workspace(workspace, run_id) as directory:
            if plan.outputs:
                files, missing = output_files(directory, plan.outputs)
                warnings += missing + outputs.write_output_artifacts(plan.name, directory, files)
            where, size, sparse = archives.keep_workspace(directory, run_id)
            logger.info("Workspace archived to the result storage: %s (%s)", where, format_bytes(size))
            if sparse:
                warnings.append(
                    f"left out of the workspace's archive, being mostly holes: {', '.join(sparse[:10])}"
                )
    except Exception as exc:  # the engine or the storage failed us; the run's result stands
        warnings.append(f"the workspace was not archived: {one_line(exc)}")
    for warning in warnings:
        logger.warning("%s", text.one_line(warning, None))
    return warnings


def _end_sandbox(sandbox: Sandbox, logger: reporting.RunLogger) -> None:
    """Stop whatever still runs (a run left early) and remove the run's containers."""
    try:
        sandbox.cancel()
        for warning in sandbox.remove_leftovers():
            logger.warning("%s", text.one_line(warning, None))
    except Exception as exc:  # the engine is the one that failed; the run's result stands
        logger.error(
            "could not remove the run's sandbox containers: %s. The next run on this host "
            "or `toka sandbox clean` removes them.",
            one_line(exc),
        )
