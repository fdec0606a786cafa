# ruff: noqa: F811  (the fixtures `browser`, `page` and `ui_worker` are imported from test_ui_browser)
"""A deployment of a config that declares inputs, run from the Prefect UI's form in a real
browser (Debian's Chromium, driven by Playwright) against the session's `prefect server start`
and the process worker of the pool `toka-ui`.

Prefect 3.9's UI draws the `inputs` parameter (an object with `properties`) as a card of fields
inside the "Inputs" field, one per declared input, with its title, description, type and
default (not as a JSON editor); a choice is a select of its values. A user leaves the required
`topic` empty and is told so, then fills topic, days and mode and submits; the run completes
on the worker, and its task run's log (read through the API and on its page) holds the values.
Screenshots land in the test's tmp dir and in `test-output/ui/` (git-ignored).
"""

from __future__ import annotations

import time
from uuid import UUID

import pytest
from own_runs import read_all
from playwright.sync_api import Locator, Page, expect
from prefect import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
from support import wait_final
from test_ui_browser import (  # noqa: F401
    browser,
    open_custom_run,
    open_tab,
    page,
    runs_of,
    shot,
    submit_run_form,
    toka_deploy,
    ui_of,
    ui_worker,
)

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_run_containers")

HEADLINE = "headline: tidal power, 5 days, thorough"
LOGS_WITHIN = 60.0
"""Seconds a run's logs may take to arrive once it has ended (they are shipped asynchronously)."""


def field(page: Page, group: Page | Locator, label: str) -> Locator:
    """The form field inside `group` whose label reads exactly `label`."""
    return group.locator(".schema-form-property").filter(
        has=page.locator(".schema-form-property__label").get_by_text(label, exact=True)
    )


def run_logs(flow_run_id: UUID, *wanted: str) -> list[str]:
    """The messages logged in the flow run (its task runs' too), once each of `wanted` is
    among them or LOGS_WITHIN has passed."""
    of_run = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
    deadline = time.monotonic() + LOGS_WITHIN
    with get_client(sync_client=True) as client:
        while True:
            messages = [log.message for log in read_all(client.read_logs, log_filter=of_run)]
            if all(text in messages for text in wanted) or time.monotonic() > deadline:
                return messages
            time.sleep(0.5)


def test_the_run_form_asks_for_the_configs_inputs_and_the_run_gets_what_was_filled_in(
    prefect_api, ui_worker, page, tmp_path
):
    deployment_id = toka_deploy(prefect_api, "inputs.yaml", "--name", "ui-inputs-form")
    open_custom_run(page, prefect_api, deployment_id)

    # The Inputs field is a group of fields, one per input of the config, in its order: the
    # input's title and description, its type's control, its default. `topic` has no default
    # and the deployment sets none, so it alone is not "(Optional)".
    inputs = field(page, page, "Inputs (Optional)")
    inputs.get_by_text("The values of the config's").wait_for()
    labels = inputs.locator(".schema-form-properties .schema-form-property__label")
    expect(labels).to_have_text(["topic", "days (Optional)", "mode (Optional)", "tags (Optional)"])
    topic, days, mode, tags = (
        field(page, inputs, label)
        for label in ("topic", "days (Optional)", "mode (Optional)", "tags (Optional)")
    )
    for shown, description in (
        (topic, "What the team researches."),
        (days, "How many days of data."),
        (mode, "How deep to go."),
        (tags, "Labels for the report."),
    ):
        expect(shown.locator(".schema-form-property__description")).to_have_text(description)
    expect(topic.locator("textarea")).to_have_value("")
    expect(days.locator("input[type=number]")).to_have_value("3")
    expect(mode.locator(".p-select-button__value")).to_have_text("fast")
    expect(tags.get_by_text("No items in this list")).to_be_visible()
    # A card of fields, not the JSON editor Prefect draws for an object without `properties`.
    expect(inputs.locator(".schema-form-property-object")).to_have_count(1)
    expect(inputs.locator(".json-input")).to_have_count(0)
    shot(page, tmp_path, "inputs-form")

    # Submitted without a topic, the form says what is missing and starts nothing.
    page.get_by_role("button", name="Submit").click()
    expect(topic.get_by_text("'topic' is a required property")).to_be_visible()
    assert runs_of(deployment_id) == []
    topic.scroll_into_view_if_needed()
    shot(page, tmp_path, "topic-required")

    topic.locator("textarea").fill("tidal power")
    days.locator("input[type=number]").fill("5")
    # The select's popover opens from its chevron: in this headless Chromium a click on the
    # select's text opens and at once closes it (so do the UI's other selects).
    mode.locator(".p-select-button__icon").click()
    expect(page.get_by_role("option")).to_have_text(["fast", "thorough"])  # the config's choices
    page.get_by_role("option", name="thorough", exact=True).click()
    expect(mode.locator(".p-select-button__value")).to_have_text("thorough")
    expect(topic.get_by_text("'topic' is a required property")).to_have_count(0)
    inputs.scroll_into_view_if_needed()
    shot(page, tmp_path, "inputs-filled")
    submit_run_form(page, deployment_id)

    [submitted] = runs_of(deployment_id)
    assert submitted.parameters["inputs"] == {
        "topic": "tidal power",
        "days": 5,  # a number, as the form's integer field sends it
        "mode": "thorough",
        "tags": [],
    }
    flow_run = wait_final(submitted.id, 180)
    assert flow_run.state is not None and flow_run.state.is_completed(), (
        flow_run.state,
        ui_worker.log("worker")[-3000:],
    )
    logs = run_logs(flow_run.id, HEADLINE)
    assert HEADLINE in logs, logs
    for line in ("TOKA_INPUT_TOPIC=tidal power", "TOKA_INPUT_DAYS=5", "TOKA_INPUT_MODE=thorough"):
        assert line in logs, logs
    assert "120 hours of data, 0 tag(s)" in logs

    # On the run's pages: its parameters, and the task run's log with the values in it.
    page.goto(f"{ui_of(prefect_api)}/runs/flow-run/{flow_run.id}")
    expect(page.locator(".page-heading .state-badge")).to_have_text("Completed", timeout=30_000)
    open_tab(page, "Parameters")
    page.get_by_text('"tidal power"').first.wait_for()
    shot(page, tmp_path, "run-parameters")

    with get_client(sync_client=True) as client:
        [task_run] = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id]))
        )
    assert task_run.name == "brief/print-inputs"
    page.goto(f"{ui_of(prefect_api)}/runs/task-run/{task_run.id}")
    expect(page.get_by_text(HEADLINE).first).to_be_visible()
    expect(page.get_by_text("TOKA_INPUT_MODE=thorough").first).to_be_visible()
    shot(page, tmp_path, "task-run-log")
