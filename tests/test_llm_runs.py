"""LLM tasks run for real, end to end: through Prefect (the session's server) and the real Docker
sandbox, with the scripted provider of `llm_server` as the model. Each model call and each tool
call is a task run nested under its agent task's run.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES, LLM_KEY_ENV, _drain_prefect_workers, run_toka, write_config
from llm_server import OPENAI_PATH, bad_arguments, scripted_server, slow, text, tool_call
from own_runs import (
    flow_run_id_of,
    read_all,
    remove_run_containers,
    run_containers,
    wait_for_running_container,
)
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.events.filters import EventFilter, EventOccurredFilter, EventRelatedFilter
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.states import Cancelling
from test_flows import artifacts, task_runs
from test_task_logs import logged_lines

from toka_agents import LlmOverrides, run
from toka_agents.orchestration.reporting.conversation import INTERVAL as RUNNING_INTERVAL

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


def llm_config(directory: Path, server, agents: str, name: str = "llm-run", **llm: object) -> Path:
    settings = {
        "provider": "openai",
        "model": "scripted-1",
        "base_url": server.openai_base_url,
        "api_key_env": LLM_KEY_ENV,
        **llm,
    }
    body = f"name: {name}\nllm: {json.dumps(settings)}\nagents:\n" + textwrap.indent(
        textwrap.dedent(agents), "  "
    )
    return write_config(directory, body)


def model_from_environment(monkeypatch, server, api_key: str) -> None:
    """The model of an example config (which leaves `llm.model` and `base_url` unset) from the
    environment, as the official SDKs read it: the scripted server."""
    monkeypatch.setenv("OPENAI_BASE_URL", server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", api_key)
    monkeypatch.setenv("TOKA_LLM_MODEL", "model-from-env")


def prompts(server) -> list[list[dict]]:
    """The messages of each request the model server received, in order."""
    return [r.body["messages"] for r in server.requests_to(OPENAI_PATH)]


WRITER = """
- name: writer
  capabilities: [filesystem-write]
  tasks: [{name: compute, instruction: Compute the sum of 1 to 10 and write it down.}]
"""


def test_a_model_writes_code_runs_it_reads_its_output_writes_a_file_and_finishes(
    tmp_path, workspace_root, api_key
):
    script = (
        tool_call("run_code", language="python", source="print(sum(range(1, 11)))"),
        tool_call("write_file", path="sum.txt", content="55\n"),
        tool_call("read_file", path="sum.txt"),
        tool_call("finish", success=True, summary="The sum of 1 to 10 is 55; it is in sum.txt."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, WRITER), workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    [outcome] = result.outcomes
    assert outcome.status == "completed"
    assert outcome.summary == "The sum of 1 to 10 is 55; it is in sum.txt."
    assert outcome.steps == 4 and outcome.input_tokens > 0 and outcome.output_tokens > 0
    assert (result.workspace / "sum.txt").read_text() == "55\n"
    # The model read what its code printed, and what the file held.
    tool_results = [m["content"] for m in sent[-1] if m["role"] == "tool"]
    assert tool_results[:3] == ["exit code 0\n--- stdout ---\n55", "wrote 3 bytes to sum.txt", "55\n"]

    runs = task_runs(result.flow_run_id)
    agent_run = runs["writer/compute"]
    steps = {name: r for name, r in runs.items() if name.startswith("writer/compute · ")}
    assert sorted(steps) == sorted(
        [
            "writer/compute · list_files 1",  # the workspace listing for the prompt
            *(f"writer/compute · model {i}" for i in range(1, 5)),
            "writer/compute · run_code 1",
            "writer/compute · write_file 1",
            "writer/compute · read_file 1",
            "writer/compute · finish 1",
        ]
    )
    for step in steps.values():
        assert step.state.is_completed(), (step.name, step.state)
        assert {p.id for p in step.task_inputs["__parents__"]} == {agent_run.id}, step.name

    # Written while it ran (off the loop's path, at most once every INTERVAL seconds: steps
    # that came meanwhile are folded into the next), the agent task's, then once more at the
    # end, which is the last.
    versions = [a for a in artifacts(result.flow_run_id) if a.key == "writer-compute-conversation"]
    assert outcome.duration is not None
    at_most = 1 + math.ceil(outcome.duration / RUNNING_INTERVAL)
    assert 2 <= len(versions) <= 1 + at_most, (len(versions), outcome.duration)
    assert all(a.task_run_id == agent_run.id for a in versions)
    assert all(": running" in a.data for a in sorted(versions, key=lambda a: a.created)[:-1])
    conversation = max(versions, key=lambda a: a.created)
    assert conversation.data.startswith("# writer/compute: completed")
    assert (
        "The sum of 1 to 10 is 55" in conversation.data
        and "print(sum(range(1, 11)))" in conversation.data
    )


def test_a_downstream_agents_prompt_holds_its_upstream_agents_summary_and_its_spec(
    tmp_path, workspace_root, api_key
):
    agents = """
    - name: scout
      capabilities: [filesystem-write]
      outputs: [notes.md, "maps/*.txt"]
      tasks: [{name: look, instruction: Look around.}]
    - name: planner
      description: Plans the next steps from what the scout found.
      requires: [scout]
      extra:
        objectives: [{description: Make a plan, deliverable: plan.md}]
        behavioral_directives: {coordination: [Wait for the scout]}
        success_criteria: {final: [The plan names every finding]}
      tasks: [{name: plan, instruction: Make a plan., expected_output: A plan of five steps at most.}]
    """
    script = (
        tool_call("write_file", path="notes.md", content="three rooms\n"),
        tool_call("finish", success=True, summary="Found three rooms and a locked door."),
        tool_call("finish", success=True, summary="Planned."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, agents), workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    assert [o.summary for o in result.outcomes] == ["Found three rooms and a locked door.", "Planned."]
    system, user = sent[2][0]["content"], sent[2][1]["content"]
    # The summary, and the files of the scout's declared outputs that it wrote.
    assert "- scout: Found three rooms and a locked door. (files: notes.md)\n" in user
    assert (
        "Task plan: Make a plan.\n\nYour finish summary hands on: A plan of five steps at most." in user
    )
    assert "Plans the next steps from what the scout found." in system
    assert "- description: Make a plan; deliverable: plan.md" in system
    assert "- coordination: Wait for the scout" in system
    assert "- final: The plan names every finding" in system
    assert "Found three rooms" not in json.dumps(sent[0])  # the scout's own prompt had no such thing


def test_a_malformed_reply_the_loop_recovers_from_is_no_failed_step(tmp_path, workspace_root, api_key):
    """A tool call whose arguments are not JSON is fed back to the model, which then gets it
    right: the step task run of that reply ends Completed, naming what was recovered, and its
    log holds one warning line, no traceback."""
    script = (
        bad_arguments("write_file"),
        tool_call("write_file", path="sum.txt", content="55\n"),
        tool_call("finish", success=True, summary="Wrote sum.txt."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, WRITER), workspace_root=workspace_root)
    assert result.ok, result.state.message
    [outcome] = result.outcomes
    assert outcome.steps == 3 and (result.workspace / "sum.txt").read_text() == "55\n"
    runs = task_runs(result.flow_run_id)
    recovered = runs["writer/compute · model 1"].state
    assert recovered.is_completed(), recovered
    assert recovered.message.startswith(
        "recovered: malformed reply (bad arguments): the arguments of tool call 'write_file' are not JSON"
    ), recovered.message
    assert recovered.message.endswith("; the model is asked again")
    assert all(run.state.is_completed() for run in runs.values()), {
        name: run.state.name for name, run in runs.items()
    }
    lines = logged_lines(runs["writer/compute · model 1"].id)
    assert [line for line in lines if line.startswith("malformed reply")] == [
        recovered.message.removeprefix("recovered: ")
    ]
    assert not any("Traceback" in line for line in lines), lines


def test_a_model_that_never_finishes_hits_the_step_bound_and_the_task_fails_naming_it(
    tmp_path, workspace_root, api_key
):
    with scripted_server(*[text("Thinking...")] * 3, api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, max_steps=3)
        result = run(config, workspace_root=workspace_root)
        assert len(prompts(server)) == 3
    assert not result.ok
    [outcome] = result.outcomes
    assert outcome.status == "failed" and outcome.steps == 3
    assert outcome.message == "the model did not finish within llm.max_steps 3 steps"
    assert result.state.message == (
        "1 task(s) failed: writer/compute: the model did not finish within llm.max_steps 3 steps"
    )
    agent_run = task_runs(result.flow_run_id)["writer/compute"]
    assert agent_run.state.is_failed() and "llm.max_steps 3" in agent_run.state.message


def test_run_overrides_choose_the_model_from_python(tmp_path, workspace_root, api_key):
    finish = tool_call("finish", success=True, summary="Done.")
    with scripted_server(finish, api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, base_url="http://127.0.0.1:9/v1")
        overrides = LlmOverrides(model="chosen-model", base_url=server.openai_base_url)
        result = run(config, workspace_root=workspace_root, llm_overrides=overrides)
        [request] = server.requests_to(OPENAI_PATH)
    assert result.ok, result.state.message
    assert request.body["model"] == "chosen-model"


class Background:
    """`fn()` in a thread that sees this test's Prefect settings."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.result: Any = None
        context = contextvars.copy_context()
        self.thread = threading.Thread(target=context.run, args=(self._run, fn), daemon=True)
        self.thread.start()

    def _run(self, fn: Callable[[], Any]) -> None:
        try:
            self.result = fn()
        except BaseException as exc:
            self.result = exc
            raise


def wait_for_requests(server, count: int, deadline: float = 120) -> None:
    end = time.monotonic() + deadline
    while len(server.requests_to(OPENAI_PATH)) < count:
        assert time.monotonic() < end, f"the model server did not get {count} requests"
        time.sleep(0.05)


CANCEL_WITHIN = 5.0


def test_a_cancel_in_the_middle_of_a_model_call_ends_the_loop_within_seconds(
    tmp_path, workspace_root, api_key, docker_client
):
    name = f"llm-cancel-{uuid.uuid4().hex[:8]}"
    script = (
        tool_call("run_code", language="python", source="print('step one')"),
        slow(600, tool_call("finish", success=True, summary="never")),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, name=name)
        background = Background(lambda: run(config, workspace_root=workspace_root))
        flow_run_id = flow_run_id_of(name)
        try:
            wait_for_requests(server, 2)  # the second model call hangs at the server
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
            cancelled_at = time.monotonic()
            background.thread.join(timeout=CANCEL_WITHIN)
            took = time.monotonic() - cancelled_at
            assert not background.thread.is_alive(), f"the run outlived its cancel by {took:.0f} s"
        finally:
            remove_run_containers(docker_client, flow_run_id)
            background.thread.join(timeout=60)
        assert len(server.requests_to(OPENAI_PATH)) == 2  # no model call after the cancel
    result = background.result
    assert result.state.is_cancelled(), result.state
    [outcome] = result.outcomes
    assert (outcome.status, outcome.message) == ("cancelled", "cancelled: the run was cancelled")
    assert outcome.steps == 2
    assert run_containers(docker_client, flow_run_id) == []
    runs = task_runs(flow_run_id)
    assert runs["writer/compute"].state.is_cancelled(), runs["writer/compute"].state
    assert runs["writer/compute · run_code 1"].state.is_completed()


def everything_prefect_holds(flow_run_id, since: datetime) -> str:
    """Logs, artifacts, events, task run states and results of one flow run, as one text."""
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)
    parts: list[str] = []
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
        parts += [log.message for log in logs]
        parts += [json.dumps(a.data) + (a.description or "") for a in artifacts(flow_run_id)]
        page = client.read_events(
            filter=EventFilter(
                occurred=EventOccurredFilter(
                    since=since, until=datetime.now(UTC) + timedelta(minutes=5)
                ),
                related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
            ),
            limit=50,
        )
        events = list(page.events)
        while page.next_page is not None:
            page = client.read_events_page(page.next_page)
            events += page.events
        parts += [event.model_dump_json() for event in events]
        flow_run = client.read_flow_run(flow_run_id)
        parts.append(flow_run.model_dump_json())
        for task_run in task_runs(flow_run_id).values():
            parts.append(task_run.model_dump_json())  # its state: name, message, data
    assert len(logs) > 5 and len(events) > 5, "the run left no logs or events to search"
    return "\n".join(parts)


def test_the_planted_api_key_is_nowhere_in_prefect_nor_in_the_containers(
    tmp_path, workspace_root, api_key, docker_client
):
    name = f"llm-secret-{uuid.uuid4().hex[:8]}"
    shown = "import os, time; print(sorted(os.environ.items())); time.sleep(2)"
    script = (
        tool_call("run_code", language="python", source=shown),
        # A model that got hold of the key anyway: it prints it and puts it in its summary.
        tool_call("run_code", language="shell", source=f"echo {api_key}"),
        tool_call("finish", success=True, summary=f"The key is {api_key}."),
    )
    since = datetime.now(UTC) - timedelta(seconds=5)
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, name=name)
        background = Background(lambda: run(config, workspace_root=workspace_root))
        flow_run_id = flow_run_id_of(name)
        container = wait_for_running_container(docker_client, flow_run_id)
        inspected = json.dumps(docker_client.api.inspect_container(container))
        background.thread.join(timeout=120)
        sent = prompts(server)
    result = background.result
    assert result.ok, result.state.message
    assert str(flow_run_id) in inspected and api_key not in inspected
    env_seen = next(m["content"] for m in sent[1] if m["role"] == "tool")
    assert "TOKA_AGENT" in env_seen and api_key not in env_seen
    assert result.outcomes[0].summary == "The key is [redacted]."
    held = everything_prefect_holds(flow_run_id, since) + result.state.model_dump_json()
    held += "".join(o.model_dump_json() for o in result.outcomes)
    # Results Prefect stored on disk, and the server's own files.
    for path in Path(os.environ["PREFECT_HOME"]).rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert api_key.encode() not in path.read_bytes(), path
    assert "[redacted]" in held and "TOKA_AGENT" in held
    assert api_key not in held


def test_tokas_v03_specs_run_their_78_llm_tasks_against_a_configured_provider(workspace_root, api_key):
    from test_toka_specs import V03

    from toka_agents.api import run_plan
    from toka_agents.config.models import LlmOverrides
    from toka_agents.orchestration.flow import RunOptions
    from toka_agents.planning import validate

    finish = tool_call("finish", success=True, summary="Done at once.")
    with scripted_server(*[finish] * 78, api_key=api_key) as server:
        overrides = LlmOverrides(
            provider="openai",
            model="scripted-1",
            base_url=server.openai_base_url,
            api_key_env=LLM_KEY_ENV,
        )
        checked = validate([V03], llm_overrides=overrides, max_concurrent_agents=9)
        result = run_plan(checked.plan, RunOptions(workspace_root=workspace_root))
        assert len(server.requests_to(OPENAI_PATH)) == 78
    assert result.ok, result.state.message
    assert result.state.message == "9 agents, 78 of 78 tasks done"
    # The server records task runs from the events the run sent; under load it may lag.
    _drain_prefect_workers()
    deadline = time.monotonic() + 60
    while True:
        agent_runs = [r for r in all_task_runs(result.flow_run_id) if " · " not in r.name]
        recorded = len(agent_runs) == 78 and all(r.state.is_completed() for r in agent_runs)
        if recorded or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert recorded, [(r.name, r.state.name) for r in agent_runs if not r.state.is_completed()]


def all_task_runs(flow_run_id) -> list:
    """Every task run of a flow run, steps included, page by page."""
    with get_client(sync_client=True) as client:
        return read_all(
            client.read_task_runs,
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )


def test_cli_flags_choose_the_model_for_one_run_and_the_tables_show_tokens_and_cost(
    tmp_path, prefect_api, api_key
):
    config = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: llm-cli
            llm:
              provider: anthropic
              model: configured-model
              api_key_env: {LLM_KEY_ENV}
              price_per_million_tokens: {{input: 1000, output: 2000}}
            agents:
              - name: writer
                tasks: [{{name: compute, instruction: Compute.}}]
            """
        ),
    )
    finish = tool_call("finish", success=True, summary="Done.")
    with scripted_server(finish, api_key=api_key) as server:
        result = run_toka(
            "orchestrate",
            str(config),
            "--llm-provider",
            "openai",
            "--llm-model",
            "flagged-model",
            "--llm-base-url",
            server.openai_base_url,
            "--workspace-dir",
            str(tmp_path / "runs"),
            env={"PREFECT_API_URL": prefect_api, "COLUMNS": "250"},
        )
        [request] = server.requests_to(OPENAI_PATH)
    assert result.returncode == 0, result.stdout + result.stderr
    assert request.body["model"] == "flagged-model"
    lines = result.stdout.splitlines()
    assert any("tokens in/out" in line for line in lines), result.stdout
    [tokens_line] = [line for line in lines if line.startswith("Tokens: ")]
    numbers = [int(word) for word in tokens_line.replace(",", " ").split() if word.isdigit()]
    tokens_in, tokens_out = numbers[:2]
    cost = (tokens_in * 1000 + tokens_out * 2000) / 1_000_000
    assert tokens_line == f"Tokens: {tokens_in} in, {tokens_out} out, cost {cost:.4f}"
    flow_run_id = next(line.split(": ")[1] for line in lines if line.startswith("Flow run: "))
    [summary] = [a for a in artifacts(uuid.UUID(flow_run_id)) if a.key == "llm-cli-summary"]
    [row] = summary.data if isinstance(summary.data, list) else json.loads(summary.data)
    assert row["model calls"] == "1" and row["tokens in/out"] == f"{tokens_in} / {tokens_out}"
    assert row["cost"] == f"{cost:.4f}"


def test_an_empty_finish_summary_reads_as_none_given(tmp_path, workspace_root, api_key):
    give_up = tool_call("finish", success=False, summary="")
    with scripted_server(give_up, api_key=api_key) as server:
        result = run(llm_config(tmp_path, server, WRITER), workspace_root=workspace_root)
    [outcome] = result.outcomes
    assert outcome.status == "failed"
    assert outcome.message == "the model finished without success: (no summary given)"
    assert outcome.summary == "(no summary given)"  # what the agents after it read


def test_llm_timeout_bounds_each_model_request_of_one_run(tmp_path, prefect_api, api_key):
    """`--llm-timeout` replaces the config's `llm.timeout` for one run: a reply slower than it
    is abandoned, and the task says so, naming the setting."""
    finish = tool_call("finish", success=True, summary="Done.")
    with scripted_server(slow(10, finish), api_key=api_key) as server:
        config = llm_config(tmp_path, server, WRITER, timeout="2m", max_retries=0)
        result = run_toka(
            "orchestrate",
            str(config),
            "--llm-timeout",
            "1s",
            "--workspace-dir",
            str(tmp_path / "runs"),
            env={"PREFECT_API_URL": prefect_api},
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "no answer within 1s (llm.timeout)" in result.stdout, result.stdout
    refused = run_toka("orchestrate", str(config), "--llm-timeout", "soon")
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith("error: --llm-timeout: invalid duration 'soon'"), refused.stderr


def test_bad_llm_flags_get_one_line_answers(tmp_path, prefect_api):
    config = write_config(tmp_path, "agents: [{name: a, tasks: [{name: t, instruction: Go.}]}]\n")
    result = run_toka("orchestrate", str(config), "--llm-provider", "gemini", "--llm-model", "m")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "gemini" in result.stderr
    result = run_toka("orchestrate", str(config), "--llm-model", "")
    assert (
        result.returncode == 1
        and result.stderr.strip() == "error: --llm-model and --llm-base-url cannot be empty"
    )


@pytest.fixture
def prefect_errors() -> Iterator[list[str]]:
    """What Prefect's own machinery (`prefect._internal`, which prints to the terminal without
    passing records on) logs at ERROR or above during the test."""
    said: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: said.append(f"{record.name}: {record.getMessage()}")
    logger = logging.getLogger("prefect._internal")
    logger.addHandler(handler)
    yield said
    logger.removeHandler(handler)


def test_rate_limits_hold_across_two_flow_runs_at_once(
    tmp_path, workspace_root, api_key, prefect_errors
):
    from toka_agents.config.models import LlmSettings
    from toka_agents.orchestration.llm_setup import rate_limits_of

    model = f"scripted-{uuid.uuid4().hex[:8]}"  # a limit of its own, whatever ran before
    per_minute, steps, agents = 60, 3, 4
    [limit] = rate_limits_of(LlmSettings(provider="openai", model=model, requests_per_minute=per_minute))
    burst, per_second = limit.slots, per_minute / 60
    thinkers = "".join(
        f"- {{name: thinker-{i}, tasks: [{{name: think, instruction: Think.}}]}}\n"
        for i in range(agents)
    )
    total = 2 * agents * steps
    with scripted_server(*[text("Thinking...")] * total, api_key=api_key) as server:
        configs = []
        for name in ("rate-one", "rate-two"):
            (tmp_path / name).mkdir()
            configs.append(
                llm_config(
                    tmp_path / name,
                    server,
                    thinkers,
                    name=name,
                    model=model,
                    requests_per_minute=per_minute,
                    max_steps=steps,
                )
            )
        runs = [Background(lambda c=c: run(c, workspace_root=workspace_root)) for c in configs]
        for background in runs:
            background.thread.join(timeout=300)
        arrivals = sorted(r.at for r in server.requests_to(OPENAI_PATH))
    assert len(arrivals) == total, [b.result for b in runs]
    assert all(o.steps == steps for b in runs for o in b.result.outcomes)
    # However the requests of both runs fall, no window holds more than the limit lets through:
    # its burst, plus what drains during the window (one slack for the drain's rounding).
    for first in range(len(arrivals)):
        for last in range(first, len(arrivals)):
            window = arrivals[last] - arrivals[first]
            count = last - first + 1
            assert count <= burst + per_second * window + 1, (count, window, arrivals)
    # Waiting on a limit is no error: nothing logs one.
    assert prefect_errors == []


GENERATE = """
import csv, os, random
random.seed(13)
os.makedirs("data", exist_ok=True)
with open("data/readings.csv", "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(["sensor", "hour", "value"])
    for sensor in "abc":
        for hour in range(24):
            value = random.gauss(20, 1) + (15 if sensor == "c" and hour in (5, 17) else 0)
            out.writerow([sensor, hour, round(value, 2)])
"""
CHECK = """
import csv
rows = list(csv.DictReader(open("data/readings.csv")))
assert len(rows) == 72 and all(r["value"] for r in rows)
print(len(rows), "rows, complete")
"""
ANALYSE = """
import csv, json, statistics
rows = list(csv.DictReader(open("data/readings.csv")))
sensors, outliers = {}, []
for name in "abc":
    values = [float(r["value"]) for r in rows if r["sensor"] == name]
    mean, spread = statistics.mean(values), statistics.pstdev(values)
    sensors[name] = {"count": len(values), "mean": round(mean, 2), "min": min(values), "max": max(values)}
    outliers += [
        {"sensor": name, "hour": int(r["hour"]), "value": float(r["value"])}
        for r in rows
        if r["sensor"] == name and abs(float(r["value"]) - mean) > 2 * spread
    ]
json.dump({"sensors": sensors, "outliers": outliers}, open("analysis.json", "w"))
print(json.dumps(outliers))
"""
REPORT = "# Sensor readings\n\nSensor a ...\n\nSensor b ...\n\nSensor c ...\n\n## Outliers\n\n- c at 5 and 17\n"


def test_the_llm_team_example_reads_its_endpoint_from_the_environment_and_does_real_work(
    workspace_root, api_key, monkeypatch
):
    script = (
        tool_call("run_code", language="python", source=GENERATE),
        tool_call("run_code", language="python", source=CHECK),
        tool_call(
            "finish", success=True, summary="data/readings.csv: 72 readings of a, b, c; complete."
        ),
        tool_call("run_code", language="python", source=ANALYSE),
        tool_call("finish", success=True, summary="Means near 20; sensor c has two outliers."),
        tool_call("read_file", path="analysis.json"),
        tool_call("write_file", path="report.md", content=REPORT),
        tool_call("finish", success=True, summary="report.md describes three sensors and two outliers."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        model_from_environment(monkeypatch, server, api_key)
        result = run(EXAMPLES / "llm-team.yaml", workspace_root=workspace_root)
        sent = server.requests_to(OPENAI_PATH)
    assert result.ok, result.state.message
    assert {r.body["model"] for r in sent} == {"model-from-env"} and len(sent) == 8
    assert [o.status for o in result.outcomes] == ["completed"] * 4
    assert result.outcomes[-1].stdout_tail == "report.md covers 3 sensors and 2 outliers\n"
    analysis = json.loads((result.workspace / "analysis.json").read_text())
    assert [(o["sensor"], o["hour"]) for o in analysis["outliers"]] == [("c", 5), ("c", 17)]
    reporter_prompt = sent[5].body["messages"][1]["content"]
    assert "analyst: Means near 20; sensor c has two outliers." in reporter_prompt


def test_the_key_can_come_from_a_prefect_secret_block(tmp_path, workspace_root):
    from prefect.blocks.system import Secret

    key, block = f"sk-block-{os.urandom(8).hex()}", f"toka-test-key-{uuid.uuid4().hex[:8]}"
    Secret(value=key).save(block)
    finish = tool_call("finish", success=True, summary="Done.")
    with scripted_server(finish, api_key=key) as server:
        config = llm_config(tmp_path, server, WRITER, api_key_env=None, api_key_secret=block)
        result = run(config, workspace_root=workspace_root)
        [request] = server.requests_to(OPENAI_PATH)
    assert result.ok, result.state.message
    assert request.headers["authorization"] == f"Bearer {key}"


def test_a_missing_key_variable_or_secret_block_refuses_the_run_before_any_task(tmp_path, monkeypatch):
    from toka_agents import ExecutionError
    from toka_agents.orchestration.flow import compile_flow
    from toka_agents.planning import validate

    monkeypatch.delenv(LLM_KEY_ENV, raising=False)
    with scripted_server() as server:
        config = llm_config(tmp_path, server, WRITER)
        with pytest.raises(ExecutionError) as refused:
            run(config)
        assert str(refused.value) == (
            "1 LLM task(s) of agents writer cannot reach their model: the environment variable "
            f"{LLM_KEY_ENV} (llm.api_key_env) that should hold the openai API key is not set"
        )
        printed = run_toka("orchestrate", str(config))
        assert printed.returncode == 1 and printed.stderr.strip() == f"error: {refused.value}"

        block = f"toka-absent-{uuid.uuid4().hex[:8]}"
        config = llm_config(tmp_path, server, WRITER, api_key_env=None, api_key_secret=block)
        state = compile_flow(validate([config]).plan)(return_state=True)
        assert server.requests == []
    assert state.is_failed()
    assert state.message.startswith(
        f"refused before starting any task: the Prefect Secret block {block!r} "
        "(llm.api_key_secret) cannot be read: "
    )
    assert "\n" not in state.message
    assert task_runs(state.state_details.flow_run_id) == {}
