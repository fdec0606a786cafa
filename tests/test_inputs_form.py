"""A deployment of a config that declares inputs: its run form's fields are those inputs, its
runs take their values from the form (or the deployment's defaults), and a value the config
does not allow fails the run at once, naming it."""

from __future__ import annotations

import json

import pytest
from conftest import EXAMPLES, run_prefect, run_toka
from own_runs import read_all
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from support import process_pool, wait_final
from test_deploy_api import start_run

import toka_agents

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

INPUTS = EXAMPLES / "inputs.yaml"


def test_the_run_form_asks_for_the_configs_inputs_and_runs_take_them(prefect_api, tmp_path):
    pool = process_pool("toka-inputs-form")
    deployment_id = toka_agents.deploy(
        INPUTS, name="with-inputs", work_pool=pool, inputs={"topic": "tides"}
    )
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
    field = deployment.parameter_openapi_schema["properties"]["inputs"]
    assert field["type"] == "object" and field["title"] == "Inputs"
    assert list(field["properties"]) == ["topic", "days", "mode", "tags"]
    assert field["properties"]["topic"] == {
        "title": "topic",
        "description": "What the team researches.",
        "position": 0,
        "type": "string",
        "default": "tides",  # the deployment's value
    }
    assert (
        field["properties"]["days"]["type"] == "integer" and field["properties"]["days"]["default"] == 3
    )
    assert field["properties"]["mode"]["enum"] == ["fast", "thorough"]
    assert field["properties"]["tags"]["type"] == "array"
    assert field["required"] == []  # the deployment gives `topic`
    assert deployment.parameters["inputs"] == {"topic": "tides"}

    # A custom run's values, as the form sends them; the server checks them against the form.
    taken = start_run(
        "toka-orchestrate/with-inputs",
        prefect_api,
        tmp_path,
        "--param",
        "inputs=" + json.dumps({"topic": "solar power", "days": 2, "mode": "thorough", "tags": ["a"]}),
    )
    refused = start_run(
        "toka-orchestrate/with-inputs",
        prefect_api,
        tmp_path,
        "--param",
        'inputs={"topic": "x", "topc": "y"}',  # a run's `inputs` replaces the deployment's whole
    )
    for _ in range(2):
        worker = run_prefect(
            "worker", "start", "--pool", pool, "--run-once", api=prefect_api, cwd=tmp_path
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr
    ran = wait_final(taken, 60)
    assert ran.state is not None and ran.state.is_completed(), ran.state
    with get_client(sync_client=True) as client:
        found = read_all(
            client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[taken]))
        )
    logs = [log.message for log in found]
    assert "headline: solar power, 2 days, thorough" in logs
    assert "48 hours of data, 1 tag(s)" in logs

    failed = wait_final(refused, 60)
    assert failed.state is not None and failed.state.is_failed(), failed.state
    assert "input 'topc' is not declared (declared: days, mode, tags, topic)" in failed.state.message
    assert "required" not in failed.state.message


def test_toka_deploy_takes_inputs_and_refuses_bad_ones_in_one_line_each(prefect_api):
    pool = process_pool("toka-inputs-form")
    env = {"PREFECT_API_URL": prefect_api}
    made = run_toka(
        "deploy", str(INPUTS), "--name", "cli-inputs", "--work-pool", pool, "--input", "days=4", env=env
    )
    assert made.returncode == 0, made.stdout + made.stderr
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("toka-orchestrate/cli-inputs")
    assert deployment.parameters["inputs"] == {"days": 4}  # stored as its type
    assert deployment.parameter_openapi_schema["properties"]["inputs"]["required"] == ["topic"]

    # A scheduled run could give no value for a required input: refused, as is a bad value.
    refused = run_toka(
        "deploy", str(INPUTS), "--name", "bad", "--work-pool", pool, "--cron", "0 3 * * *",
        "--input", "days=many", "--input", "mode=slow", env=env,
    )  # fmt: skip
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert any(line.endswith("input 'topic' is required") for line in lines), lines
    assert any(line.endswith("input 'days': 'many' is not an integer") for line in lines), lines
    assert any(
        "input 'mode': 'slow' is not one of the choices: fast, thorough" in line for line in lines
    )
