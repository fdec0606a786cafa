"""Inputs per schedule: prefect.yaml's `tides` deployment runs flows/examples/inputs.yaml on two
cron schedules whose Prefect schedule `parameters` set different `inputs`. `prefect deploy`
makes it; Prefect's scheduler makes each schedule's runs with that schedule's inputs; a process
worker runs one of each, and their logs show each schedule's topic.

The schedules fire at 06:00 and 18:00 UTC, so the next run of each is moved to now (a new
Scheduled state, as to run it early): its parameters are the ones the scheduler gave it."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from uuid import UUID

import pytest
from conftest import run_prefect
from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.objects import FlowRun
from prefect.states import Scheduled
from support import wait_final

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_run_containers")

PATHS = {"paths": ["flows/examples/inputs.yaml"]}
SCHEDULES = {
    "morning": ("0 6 * * *", {"inputs": {"topic": "morning tides", "days": 1}}),
    "evening": ("0 18 * * *", {"inputs": {"topic": "evening tides", "mode": "thorough"}}),
}
HEADLINES = {
    "morning": "headline: morning tides, 1 days, fast",
    "evening": "headline: evening tides, 3 days, thorough",
}
SCHEDULED_WITHIN = 90.0
"""Seconds the scheduler may take to make a new deployment's runs (it looks every 5 s)."""


def scheduled_runs(deployment_id: UUID) -> list[FlowRun]:
    by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        return [
            run
            for run in client.read_flow_runs(deployment_filter=by_deployment)
            if run.auto_scheduled and run.state is not None and run.state.is_scheduled()
        ]


def logs_of(flow_run_id: UUID, wanted: str, seconds: float = 60) -> list[str]:
    """The flow run's log messages once `wanted` is among them, or as they are after `seconds`
    (logs are shipped asynchronously)."""
    of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            messages = [log.message for log in client.read_logs(log_filter=of_run, limit=200)]
            if wanted in messages or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def test_each_schedule_runs_with_its_own_inputs(prefect_api, tmp_path):
    created = run_prefect(
        "work-pool", "create", "toka", "--type", "process", "--overwrite", api=prefect_api
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run_prefect("--no-prompt", "deploy", "--name", "tides", api=prefect_api)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("toka-orchestrate/tides")
    try:
        assert deployment.parameters == PATHS
        schedules = {schedule.slug: schedule for schedule in deployment.schedules}
        assert {
            slug: (schedule.schedule.cron, schedule.parameters)  # type: ignore[union-attr]
            for slug, schedule in schedules.items()
        } == SCHEDULES
        # `prefect deploy` takes the form from the flow's signature: `inputs` is one JSON
        # object there, without a field per input (`toka deploy` adds those).
        assert "properties" not in deployment.parameter_openapi_schema["properties"]["inputs"]

        # The scheduler's runs: each schedule's carry its own inputs beside the deployment's paths.
        deadline = time.monotonic() + SCHEDULED_WITHIN
        while {run.created_by.id for run in scheduled_runs(deployment.id)} != {  # type: ignore[union-attr]
            schedule.id for schedule in schedules.values()
        }:
            assert time.monotonic() < deadline, "the scheduler made no runs for both schedules"
            time.sleep(1)
        made = scheduled_runs(deployment.id)
        nexts = {}
        for slug, schedule in schedules.items():
            runs = [run for run in made if run.created_by.id == schedule.id]  # type: ignore[union-attr]
            assert runs and all(run.created_by.display_value == slug for run in runs)  # type: ignore[union-attr]
            assert all(run.parameters == {**PATHS, **SCHEDULES[slug][1]} for run in runs), [
                run.parameters for run in runs
            ]
            assert {run.expected_start_time.hour for run in runs} == {6 if slug == "morning" else 18}  # type: ignore[union-attr]
            nexts[slug] = min(runs, key=lambda run: run.expected_start_time)  # type: ignore[arg-type, return-value]

        # The next run of each, due now, run by a worker as README says (from elsewhere: the
        # pull step goes back to this checkout). With a --limit, --run-once waits for its runs.
        with get_client(sync_client=True) as client:
            for run in nexts.values():
                client.set_flow_run_state(
                    run.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True
                )
        worker = run_prefect(
            "worker", "start", "--pool", "toka", "--run-once", "--limit", "2",
            api=prefect_api, cwd=tmp_path,
        )  # fmt: skip
        assert worker.returncode == 0, worker.stdout + worker.stderr
        workspaces = set()
        for slug, run in nexts.items():
            ran = wait_final(run.id, 60)
            assert ran.state is not None and ran.state.is_completed(), (
                slug,
                ran.state,
                worker.stdout[-3000:],
            )
            assert ran.parameters["inputs"] == SCHEDULES[slug][1]["inputs"]
            logs = logs_of(run.id, HEADLINES[slug])
            assert HEADLINES[slug] in logs, (slug, logs)
            other = next(topic for topic in HEADLINES if topic != slug)
            assert HEADLINES[other] not in logs, (slug, logs)
            workspaces |= {line for line in logs if line.startswith("Workspace: ")}
        # A workspace of its own each: the scheduler's run ids are UUIDv7, alike in their first
        # digits (a clock), and a name made of those once gave both runs one workspace.
        assert len(workspaces) == 2, workspaces
    finally:
        with get_client(sync_client=True) as client:
            client.delete_deployment(deployment.id)  # and its scheduled runs
