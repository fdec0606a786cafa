"""Scale-out on Prefect's workers: a Prefect server on PostgreSQL, two process workers on one
work pool, six runs of an orchestration submitted at once.

Both workers take runs, every run completes exactly once, no container outlives its run, and a
tag concurrency limit on a workstream (`workstream:disk`, 1 slot) holds across both workers:
no two of its task runs overlap in time, from whichever run and worker they came.

PostgreSQL is Debian's (`postgresql`, installed by scripts/setup): a throwaway cluster made
with `initdb` in a temp dir, on 127.0.0.1 with a port of its own, run as the `postgres` user
when the tests run as root.
"""

from __future__ import annotations

import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from conftest import BackgroundProcesses
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import TaskRun
from prefect.settings import PREFECT_API_URL, temporary_settings
from support import postgres_cluster, process_pool, start_prefect_server, stop_process_group

import toka_agents
from toka_agents.sandbox.owners import LABEL_OWNER

RUNS = 6
POOL = "toka-scale"
WORKSTREAM_LIMIT = "workstream:disk"
# Two agents of the `disk` workstream that would run side by side in every run, and one that
# needs them both: with one slot on `workstream:disk`, the two queue across runs and workers.
CONFIG = """
name: scale-out
max_concurrent_agents: 4
defaults:
  limits: {memory: 64MB, timeout: 30s, pids: 16}
agents:
  - name: left
    workstream: disk
    tasks:
      - name: write
        code: {language: python, source: "import time; time.sleep(0.3); print('left')"}
  - name: right
    workstream: disk
    tasks:
      - name: write
        code: {language: python, source: "import time; time.sleep(0.3); print('right')"}
  - name: tally
    workstream: compute
    requires: [left, right]
    tasks:
      - name: count
        code: {language: shell, source: "echo tallied"}
"""

pytestmark = pytest.mark.usefixtures("sandbox_image")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with a database `prefect`; its URL."""
    with postgres_cluster() as url:
        yield url


@pytest.fixture(scope="module")
def postgres_api(postgres_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on PostgreSQL; the API URL, set for this process."""
    home = tmp_path_factory.mktemp("prefect-pg-home")
    server, url = start_prefect_server(
        home / "server.log",
        {
            "PREFECT_HOME": str(home),
            "PREFECT_API_DATABASE_CONNECTION_URL": postgres_url,
            "PREFECT_UI_ENABLED": "false",
        },
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        stop_process_group(server)


def ran_by(worker_log: str) -> list[UUID]:
    """The flow runs whose process this worker started and that began: each one's process
    prints its page's address through the worker's output. (A worker also logs "submitting"
    for runs another worker wins; the server lets only one of them move a run to Pending.)"""
    return [
        UUID(found) for found in re.findall(r"View at \S+/runs/flow-run/([0-9a-f-]{36})", worker_log)
    ]


def overlaps(task_runs: list[TaskRun]) -> list[tuple[str, str]]:
    """Pairs of task runs whose [start, end] intervals overlap."""
    timed = sorted(task_runs, key=lambda run: run.start_time)  # type: ignore[arg-type, return-value]
    return [
        (f"{earlier.name} {earlier.flow_run_id}", f"{later.name} {later.flow_run_id}")
        for earlier, later in zip(timed, timed[1:], strict=False)
        if later.start_time < earlier.end_time  # type: ignore[operator]
    ]


def test_two_workers_on_postgres_share_six_runs_and_a_workstream_limit(
    postgres_api, docker_client, tmp_path
):
    config = tmp_path / "scale-out.yaml"
    config.write_text(CONFIG)
    process_pool(POOL)
    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=WORKSTREAM_LIMIT, concurrency_limit=1)
    deployment_id = toka_agents.deploy(config, name="scale-out", work_pool=POOL)
    with get_client(sync_client=True) as client:
        flow_run_ids = [client.create_flow_run_from_deployment(deployment_id).id for _ in range(RUNS)]

    # Two workers on the pool, as on two machines: each takes at most 3 runs at a time.
    workers = BackgroundProcesses(tmp_path)
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {"PREFECT_API_URL": postgres_api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    flow_run_pids: set[int] = set()
    try:
        for name in ("worker-a", "worker-b"):
            workers.start(
                name, [prefect, "worker", "start", "--pool", POOL, "--name", name, "--limit", "3"], env
            )
        by_id = FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        deadline = time.monotonic() + 240
        with get_client(sync_client=True) as client:
            while True:
                # The processes that could own sandbox containers: every process of the family.
                flow_run_pids.update(workers.marked_pids())
                flow_runs = client.read_flow_runs(flow_run_filter=by_id)
                if all(run.state and run.state.is_final() for run in flow_runs):
                    break
                assert time.monotonic() < deadline, (
                    [(run.name, run.state_name) for run in flow_runs],
                    workers.log("worker-a")[-2000:],
                    workers.log("worker-b")[-2000:],
                )
                time.sleep(0.5)
            task_runs = client.read_task_runs(flow_run_filter=by_id)
    finally:
        workers.stop_all()

    # Every run completed, once.
    assert len(flow_runs) == RUNS
    for run in flow_runs:
        assert run.state and run.state.is_completed(), (run.name, run.state)
        assert run.state.message == "3 agents, 3 of 3 tasks done", run.state.message
        assert run.run_count == 1, (run.name, run.run_count)
    # Both workers took runs, and no run was taken twice.
    taken = {name: ran_by(workers.log(name)) for name in ("worker-a", "worker-b")}
    assert all(taken.values()), {name: len(ids) for name, ids in taken.items()}
    assert sorted(taken["worker-a"] + taken["worker-b"]) == sorted(flow_run_ids)
    # Each agent task ran once per run.
    names = sorted((str(run.flow_run_id), run.name) for run in task_runs)
    assert names == sorted(
        (str(i), n) for i in flow_run_ids for n in ("left/write", "right/write", "tally/count")
    )
    assert all(run.state and run.state.is_completed() for run in task_runs)

    # The limit held across both workers: `disk` task runs never overlap. (The `compute` ones
    # have no limit, and `left` and `right` of one run would run side by side without it.)
    disk = [run for run in task_runs if WORKSTREAM_LIMIT in run.tags]
    assert len(disk) == 2 * RUNS
    assert overlaps(disk) == []

    # No container outlived its run: none is owned by a process of the workers' family.
    host = socket.gethostname()
    left = [
        container["Id"][:12]
        for container in docker_client.api.containers(all=True, filters={"label": LABEL_OWNER})
        if (owner := container["Labels"][LABEL_OWNER].rsplit(":", 2))[0] == host
        and int(owner[1]) in flow_run_pids
    ]
    assert left == [], f"containers left behind: {left}"
