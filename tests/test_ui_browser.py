"""The Prefect UI in a real browser: Debian's Chromium, driven by Playwright, against the
session's `prefect server start` and a process worker.

A user opens the quickstart deployment, chooses Custom run, changes a field of the run form
and submits; the run's page then shows it Completed, its task runs named `agent/task`, and
the progress and summary artifacts. A deployment with a short interval schedule gets runs from
Prefect's scheduler, which the worker completes. Screenshots land in the test's tmp dir and in
`test-output/ui/` (git-ignored).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from conftest import EXAMPLES, QUICKSTART_TASKS, REPO, BackgroundProcesses, run_toka
from playwright.sync_api import Browser, Page, expect, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
from prefect import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.client.schemas.objects import FlowRun
from support import wait_final

CHROMIUM = "/usr/bin/chromium"
# DESIGN.md: what Debian's Chromium needs to run headless as root on these machines.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = REPO / "test-output" / "ui"
POOL = "toka-ui"

pytestmark = pytest.mark.usefixtures("sandbox_image")


@pytest.fixture(scope="module")
def ui_worker(
    prefect_api: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BackgroundProcesses]:
    """A process worker on the pool `toka-ui`, polling every second, at most two runs at once."""
    workers = BackgroundProcesses(tmp_path_factory.mktemp("ui-worker"))
    prefect = str(Path(sys.executable).with_name("prefect"))
    env = {"PREFECT_API_URL": prefect_api, "PREFECT_WORKER_QUERY_SECONDS": "1"}
    workers.start(
        "pool", [prefect, "work-pool", "create", POOL, "--type", "process", "--overwrite"], env
    )
    assert workers.processes[-1].wait(timeout=120) == 0, workers.log("pool")
    workers.start(
        "worker",
        [prefect, "worker", "start", "--pool", POOL, "--name", "ui-worker", "--limit", "2"],
        env,
    )
    try:
        yield workers
    finally:
        workers.stop_all()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    opened.screenshots = []  # type: ignore[attr-defined]
    console = open(tmp_path / "console.log", "w")
    opened.on("console", lambda message: console.write(f"{message.type}: {message.text}\n"))
    opened.on("requestfailed", lambda request: console.write(f"failed: {request.url}\n"))
    try:
        yield opened
    finally:
        # Whatever happened, the last view is kept: it says more than a traceback.
        shot(opened, tmp_path, "last")
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for old in SCREENSHOTS.glob(f"{request.node.name}-*"):
            old.unlink()
        for path in opened.screenshots:  # type: ignore[attr-defined]
            shutil.copy(path, SCREENSHOTS / f"{request.node.name}-{path.name}")
        context.close()
        console.close()
        shutil.copy(tmp_path / "console.log", SCREENSHOTS / f"{request.node.name}-console.log")


def shot(page: Page, directory: Path, name: str) -> Path:
    path = directory / f"{len(page.screenshots):02d}-{name}.png"  # type: ignore[attr-defined]
    page.screenshot(path=path)
    page.screenshots.append(path)  # type: ignore[attr-defined]
    return path


def ui_of(api: str) -> str:
    return api.removesuffix("/api")


def runs_of(deployment_id: UUID) -> list[FlowRun]:
    by_deployment = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(deployment_filter=by_deployment)


def submit_run_form(page: Page, deployment_id: UUID, attempts: int = 3) -> None:
    """Press the run form's Submit and wait for the UI to go to the Runs tab; pressed again,
    as a person would, when the UI says "Something went wrong" and the server made no run: the
    suite's SQLite server answers 503 while it is busy, which Prefect's client retries and its
    UI does not (a fresh clone's run waited 90 s for nothing, 92% into the suite)."""
    for _ in range(attempts):
        page.get_by_role("button", name="Submit").click()
        try:
            page.wait_for_url(re.compile(r"/deployments/deployment/.*tab=Runs"), timeout=30_000)
            return
        except PlaywrightTimeoutError:
            assert not runs_of(deployment_id), "a run was made, yet the UI did not go to it"
    raise AssertionError(f"the run form's Submit made no run in {attempts} attempts")


def toka_deploy(api: str, example: str, *flags: str) -> UUID:
    """`toka deploy` of an example on the pool `toka-ui`. (Not `toka_agents.deploy` in this
    process: Playwright's sync API runs an event loop here, in which Prefect's `apply` returns
    a coroutine instead of applying.)"""
    made = run_toka(
        "deploy", str(EXAMPLES / example), *flags, "--work-pool", POOL, env={"PREFECT_API_URL": api}
    )
    assert made.returncode == 0, made.stdout + made.stderr
    return UUID(re.search(r"toka-orchestrate/\S+: (\S+)", made.stdout).group(1))  # type: ignore[union-attr]


def open_custom_run(page: Page, api: str, deployment_id: UUID) -> None:
    """The deployment's page, then Run, then Custom run: its run form."""
    page.goto(f"{ui_of(api)}/deployments/deployment/{deployment_id}")
    page.get_by_role("button", name="Run", exact=True).click()
    page.get_by_text("Custom run").click()


def open_tab(page: Page, name: str) -> None:
    page.locator("li.p-tab", has_text=name).click()


def test_a_custom_run_from_the_ui_form_completes_and_shows_its_tasks_and_artifacts(
    prefect_api, ui_worker, page, tmp_path
):
    deployment_id = toka_deploy(prefect_api, "quickstart.yaml", "--name", "ui-custom-run")
    open_custom_run(page, prefect_api, deployment_id)

    # The run form: toka-agents' titles, not raw parameter names; one field changed.
    field = page.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label", has_text="Max concurrent agents")
    )
    field.get_by_text("Agents running at once.").wait_for()
    field.locator("input[type=number]").fill("1")
    shot(page, tmp_path, "run-form")
    submit_run_form(page, deployment_id)
    [submitted] = runs_of(deployment_id)
    flow_run = wait_final(submitted.id, 180)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        flow_run.state,
        ui_worker.log("worker")[-3000:],
    )
    assert flow_run.parameters["max_concurrent_agents"] == 1  # the form's value, not the default 0
    assert flow_run.state.message == "5 agents, 6 of 6 tasks done"

    page.reload()  # the list shows the run's final state; its name opens the run's page
    page.get_by_role("link", name=flow_run.name).first.click()
    page.wait_for_url(f"**/runs/flow-run/{flow_run.id}**")
    badge = page.locator(".page-heading .state-badge")
    expect(badge).to_have_text("Completed", timeout=30_000)
    shot(page, tmp_path, "run-graph")

    open_tab(page, "Task Runs")
    for name in QUICKSTART_TASKS:
        page.get_by_text(name, exact=True).first.wait_for()
    page.get_by_text("(6 Completed)").wait_for()
    shot(page, tmp_path, "task-runs")

    open_tab(page, "Artifacts")
    page.get_by_text("quickstart-summary", exact=True).wait_for()
    for progress in ("generate (data, critical): 1/1 tasks done", "workstream analysis: 3/3 tasks"):
        page.get_by_text(progress).first.wait_for()
    shot(page, tmp_path, "artifacts")

    page.get_by_text("quickstart-summary", exact=True).click()
    page.get_by_text("review/check-report").first.wait_for()  # the summary table, row by task
    shot(page, tmp_path, "summary-table")


def test_an_interval_schedule_gets_runs_from_the_scheduler_that_the_worker_completes(
    prefect_api, ui_worker, page, tmp_path
):
    deployment_id = toka_deploy(
        prefect_api, "nightly-check.yaml", "--name", "ui-every-5s", "--interval", "5"
    )
    try:
        # The scheduler makes runs ahead of time; the worker (at most two runs at once) takes
        # the first two. Pausing then drops the scheduled rest, and the two taken finish.
        deadline = time.monotonic() + 90
        while (
            len(
                taken := [
                    run for run in runs_of(deployment_id) if run.state and not run.state.is_scheduled()
                ]
            )
            < 2
        ):  # type: ignore[union-attr]
            assert time.monotonic() < deadline, (
                "the worker took fewer than 2 runs",
                ui_worker.log("worker")[-3000:],
            )
            time.sleep(0.5)
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)
        finished = [wait_final(run.id, 120) for run in taken]
        assert all(run.state and run.state.is_completed() for run in finished), (
            [(run.name, run.state) for run in finished],
            ui_worker.log("worker")[-3000:],
        )
        assert all(run.auto_scheduled for run in finished)  # made by the scheduler, not by hand
        assert len({run.expected_start_time for run in finished}) == len(finished)
        assert {run.state.message for run in finished} == {"2 agents, 2 of 2 tasks done"}  # type: ignore[union-attr]

        page.goto(f"{ui_of(prefect_api)}/deployments/deployment/{deployment_id}?tab=Runs")
        page.get_by_text("Completed", exact=True).nth(1).wait_for()
        shot(page, tmp_path, "scheduled-runs")
    finally:
        with get_client(sync_client=True) as client:
            client.pause_deployment(deployment_id)
            started = [
                run for run in runs_of(deployment_id) if run.state and not run.state.is_scheduled()
            ]  # type: ignore[union-attr]
            client.delete_deployment(deployment_id)
        for run in started:  # runs already taken finish and clean up after themselves
            wait_final(run.id, 60)
