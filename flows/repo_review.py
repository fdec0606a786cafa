"""Deployable entrypoint of `flows/examples/repo-review.yaml`: `flows/repo_review.py:repo_review`.

A flow of one config whose run form asks for that config's inputs as fields of their own
(Prefect draws the form from the flow's parameters), beside the model to use. Everything else
is the `orchestrate` flow's: the run is that flow's body with this config and these inputs.
"""

from pathlib import Path
from typing import Annotated, Literal

from prefect import flow

from toka_agents.orchestration.deployments import form_field, orchestrate
from toka_agents.orchestration.reporting import RunSummary

CONFIG = Path(__file__).parent / "examples" / "repo-review.yaml"


@flow(name="repo-review", validate_parameters=False)
def repo_review(
    repo: Annotated[str, form_field("Repository", "The directory of the repository to review.")],
    focus: Annotated[
        Literal["tests", "structure", "docs"],
        form_field("focus", "What the review looks at most."),
    ] = "structure",
    llm_model: Annotated[
        str, form_field("LLM model", "The model the reviewer uses. Empty: $TOKA_LLM_MODEL.")
    ] = "",
    llm_base_url: Annotated[
        str,
        form_field("LLM base URL", "The provider's API address. Empty: $OPENAI_BASE_URL."),
    ] = "",
) -> RunSummary:
    """Review a repository: a code agent gathers its facts, a model writes review.md."""
    return orchestrate.fn(
        paths=[str(CONFIG)],
        inputs={"repo": repo, "focus": focus},
        llm_model=llm_model,
        llm_base_url=llm_base_url,
    )
