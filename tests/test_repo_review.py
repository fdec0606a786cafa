"""The repo-review example end to end: a repository made here is the run's input, copied into
its workspace without what `exclude` names; the code agent's facts are named to the model, which
writes review.md; the review and the facts are artifacts of the flow run. The model is the
suite's scripted server, on 127.0.0.1, driven by the run's own OpenAI-compatible gateway."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import REPO
from llm_server import scripted_server, tool_call
from test_flows import artifacts
from test_llm_runs import prompts

sys.path.insert(0, str(REPO / "flows"))
from repo_review import repo_review  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

REVIEW = "# Review of calc\n\nOne module, two tests.\n\n1. `calc.py`: add a docstring.\n"


def make_repository(directory):
    repo = directory / "calc"
    (repo / "tests").mkdir(parents=True)
    (repo / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    (repo / "tests" / "test_calc.py").write_text(
        "from calc import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n\n\n"
        "def test_add_negative():\n    assert add(-1, 1) == 0\n"
    )
    (repo / ".venv" / "lib").mkdir(parents=True)  # excluded: never copied, never counted
    (repo / ".venv" / "lib" / "big.py").write_text("x = 1\n" * 10_000)
    return repo


def test_the_repo_review_flow_reviews_a_repository_given_in_its_form(tmp_path, monkeypatch, api_key):
    """Through `flows/repo_review.py:repo_review`, the entrypoint of prefect.yaml's deployment,
    called as a Python flow with the values its run form asks for."""
    repo = make_repository(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", api_key)  # the example names no key: the SDK's variable
    monkeypatch.setenv("TOKA_HOME", str(tmp_path / "toka"))
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))
    script = (
        tool_call("write_file", path="review.md", content=REVIEW),
        tool_call("finish", success=True, summary="review.md: one finding, a missing docstring."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        state = repo_review(
            repo=str(repo),
            focus="tests",
            llm_model="scripted-1",
            llm_base_url=server.openai_base_url,
            return_state=True,
        )
        sent = prompts(server)
    assert state.is_completed(), state.message
    workspace = Path(state.result().workspace)
    facts = (workspace / "facts.md").read_text()
    assert "2 files, 11 lines; 2 tests in 1 test files." in facts  # .venv left out
    assert not (workspace / ".venv").exists()
    assert not (repo / "review.md").exists()  # copied in, never written back

    user = sent[0][1]["content"]
    assert "looking most at its tests" in user
    assert "- facts: completed: exit code 0" in user and "(files: facts.md, facts.json)" in user
    assert "Your finish summary hands on: What review.md holds" in user

    found = {
        a.key: a
        for a in artifacts(state.state_details.flow_run_id)
        if a.key and a.key.startswith("output-")
    }
    assert found["output-repo-review-review-md"].data == REVIEW
    assert found["output-repo-review-review-md"].description == "Review"
    assert found["output-repo-review-facts-md"].description == "Repository facts"
    assert "| .py | 2 | 11 |" in found["output-repo-review-facts-md"].data
