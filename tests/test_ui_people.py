# ruff: noqa: F811  (the fixtures `browser` and `page` are imported from test_ui_browser)
"""A person answers an agent's question in the Prefect UI, in a real browser (Debian's Chromium,
driven by Playwright) against the session's `prefect server start`.

An agent with `human: ask` (scripted model server on 127.0.0.1) calls `ask_human`; its run,
started in this process, goes Paused. On the flow run's page the heading shows Paused and a
Resume button, whose dialog says which agent asks what, in which task, and has one field, the
answer. Submitted empty, the form refuses and the run stays Paused; filled and submitted, the
run resumes and completes, and the model's next request carries the answer, exactly, as the
tool's result. Screenshots land in the test's tmp dir and in `test-output/ui/` (git-ignored).
"""

from __future__ import annotations

import contextlib
from uuid import UUID

import pytest
from llm_server import scripted_server, tool_call
from playwright.sync_api import expect
from prefect import get_client
from test_llm_runs import llm_config, prompts
from test_people import ASKER, assert_the_model_read
from test_ui_browser import browser, page, shot, ui_of  # noqa: F401
from test_ui_task_pages import in_a_thread
from waiting import paused_run, run_in_background

from toka_agents import TokaError, answer

pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_run_containers")

QUESTION = "Which colour, red or blue?"
ANSWER = "Blue, please: the <b>dark</b> one."


def state_of(flow_run_id: UUID):
    """The flow run's state, read through the API."""
    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id).state


def test_a_person_answers_an_agents_question_in_the_resume_dialog_and_the_model_reads_it(
    prefect_api, page, tmp_path, workspace_root, api_key
):
    script = (
        tool_call("ask_human", question=QUESTION),
        tool_call("finish", success=True, summary="Chose blue, as asked."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = llm_config(tmp_path, server, ASKER, name="ui-asking")
        thread, results = run_in_background(config, workspace_root)
        flow_run_id = None
        try:
            flow_run_id = in_a_thread(lambda: paused_run("ui-asking"))
            page.goto(f"{ui_of(prefect_api)}/runs/flow-run/{flow_run_id}")
            heading = page.locator(".page-heading")
            expect(heading.locator(".state-badge")).to_have_text("Paused")
            shot(page, tmp_path, "paused")
            heading.get_by_role("button", name="Resume").click()

            # The dialog: who asks, in which task, the question as text; one field, the answer.
            dialog = page.get_by_role("dialog")
            expect(dialog.locator(".p-modal__title")).to_have_text("Resume Flow Run")
            expect(dialog.locator(".markdown-renderer__text--strong")).to_have_text("asker")
            expect(dialog.locator(".markdown-renderer__codespan").first).to_have_text("choose")
            expect(dialog.locator("pre code")).to_have_text(QUESTION)
            fields = dialog.locator(".schema-form-property")
            expect(fields).to_have_count(1)
            expect(fields.locator(".schema-form-property__label")).to_have_text("Answer")
            shot(page, tmp_path, "dialog")

            # Empty, the answer is refused: the run stays Paused.
            dialog.get_by_role("button", name="Submit").click()
            expect(fields.locator(".p-label__message--failed")).to_have_text(
                "'answer' is a required property"
            )
            shot(page, tmp_path, "empty-refused")
            assert in_a_thread(lambda: state_of(flow_run_id)).is_paused()

            fields.locator("textarea").fill(ANSWER)
            dialog.get_by_role("button", name="Submit").click()
            expect(dialog).to_be_hidden()
            expect(heading.locator(".state-badge")).to_have_text("Completed", timeout=30_000)
            shot(page, tmp_path, "completed")
            thread.join(60)
        finally:
            if thread.is_alive() and flow_run_id is not None:  # a failed test's run, answered
                with contextlib.suppress(TokaError):
                    in_a_thread(lambda: answer(flow_run_id, "the test ended"))
            thread.join(120)
        sent = prompts(server)
    [result] = results
    assert_the_model_read(result, sent, ANSWER)  # exactly as typed
