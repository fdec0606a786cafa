"""The Python API for runs: load, plan and run an orchestration as a Prefect flow run."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect.states import State

from toka_agents.config import load
from toka_agents.config.models import LlmOverrides
from toka_agents.errors import ExecutionError
from toka_agents.executor import TaskOutcome
from toka_agents.orchestration.flow import RunOptions, compile_flow
from toka_agents.orchestration.reporting import RunNotCompleted, RunSummary
from toka_agents.orchestration.resuming import resume_flow_run
from toka_agents.orchestration.runs import wait_until_recorded
from toka_agents.planning import OptionalMode, Plan, plan
from toka_agents.readiness import llm_refusal


@dataclass
class RunResult:
    """How a run ended: its Prefect state, flow run, workspace, and every task's outcome."""

    state: State
    flow_run_id: UUID | None
    workspace: Path | None
    outcomes: list[TaskOutcome]
    warnings: list[str] = field(default_factory=list)
    """What the run warns of: an output it did not find, a workspace it could not archive."""

    @property
    def ok(self) -> bool:
        return self.state.is_completed()


def run(
    *paths: str | Path,
    inputs: Mapping[str, Any] | None = None,
    conditions: Collection[str] = (),
    dry_run: bool = False,
    max_concurrent_agents: int | None = None,
    optional_dependencies: OptionalMode | None = None,
    allow_unsandboxed: bool | None = None,
    llm_overrides: LlmOverrides | None = None,
    workspace_root: Path | None = None,
    resume: UUID | str | None = None,
) -> RunResult:
    """Load, plan and run an orchestration as a Prefect flow run; raise `ConfigError` on bad config
    or bad `inputs` (the values of the config's `inputs:`, by name).

    `resume`: the id of a failed, cancelled or crashed run of the same config, to run again
    under that id, its completed tasks and model calls taken from Prefect's result storage."""
    planned = plan(
        load(*paths),
        conditions=conditions,
        optional_dependencies=optional_dependencies,
        max_concurrent_agents=max_concurrent_agents,
        allow_unsandboxed=allow_unsandboxed,
        llm_overrides=llm_overrides,
        inputs=inputs,
    )
    return run_plan(planned, RunOptions(workspace_root=workspace_root, dry_run=dry_run, resume=resume))


def run_plan(planned: Plan, options: RunOptions | None = None) -> RunResult:
    """Run a plan as a flow run, or as a new attempt of the flow run `options.resume`; raise
    `ExecutionError` first if it cannot run its LLM tasks or cannot resume that run."""
    chosen = options or RunOptions()
    refusal = llm_refusal(planned, dry_run=chosen.dry_run)
    if refusal is not None:
        raise ExecutionError(refusal)
    flow = compile_flow(planned, chosen)
    state = flow(return_state=True) if chosen.resume is None else resume_flow_run(flow, chosen.resume)
    if state.state_details.flow_run_id is not None:
        wait_until_recorded(state.state_details.flow_run_id)
    summary = state.result(raise_on_failure=False) if state.data is not None else None
    if isinstance(summary, RunNotCompleted):
        summary = summary.summary
    if not isinstance(summary, RunSummary):
        summary = RunSummary(workspace=None, outcomes=[])
    return RunResult(
        state=state,
        flow_run_id=state.state_details.flow_run_id,
        workspace=Path(summary.workspace) if summary.workspace else None,
        outcomes=summary.outcomes,
        warnings=summary.warnings,
    )
