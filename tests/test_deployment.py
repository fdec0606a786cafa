"""prefect.yaml: `prefect deploy` and a process worker run the quickstart deployment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

import pytest
from conftest import REPO
from prefect import get_client

PREFECT = str(Path(sys.executable).with_name("prefect"))
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")


def prefect(
    *args: str, api: str, cwd: Path = REPO, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREFECT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PREFECT_API_URL": api, "PWD": str(cwd)},
    )


def test_prefect_yaml_deploys_and_a_worker_runs_it(prefect_api, tmp_path):
    created = prefect("work-pool", "create", "toka", "--type", "process", "--overwrite", api=prefect_api)
    assert created.returncode == 0, created.stdout + created.stderr
    deployed = prefect("--no-prompt", "deploy", "--all", api=prefect_api)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr

    started = prefect("deployment", "run", "toka-orchestrate/quickstart", api=prefect_api, cwd=tmp_path)
    assert started.returncode == 0, started.stdout + started.stderr
    flow_run_id = UUID(next(line for line in started.stdout.splitlines() if "UUID" in line).split()[-1])

    # The worker starts in another directory: the deployment's pull step brings it here.
    worker = prefect("worker", "start", "--pool", "toka", "--run-once", api=prefect_api, cwd=tmp_path)
    assert worker.returncode == 0, worker.stdout + worker.stderr

    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.state.message == "5 agents, 6 of 6 tasks done"
    assert flow_run.parameters == {"paths": ["flows/examples/quickstart.yaml"]}
