"""prefect.yaml: `prefect deploy --all` makes its deployments (one on a cron schedule), and a
process worker started as README says runs both."""

from __future__ import annotations

import json
from uuid import UUID

import pytest
from conftest import EXAMPLES, run_prefect
from own_runs import read_all
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from support import wait_final

from toka_agents import load, plan
from toka_agents.config.inputs import inputs_schema

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")

FAILING = """name: breaks
agents:
  - name: bad
    tasks: [{name: boom, code: {language: shell, source: "echo the disk is full >&2; exit 3"}}]
"""
"""An inline config (the run form's `config`) whose one task fails."""


def test_prefect_yaml_deploys_and_a_worker_runs_it(prefect_api, tmp_path):
    created = run_prefect(
        "work-pool", "create", "toka", "--type", "process", "--overwrite", api=prefect_api
    )
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = run_prefect("--no-prompt", "deploy", "--all", api=prefect_api)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    with get_client(sync_client=True) as client:
        quickstart = client.read_deployment_by_name("toka-orchestrate/quickstart")
        nightly = client.read_deployment_by_name("toka-orchestrate/nightly-check")
    assert quickstart.work_pool_name == nightly.work_pool_name == "toka"
    assert nightly.parameters == {"paths": ["flows/examples/nightly-check.yaml"]}
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    assert nightly.schedules[0].active and not nightly.paused
    # The UI's run form: titled, described fields from the flow in toka_agents.orchestration.deployments.
    form = quickstart.parameter_openapi_schema["properties"]
    assert form["optional_dependencies"]["enum"] == ["config", "ignore", "order"]
    assert all(field.get("description") for field in form.values())
    # repo-review's form asks for its config's inputs, as the config declares them.
    with get_client(sync_client=True) as client:
        review = client.read_deployment_by_name("repo-review/repo-review")
    schema = review.parameter_openapi_schema
    declared = plan(load(EXAMPLES / "repo-review.yaml"), require_inputs=False).declared_inputs
    wanted = inputs_schema(declared, {})
    for name, field in wanted["properties"].items():
        shown = {
            key: schema["properties"][name].get(key)
            for key in ("title", "description", "enum", "default")
        }
        assert shown == {key: field.get(key) for key in shown}, name
    assert schema["required"] == wanted["required"] == ["repo"]

    # Both deployments run, as README says: `prefect deployment run`, then a worker on the pool;
    # and the quickstart's deployment once more with a config of the form's whose task fails.
    flow_run_ids = {}
    for key, name, form in (
        ("quickstart", "quickstart", ()),
        ("nightly-check", "nightly-check", ()),
        ("failing", "quickstart", ("--param", "paths=[]", "--param", f"config={json.dumps(FAILING)}")),
        ("refused", "quickstart", ("--param", 'agents=["nope"]')),
    ):
        started = run_prefect(
            "deployment", "run", f"toka-orchestrate/{name}", *form, api=prefect_api, cwd=tmp_path
        )
        assert started.returncode == 0, started.stdout + started.stderr
        flow_run_ids[key] = UUID(
            next(line for line in started.stdout.splitlines() if "UUID" in line).split()[-1]
        )

    # The worker starts in another directory: the deployments' pull step brings it here. (With
    # a --limit, a --run-once worker waits for the runs it started before it exits.)
    worker = run_prefect(
        "worker", "start", "--pool", "toka", "--run-once", "--limit", "4", api=prefect_api, cwd=tmp_path
    )
    assert worker.returncode == 0, worker.stdout + worker.stderr

    quickstart_run = wait_final(flow_run_ids["quickstart"], 60)
    nightly_run = wait_final(flow_run_ids["nightly-check"], 60)
    assert quickstart_run.state is not None and quickstart_run.state.is_completed(), (
        quickstart_run.state,
        worker.stdout[-3000:],
    )
    assert quickstart_run.state.message == "5 agents, 6 of 6 tasks done"
    assert quickstart_run.parameters == {"paths": ["flows/examples/quickstart.yaml"]}
    assert nightly_run.state is not None and nightly_run.state.is_completed(), (
        nightly_run.state,
        worker.stdout[-3000:],
    )
    assert nightly_run.state.message == "2 agents, 2 of 2 tasks done"

    # A failed run's log says its reason, in one line: a task's failure, or a form whose agent
    # the config lacks. Its engine, in the worker's process, raises the run's own reason, as
    # Prefect does for any failed flow (not a TypeError about the run's summary, nor FailedRun),
    # and toka-agents keeps the traceback it would log out of the run's log.
    said = worker.stdout + worker.stderr
    for key, reason in [
        ("failing", "1 task(s) failed: bad/boom: exit code 3: the disk is full"),
        (
            "refused",
            "1 config problem(s): <run parameters>: agents: 'nope' is not an agent of quickstart "
            "(its agents: generate, describe, outliers, report, review)",
        ),
    ]:
        failed_run = wait_final(flow_run_ids[key], 60)
        assert failed_run.state is not None and failed_run.state.is_failed(), failed_run.state
        assert failed_run.state.message == reason
        with get_client(sync_client=True) as client:
            logs = read_all(
                client.read_logs,
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_ids[key]])),
            )
        messages = [log.message for log in logs]
        assert f"Finished in state Failed({reason!r})" in messages, messages
        said += "\n".join(messages)
    assert "Traceback" not in said and "RunSummary(" not in said, said
