# ruff: noqa: F811  (the fixtures `browser` and `page` are imported from test_ui_browser)
"""What a person reads on the Prefect UI's task run pages, in a real browser (Debian's Chromium,
driven by Playwright) against the session's `prefect server start`.

An LLM run (a malformed reply the loop recovers from, a run_code call, finish) and a code run
whose task fails run in this process first. Then each task run's page, `/runs/task-run/<id>`
(where the flow run page's task runs link to), shows its story: the model step names the tool
it asked for with its arguments, the tool step the code it ran and its exit code, the recovered
step reads Completed and says what it recovered from, and the failed code task says why in one
line, with no state repr, `NoneType` or traceback. Screenshots land in the test's tmp dir and
in `test-output/ui/` (git-ignored).
"""

from __future__ import annotations

import contextvars
import os
import re
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from conftest import LLM_KEY_ENV, _drain_prefect_workers, own_containers, write_config
from llm_server import bad_arguments, scripted_server, tool_call
from playwright.sync_api import Page, expect
from prefect.client.schemas.objects import TaskRun
from test_flows import task_runs
from test_llm_runs import WRITER, llm_config
from test_ui_browser import browser, open_tab, page, shot, ui_of  # noqa: F401

from toka_agents import run

pytestmark = pytest.mark.usefixtures("sandbox_image")

SOURCE = "print(sum(range(1, 11)))"
FAILING = """
name: ui-failing
agents:
  - name: broken
    tasks:
      - {name: exit, code: {language: shell, source: "echo working; echo the disk is full >&2; exit 3"}}
"""
NEVER_ON_A_PAGE = ("TaskOutcome(", "NoneType", "Traceback")
LOGS_WITHIN = 60.0
"""Seconds a task run's page may take to show its logs (they are shipped asynchronously)."""


def in_a_thread(fn: Callable[[], Any]) -> Any:
    """`fn()` in a thread of its own that sees this test's Prefect settings: out of reach of
    the event loop Playwright's sync API runs in this thread, in which Prefect's sync calls
    would return coroutines."""
    context = contextvars.copy_context()
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(context.run, fn).result()


@pytest.fixture(scope="module")
def stories(
    prefect_api, docker_client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, TaskRun]]:
    """The task runs of both runs, by name, once both have ended and their logs are sent."""
    directory = tmp_path_factory.mktemp("task-pages")
    key = f"sk-planted-{os.urandom(8).hex()}"  # `api_key`'s planting, for the whole module
    script = (
        bad_arguments("write_file"),
        tool_call("run_code", language="python", source=SOURCE),
        tool_call("finish", success=True, summary="Done."),
    )
    before = set(own_containers(docker_client))
    with pytest.MonkeyPatch.context() as env, scripted_server(*script, api_key=key) as server:
        env.setenv(LLM_KEY_ENV, key)
        config = llm_config(directory, server, WRITER, name="ui-llm-steps")
        llm = in_a_thread(lambda: run(config, workspace_root=directory / "llm-runs"))
    failing = write_config(directory, textwrap.dedent(FAILING), "failing.yaml")
    code = in_a_thread(lambda: run(failing, workspace_root=directory / "code-runs"))
    assert llm.ok, llm.state.message
    assert code.state.is_failed(), code.state
    _drain_prefect_workers()
    yield in_a_thread(lambda: {**task_runs(llm.flow_run_id), **task_runs(code.flow_run_id)})
    assert not set(own_containers(docker_client)) - before, "containers left behind"


def flat(shown: str) -> str:
    return " ".join(shown.split())


def open_task_run(page: Page, api: str, task_run: TaskRun, *texts: str) -> str:
    """Opens the task run's page and waits, reloading now and then, until its text holds each
    of `texts` (whitespace aside); returns that text."""
    page.goto(f"{ui_of(api)}/runs/task-run/{task_run.id}")
    heading = page.locator(".page-heading")
    expect(heading).to_contain_text(task_run.name)
    deadline = time.monotonic() + LOGS_WITHIN
    last_load = time.monotonic()
    while True:
        shown = flat(page.locator("body").inner_text())
        missing = [wanted for wanted in texts if flat(wanted) not in shown]
        if not missing:
            return shown
        assert time.monotonic() < deadline, (task_run.name, missing, shown[-3000:])
        if time.monotonic() - last_load > 5:
            page.reload()
            expect(heading).to_contain_text(task_run.name)
            last_load = time.monotonic()
        page.wait_for_timeout(500)


def badge_of(page: Page):
    return page.locator(".page-heading .state-badge")


def test_a_model_step_names_the_tool_it_asks_for_and_the_tool_step_shows_its_code_and_exit(
    prefect_api, stories, page, tmp_path
):
    asked = stories["writer/compute · model 2"]
    story = 'the model asks for run_code({"language": "python", "source": "print(sum(range(1, 11)))"})'
    shown = open_task_run(page, prefect_api, asked, story)
    expect(page.get_by_text(story).first).to_be_visible()
    assert re.search(re.escape(story) + r" \([1-9][0-9]* tokens in, [1-9][0-9]* out\)", shown), shown
    expect(badge_of(page)).to_have_text("Completed")
    shot(page, tmp_path, "model-asks-for-run-code")

    ran = stories["writer/compute · run_code 1"]
    # Where the flow run page's list of task runs leads: the page opened below.
    page.goto(f"{ui_of(prefect_api)}/runs/flow-run/{ran.flow_run_id}")
    open_tab(page, "Task Runs")
    link = page.get_by_role("link", name=ran.name, exact=True).first
    expect(link).to_have_attribute("href", f"/runs/task-run/{ran.id}")
    shown = open_task_run(
        page, prefect_api, ran, f"run_code runs python:\n{SOURCE}", "exit code 0\n--- stdout ---\n55"
    )
    expect(page.get_by_text("run_code runs python:").first).to_be_visible()
    expect(page.get_by_text("exit code 0").first).to_be_visible()
    expect(badge_of(page)).to_have_text("Completed")
    shot(page, tmp_path, "run-code-ran")


def test_a_recovered_malformed_reply_reads_completed_and_says_what_it_recovered_from(
    prefect_api, stories, page, tmp_path
):
    recovered = stories["writer/compute · model 1"]
    assert recovered.state.is_completed(), recovered.state
    shown = open_task_run(page, prefect_api, recovered, "recovered: malformed reply")
    expect(badge_of(page)).to_have_text("Completed")
    expect(page.get_by_text("recovered: malformed reply").first).to_be_visible()
    assert not any(marker in shown for marker in NEVER_ON_A_PAGE), shown[-3000:]
    shot(page, tmp_path, "recovered-step")


def test_a_failed_code_task_says_why_in_one_line_and_lists_its_usage_artifact(
    prefect_api, stories, page, tmp_path
):
    failed = stories["broken/exit"]
    assert failed.state.is_failed(), failed.state
    # Its last line has arrived: what is not on the page by then is not coming.
    shown = open_task_run(
        page,
        prefect_api,
        failed,
        "[stderr] the disk is full",
        "Finished in state Failed('exit code 3: the disk is full",
    )
    expect(badge_of(page)).to_have_text("Failed")
    expect(page.get_by_text("exit code 3: the disk is full").first).to_be_visible()
    shot(page, tmp_path, "failed-code-task")
    assert not [marker for marker in NEVER_ON_A_PAGE if marker in shown], shown[-3000:]

    open_tab(page, "Artifacts")
    expect(page.get_by_text("broken-exit-usage").first).to_be_visible()
    shot(page, tmp_path, "failed-code-task-artifacts")
