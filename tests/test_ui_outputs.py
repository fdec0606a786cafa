# ruff: noqa: F811  (the fixtures `browser` and `page` are imported from test_ui_browser)
"""A run's declared outputs as the Prefect UI shows them, in a real browser (Debian's Chromium,
driven by Playwright) against the session's `prefect server start`.

The quickstart and a run whose agent writes a hostile report.md run in this process first. On
the quickstart's flow run page, the Artifacts tab lists its report and its outliers table; the
report's own page renders it as Markdown (its heading a heading, its table a table) and the
table's page shows the CSV's rows. The hostile report's page shows its raw HTML as text: no
element made of it, no script of it run, its `javascript:` link inert when clicked.
Screenshots land in the test's tmp dir and in `test-output/ui/` (git-ignored).
"""

from __future__ import annotations

import csv
import re
import textwrap

import pytest
from conftest import EXAMPLES, own_containers, write_config
from playwright.sync_api import Locator, Page, expect
from test_ui_browser import browser, open_tab, page, shot, ui_of  # noqa: F401
from test_ui_task_pages import in_a_thread

from toka_agents import RunResult, run

pytestmark = pytest.mark.usefixtures("sandbox_image")

IMG = '<img src=x onerror="window.__pwned=1">'
SCRIPT = "<script>window.__pwned=2</script>"
REPORT = f"# Hostile report\n\n{IMG}\n\n{SCRIPT}\n\n[click](javascript:window.__pwned=3)\n"
HOSTILE = f"""
name: ui-hostile
outputs:
  - {{path: report.md, title: The hostile report}}
agents:
  - name: writer
    capabilities: [filesystem-write]
    tasks:
      - name: report
        code:
          language: python
          source: |
            open("report.md", "w").write({REPORT!r})
"""


@pytest.fixture(scope="module")
def finished(prefect_api, docker_client, tmp_path_factory) -> dict[str, RunResult]:
    """The quickstart's run and the hostile one, by flow name, once both have ended."""
    directory = tmp_path_factory.mktemp("ui-outputs")
    before = set(own_containers(docker_client))
    hostile = write_config(directory, textwrap.dedent(HOSTILE), "hostile.yaml")
    results = {
        name: in_a_thread(lambda config=config: run(config, workspace_root=directory / "runs"))
        for name, config in (("quickstart", EXAMPLES / "quickstart.yaml"), ("ui-hostile", hostile))
    }
    for result in results.values():
        assert result.ok and not result.warnings, (result.state.message, result.warnings)
    yield results
    assert not set(own_containers(docker_client)) - before, "containers left behind"


def open_artifact(page: Page, api: str, result: RunResult, key: str, description: str) -> Locator:
    """The flow run's Artifacts tab, its card of `key` (described by `description`), then that
    artifact's own page; returns the view of its data."""
    page.goto(f"{ui_of(api)}/runs/flow-run/{result.flow_run_id}")
    open_tab(page, "Artifacts")
    card = page.locator(".artifact-card").filter(
        has=page.locator(".artifact-card__title").get_by_text(key, exact=True)
    )
    expect(card.locator(".artifact-card__description")).to_have_text(description)
    card.click()
    page.wait_for_url(re.compile(r"/artifacts/artifact/[0-9a-f-]{36}$"))
    expect(page.locator(".page-heading")).to_contain_text(key)
    return page.locator(".artifact-data-view")


def test_the_quickstarts_report_renders_as_markdown_and_its_outliers_as_a_table(
    prefect_api, finished, page, tmp_path
):
    quickstart = finished["quickstart"]
    report = open_artifact(
        page, prefect_api, quickstart, "output-quickstart-report-md", "The sensor report"
    )
    expect(report.locator("h1")).to_have_text("Sensor report")
    expect(
        report.get_by_role("heading", level=2, name=re.compile(r"^Outliers \(\d+\)$"))
    ).to_be_visible()
    expect(report.locator("table th").first).to_have_text("sensor")
    expect(report).not_to_contain_text("# Sensor report")  # rendered, not shown as source
    shot(page, tmp_path, "report")

    table = open_artifact(
        page, prefect_api, quickstart, "output-quickstart-stats-outliers-csv", "Outliers"
    )
    with open(quickstart.workspace / "stats" / "outliers.csv", newline="") as handle:
        header, *rows = csv.reader(handle)
    assert rows, "the quickstart found no outliers to show"
    expect(table.locator("table thead th")).to_have_text(header)
    body = table.locator("table tbody tr")
    expect(body).to_have_count(len(rows))
    for shown, row in zip(body.all(), rows, strict=True):
        expect(shown.locator("td")).to_have_text(row)
    shot(page, tmp_path, "outliers")


def test_a_hostile_reports_html_shows_as_text_and_runs_nothing(prefect_api, finished, page, tmp_path):
    images: list[str] = []
    page.on(
        "request", lambda request: images.append(request.url) if request.url.endswith("/x") else None
    )
    view = open_artifact(
        page, prefect_api, finished["ui-hostile"], "output-ui-hostile-report-md", "The hostile report"
    )
    expect(view.locator("h1")).to_have_text("Hostile report")  # rendered as Markdown
    expect(view.get_by_text(IMG, exact=True)).to_be_visible()
    expect(view.get_by_text(SCRIPT, exact=True)).to_be_visible()
    expect(page.locator("img[onerror]")).to_have_count(0)
    expect(view.locator("img, script")).to_have_count(0)
    shot(page, tmp_path, "hostile-report")
    assert page.evaluate("window.__pwned") is None

    link = view.get_by_role("link", name="click", exact=True)
    expect(link).not_to_have_attribute("href", re.compile(r"^\s*javascript:", re.I))
    link.click()
    page.wait_for_timeout(500)
    assert page.evaluate("window.__pwned") is None
    assert images == []
