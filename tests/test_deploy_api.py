"""`toka_agents.deploy` and `serve` and `toka deploy`, against the session's Prefect server:
deployments are created and updated in place, schedules and pauses are kept, bad input is one
clear error, a process worker runs a deployment, and a served deployment runs a started run."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from uuid import UUID

import pytest
from conftest import EXAMPLES, REPO, run_prefect, run_toka
from prefect import get_client
from prefect.exceptions import ObjectNotFound, PrefectHTTPStatusError
from support import process_pool, wait_final

import toka_agents
from toka_agents.errors import ConfigError, TokaError

QUICKSTART = EXAMPLES / "quickstart.yaml"


def make_pool(name: str, api: str) -> str:
    return process_pool(name)


def start_run(full_name: str, api: str, cwd: Path, *params: str) -> UUID:
    started = run_prefect("deployment", "run", full_name, *params, api=api, cwd=cwd)
    assert started.returncode == 0, started.stdout + started.stderr
    return UUID(next(line for line in started.stdout.splitlines() if "UUID" in line).split()[-1])


def test_deploy_creates_then_updates_the_same_deployment(prefect_api):
    pool = make_pool("toka-deploy-api", prefect_api)
    first = toka_agents.deploy(
        QUICKSTART, name="api-made", cron="0 3 * * *", work_pool=pool, paused=True
    )
    with get_client(sync_client=True) as client:
        made = client.read_deployment(first)
    assert made.name == "api-made" and made.work_pool_name == pool
    assert made.paused
    assert [s.schedule.cron for s in made.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    assert made.parameters == {"paths": [str(QUICKSTART.resolve())]}
    assert made.entrypoint == "toka_agents.orchestration.deployments.orchestrate"
    form = made.parameter_openapi_schema["properties"]
    assert form["max_concurrent_agents"]["title"] == "Max concurrent agents"
    # The server holds runs to the form's schema (as the UI's form does) before any run exists.
    with get_client(sync_client=True) as client, pytest.raises(PrefectHTTPStatusError, match="409"):
        client.create_flow_run_from_deployment(first, parameters={"max_concurrent_agents": -1})

    second = toka_agents.deploy(
        QUICKSTART,
        name="api-made",
        interval=timedelta(minutes=10),
        work_pool=pool,
        parameters={"dry_run": True, "agents": ["report"]},
    )
    assert second == first
    with get_client(sync_client=True) as client:
        updated = client.read_deployment(first)
    assert not updated.paused
    assert [s.schedule.interval for s in updated.schedules] == [timedelta(minutes=10)]  # type: ignore[union-attr]
    assert updated.parameters["dry_run"] is True and updated.parameters["agents"] == ["report"]


def test_deploy_inside_a_running_event_loop_returns_the_id(prefect_api):
    """In Jupyter (or under Playwright's sync API) an event loop runs; Prefect's `apply` then
    hands back a coroutine unless told to stay synchronous."""
    pool = make_pool("toka-deploy-api", prefect_api)

    async def deploy_from_a_notebook() -> object:
        return toka_agents.deploy(QUICKSTART, name="from-a-loop", work_pool=pool, paused=True)

    deployment_id = asyncio.run(deploy_from_a_notebook())
    assert isinstance(deployment_id, UUID), deployment_id
    with get_client(sync_client=True) as client:
        assert client.read_deployment(deployment_id).name == "from-a-loop"


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"cron": "0 3 * * *", "interval": 60}, TokaError, "give one schedule, not cron and interval"),
        ({"cron": "every night"}, TokaError, "cron 'every night' is not a valid schedule"),
        ({"interval": -5}, TokaError, "interval -5 is not a valid schedule: it must be more than 0"),
        ({"rrule": "sometimes"}, TokaError, "rrule 'sometimes' is not a valid schedule"),
        ({"name": ""}, TokaError, "deployment name ''"),
        ({"work_pool": "no-such-pool"}, TokaError, "work pool 'no-such-pool' does not exist"),
        ({"parameters": {"max_concurrent_agents": -2}}, ConfigError, "max_concurrent_agents: -2"),
        ({"parameters": {"colour": "red"}}, ConfigError, "colour: no such parameter"),
        ({"paths": ("missing.yaml",)}, ConfigError, "missing.yaml"),
    ],
)
def test_deploy_refuses_bad_input_with_one_line(prefect_api, arguments, error, message):
    pool = make_pool("toka-deploy-api", prefect_api) if "work_pool" not in arguments else None
    paths = arguments.pop("paths", (QUICKSTART,))
    chosen = {"name": "refused", "work_pool": pool, **arguments}
    with pytest.raises(error) as raised:
        toka_agents.deploy(*paths, **chosen)
    assert message in str(raised.value)
    assert len(str(raised.value).splitlines()) == 1
    with get_client(sync_client=True) as client, pytest.raises(ObjectNotFound):
        client.read_deployment_by_name("toka-orchestrate/refused")


@pytest.mark.usefixtures("sandbox_image")
def test_a_process_worker_runs_a_deployment_made_by_deploy(prefect_api, tmp_path):
    pool = make_pool("toka-deploy-worker", prefect_api)
    toka_agents.deploy(QUICKSTART, name="for-worker", work_pool=pool)
    # The run form's fields from the command line, as README says: only `report` and what it needs.
    flow_run_id = start_run(
        "toka-orchestrate/for-worker", prefect_api, tmp_path, "--param", 'agents=["report"]'
    )
    # The worker runs from another directory: the module entrypoint and absolute paths suffice.
    worker = run_prefect("worker", "start", "--pool", pool, "--run-once", api=prefect_api, cwd=tmp_path)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    flow_run = wait_final(flow_run_id, 30)
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.state.message == "4 agents, 5 of 5 tasks done"


SERVE = """
import toka_agents
toka_agents.serve("flows/examples/nightly-check.yaml", name="served", interval=3600)
"""


@pytest.mark.usefixtures("sandbox_image")
def test_serve_runs_a_started_run_without_a_work_pool(prefect_api, tmp_path):
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-c", SERVE],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        with get_client(sync_client=True) as client:
            while True:
                try:
                    served = client.read_deployment_by_name("toka-orchestrate/served")
                    break
                except ObjectNotFound:
                    assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
                    assert time.monotonic() < deadline, "serve made no deployment within 60 s"
                    time.sleep(0.5)
        assert served.work_pool_name is None
        assert [s.schedule.interval for s in served.schedules] == [timedelta(hours=1)]  # type: ignore[union-attr]
        flow_run_id = start_run("toka-orchestrate/served", prefect_api, tmp_path)
        flow_run = wait_final(flow_run_id, 90)
        assert flow_run.state is not None and flow_run.state.is_completed(), (
            flow_run.state,
            (tmp_path / "serve.log").read_text()[-2000:],
        )
        assert flow_run.state.message == "2 agents, 2 of 2 tasks done"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def test_toka_deploy_makes_a_scheduled_deployment_and_refuses_bad_flags(prefect_api):
    pool = make_pool("toka-deploy-cli", prefect_api)
    env = {"PREFECT_API_URL": prefect_api}
    made = run_toka(
        "deploy",
        str(QUICKSTART),
        "--name",
        "from-cli",
        "--cron",
        "30 2 * * *",
        "--work-pool",
        pool,
        env=env,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    deployment_id = UUID(re.search(r"toka-orchestrate/from-cli: (\S+)", made.stdout).group(1))  # type: ignore[union-attr]
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    assert [s.schedule.cron for s in deployment.schedules] == ["30 2 * * *"]  # type: ignore[union-attr]

    for flags, message in [
        (
            ["--name", "x", "--cron", "0 3 * * *", "--interval", "60", "--work-pool", pool],
            "give one schedule, not cron and interval",
        ),
        (["--cron", "0 3 * * *", "--work-pool", pool], "give the deployment a name: --name NAME"),
        (["--name", "x", "--work-pool", "nowhere"], "work pool 'nowhere' does not exist"),
        (["--name", "x", "--interval", "hourly"], "--interval 'hourly' is not a number of seconds"),
        (["--name", "x", "--interval", "0"], "interval 0.0 is not a valid schedule"),
    ]:
        refused = run_toka("deploy", str(QUICKSTART), *flags, env=env)
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert refused.stderr.strip().splitlines() == [refused.stderr.strip()], refused.stderr
        assert message in refused.stderr and "Traceback" not in refused.stderr
        assert refused.stderr.startswith("error: "), refused.stderr

    with socket.socket() as probe:  # a port nothing listens on: the API is away
        probe.bind(("127.0.0.1", 0))
        away = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    unreachable = run_toka("deploy", str(QUICKSTART), "--name", "x", env={"PREFECT_API_URL": away})
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith("error: cannot reach the Prefect API: ")
    assert len(unreachable.stderr.strip().splitlines()) == 1, unreachable.stderr

    helped = run_toka("deploy", "--help")
    assert "toka deploy flows/examples/quickstart.yaml --name nightly --cron" in helped.stdout


def test_the_readme_python_example_deploys(prefect_api):
    """README's "Deploying from Python" example, run as written against the session's server."""
    make_pool("toka", prefect_api)
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Deploying from Python", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]
    ran = subprocess.run(
        [sys.executable, "-c", example],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PREFECT_API_URL": prefect_api},
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("toka-orchestrate/quickstart-nightly")
    assert [s.schedule.cron for s in nightly.schedules] == ["0 3 * * *"]  # type: ignore[union-attr]
    assert str(nightly.id) in ran.stdout
