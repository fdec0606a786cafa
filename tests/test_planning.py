"""The planner: waves, priority order inside a wave, edges, effective settings, plan JSON."""

from __future__ import annotations

import json

from conftest import EXAMPLES, run_toka

from toka_agents import load, plan
from toka_agents.config.models import Agent, CodeTask, LlmOverrides, Orchestration

SHELL = {"language": "shell", "source": "true"}


def orchestration(*agents: dict, **settings) -> Orchestration:
    built = [
        Agent.model_validate({"tasks": [{"name": "t", "code": SHELL}], **agent}) for agent in agents
    ]
    return Orchestration(name="test", agents=built, **settings)


def test_quickstart_plan_json_shape():
    result = run_toka("plan", str(EXAMPLES / "quickstart.yaml"), "--json")
    assert result.returncode == 0, result.stderr
    planned = json.loads(result.stdout)
    assert planned["name"] == "quickstart"
    assert planned["waves"] == [["generate"], ["describe", "outliers"], ["report"], ["review"]]
    assert planned["edges"] == [
        ["generate", "describe"],
        ["generate", "outliers"],
        ["describe", "report"],
        ["outliers", "report"],
        ["report", "review"],
    ]
    first = planned["agents"][0]
    assert {k: first[k] for k in ("name", "priority", "workstream", "requires")} == {
        "name": "generate",
        "priority": "critical",
        "workstream": "data",
        "requires": [],
    }
    task = first["tasks"][0]
    assert task["id"] == "generate/make-data" and task["name"] == "make-data"
    assert task["limits"] == {
        "memory": "256MB",
        "cpu": 0.5,
        "timeout": "1m",
        "pids": 64,
        "workspace": "1GB",
    }
    assert task["workspace"] == "read-write" and task["network"] is False
    review = next(a for a in planned["agents"] if a["name"] == "review")
    assert review["tasks"][0]["workspace"] == "read-only"
    assert review["tasks"][0]["limits"]["memory"] == "64MB"


def test_waves_are_topological_layers_in_priority_order():
    planned = plan(
        orchestration(
            {"name": "docs", "priority": "low"},
            {"name": "base", "priority": "medium"},
            {"name": "tests", "priority": "high", "requires": ["base"]},
            {"name": "security", "priority": "critical", "requires": ["base"]},
            {"name": "perf", "priority": "medium", "requires": ["base"]},
            {"name": "release", "priority": "critical", "requires": ["tests", "security"]},
            {"name": "lint", "priority": "critical"},
        )
    )
    assert planned.waves == (
        ("lint", "base", "docs"),
        ("security", "tests", "perf"),
        ("release",),
    )
    assert [agent.name for agent in planned.agents] == [
        "lint",
        "base",
        "docs",
        "security",
        "tests",
        "perf",
        "release",
    ]


def test_priority_never_overrides_a_required_dependency():
    # Toka's orchestrator started a critical agent before the high one it required.
    planned = plan(
        orchestration(
            {"name": "critical-one", "priority": "critical", "requires": ["high-one"]},
            {"name": "high-one", "priority": "high"},
        )
    )
    assert planned.waves == (("high-one",), ("critical-one",))


def test_same_priority_keeps_config_order():
    planned = plan(orchestration({"name": "b"}, {"name": "a"}, {"name": "c"}))
    assert planned.waves == (("b", "a", "c"),)


def test_effective_settings_inherit_and_override():
    planned = plan(
        orchestration(
            {
                "name": "a",
                "limits": {"memory": "1GB"},
                "capabilities": ["network-access"],
                "env": {"B": "agent"},
                "tasks": [
                    {"name": "one", "code": SHELL},
                    {"name": "two", "code": SHELL, "limits": {"timeout": "5s"}},
                ],
            },
            {"name": "b", "image": "custom:1", "retries": 2},
            defaults={
                "limits": {"memory": "128MB", "cpu": "25%", "timeout": "2m"},
                "capabilities": ["filesystem-write"],
                "env": {"A": "default", "B": "default"},
                "retries": 1,
            },
        )
    )
    one, two = planned.agent("a").tasks
    assert (one.limits.memory, one.limits.cpu, one.limits.timeout, one.limits.pids) == (
        1024**3,
        0.25,
        120.0,
        256,
    )
    assert two.limits.timeout == 5.0 and two.limits.memory == 1024**3
    assert one.network and one.workspace_writable
    assert one.capabilities == ("filesystem-write", "network-access")
    assert one.env == {"A": "default", "B": "agent"}
    assert one.retries == 1 and one.image == "toka-sandbox:1"
    [b_task] = planned.agent("b").tasks
    assert b_task.image == "custom:1" and b_task.retries == 2
    assert not b_task.network and b_task.workspace_writable
    assert b_task.limits.memory == 128 * 1024**2


def test_without_capabilities_no_network_and_read_only_workspace():
    [task] = plan(orchestration({"name": "a"})).tasks
    assert task.network is False and task.workspace_writable is False


def test_max_concurrent_agents_can_be_overridden():
    planned = plan(orchestration({"name": "a"}, max_concurrent_agents=3))
    assert planned.max_concurrent_agents == 3
    assert plan(orchestration({"name": "a"}), max_concurrent_agents=7).max_concurrent_agents == 7


def test_task_ids_and_order_follow_the_config():
    loaded = load(EXAMPLES / "quickstart.yaml")
    planned = plan(loaded)
    outliers = planned.agent("outliers")
    assert [t.id for t in outliers.tasks] == ["outliers/find-outliers", "outliers/top-readings"]
    assert [t.index for t in outliers.tasks] == [0, 1]
    source = next(a for a in loaded.agents if a.name == "outliers").tasks[1]
    assert isinstance(source, CodeTask) and source.code.file == "scripts/top-readings.sh"
    assert outliers.tasks[1].code is not None and "sort" in (outliers.tasks[1].code.source or "")


def test_plan_of_a_long_chain_does_not_recurse():
    agents = [{"name": "a0"}] + [{"name": f"a{i}", "requires": [f"a{i - 1}"]} for i in range(1, 3000)]
    planned = plan(orchestration(*agents))
    assert len(planned.waves) == 3000


def test_run_overrides_of_the_llm_replace_the_configs_field_by_field(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text(
        "llm: {provider: openai, model: small, base_url: 'http://127.0.0.1:1/v1', api_key_env: KEY}\n"
        "agents:\n"
        "  - name: thinker\n"
        "    tasks: [{name: think, instruction: Think.}]\n"
        "  - name: other\n"
        "    llm: {provider: anthropic, model: claude}\n"
        "    tasks: [{name: think, instruction: Think.}]\n"
    )
    overrides = LlmOverrides(model="large", base_url="http://127.0.0.1:2/v1")
    planned = plan(load(path), llm_overrides=overrides)
    thinker, other = planned.agent("thinker").llm, planned.agent("other").llm
    assert (thinker.provider, thinker.model, thinker.base_url, thinker.api_key_env) == (
        "openai",
        "large",
        "http://127.0.0.1:2/v1",
        "KEY",
    )
    assert (other.provider, other.model, other.base_url) == (
        "anthropic",
        "large",
        "http://127.0.0.1:2/v1",
    )
    assert plan(load(path)).agent("thinker").llm.model == "small"


def test_run_overrides_configure_agents_that_have_no_llm_only_with_provider_and_model(tmp_path):
    path = tmp_path / "bare.yaml"
    path.write_text("agents:\n  - name: thinker\n    tasks: [{name: think, instruction: Think.}]\n")
    assert plan(load(path), llm_overrides=LlmOverrides(model="m")).agent("thinker").llm is None
    made = plan(load(path), llm_overrides=LlmOverrides(provider="openai", model="m"))
    assert made.agent("thinker").llm.model == "m"
