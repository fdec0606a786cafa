"""The run form of the `orchestrate` flow: the schema Prefect builds for the UI, and bad
values failing the flow run at once, read back from a real Prefect server."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest
from conftest import EXAMPLES
from prefect import get_client
from prefect.utilities.callables import parameter_schema

from toka_agents import orchestrate
from toka_agents.config import load
from toka_agents.errors import ConfigError
from toka_agents.planning import select_agents

QUICKSTART = str(EXAMPLES / "quickstart.yaml")


def test_the_run_form_has_titles_descriptions_defaults_enums_and_lists():
    schema = parameter_schema(orchestrate).model_dump_for_openapi()
    form = schema["properties"]
    assert list(form) == [
        "paths",
        "config",
        "inputs",
        "agents",
        "conditions",
        "dry_run",
        "max_concurrent_agents",
        "optional_dependencies",
        "allow_unsandboxed",
        "llm_provider",
        "llm_model",
        "llm_base_url",
        "llm_timeout",
        "llm_api_key_secret",
    ]
    for name, field in form.items():
        assert field["title"] != name and field["title"][0].isupper(), name
        assert len(field.get("description", "")) > 20, name
        assert "default" in field, name
        assert "anyOf" not in field, f"{name} would render as a type toggle"
    assert "required" not in schema
    for name in ("paths", "agents", "conditions"):
        assert form[name]["type"] == "array" and form[name]["items"] == {"type": "string"}
    assert form["optional_dependencies"]["enum"] == ["config", "ignore", "order"]
    assert form["llm_provider"]["enum"] == ["config", "openai", "anthropic"]
    assert form["max_concurrent_agents"] == {
        **form["max_concurrent_agents"],
        "type": "integer",
        "minimum": 0,
        "default": 0,
    }
    assert form["dry_run"]["type"] == form["allow_unsandboxed"]["type"] == "boolean"
    assert form["inputs"]["type"] == "object"  # a deployment gives it its config's inputs


def _final_state(state) -> tuple[str, str]:
    """The flow run's state as the server recorded it."""
    flow_run_id: UUID = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        recorded = client.read_flow_run(flow_run_id).state
    assert recorded is not None
    return recorded.type.value, recorded.message or ""


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"max_concurrent_agents": -1}, "max_concurrent_agents: -1: "),
        ({"optional_dependencies": "sometimes"}, "optional_dependencies: 'sometimes': "),
        ({"agents": ["describe", "nope"]}, "agents: 'nope' is not an agent of quickstart"),
        ({"llm_base_url": "ftp://models"}, "llm_base_url: 'ftp://models': not an http"),
        ({"llm_api_key_secret": "My Key"}, "llm_api_key_secret: 'My Key': not a block name"),
        ({"llm_timeout": "soon"}, "llm_timeout: 'soon': invalid duration 'soon'"),
        ({"llm_timeout": "31d"}, "llm_timeout: '31d': timeout 31d is over 30d"),
        ({"paths": []}, "paths: []: give config paths or an inline config"),
        ({"config": "agents: [oops"}, "inline-config.yaml"),
    ],
)
def test_bad_values_fail_the_run_naming_the_field_and_the_value(prefect_api, parameters, expected):
    state = orchestrate(**{"paths": [QUICKSTART], "dry_run": True, **parameters}, return_state=True)
    kind, message = _final_state(state)
    assert kind == "FAILED"
    assert expected in message, message
    assert "Traceback" not in message


def test_agents_runs_only_those_and_what_they_require(prefect_api):
    state = orchestrate(paths=[QUICKSTART], agents=["report"], dry_run=True, return_state=True)
    assert _final_state(state) == ("COMPLETED", "4 agents, 5 of 5 tasks done")
    assert sorted(o.task_id.split("/")[0] for o in state.result().outcomes) == [
        "describe",
        "generate",
        "outliers",
        "outliers",
        "report",
    ]


def test_select_agents_keeps_requirements_in_order_and_names_unknown_ones():
    quickstart = load(QUICKSTART)
    chosen = select_agents(quickstart, ["describe"])
    assert [agent.name for agent in chosen.agents] == ["generate", "describe"]
    with pytest.raises(ConfigError, match=r"agents: 'ghost' is not an agent of quickstart"):
        select_agents(quickstart, ["ghost"])


INLINE = """
name: inline
agents:
  - name: hello
    capabilities: [filesystem-write]
    tasks:
      - name: write
        code: {language: shell, source: "echo inline > hello.txt && cat hello.txt"}
"""


@pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")
def test_an_inline_config_runs_in_the_sandbox(prefect_api):
    state = orchestrate(config=INLINE, return_state=True)
    assert _final_state(state) == ("COMPLETED", "1 agents, 1 of 1 tasks done")
    assert (Path(state.result().workspace) / "hello.txt").read_text() == "inline\n"
