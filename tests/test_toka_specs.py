"""Toka's real agent specs and orchestration TOML, and each dialect feature on a spec of its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import TOKA, run_toka, write_config

from toka_agents import ConfigError, load, plan, validate
from toka_agents.config import load_paths
from toka_agents.config.models import LlmTask
from toka_agents.orchestration.reporting import agent_notes

SPECS = Path(__file__).resolve().parent / "data" / "toka-specs"
V03 = SPECS / "v0.3"
AGENTS_TOML = SPECS / "config" / "agents.toml"
TESTING_TOML = SPECS / "config" / "testing-agents.toml"
REAL_FILES = sorted(SPECS.rglob("*.yaml")) + sorted(SPECS.rglob("*.toml"))


def spec(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    return write_config(tmp_path, textwrap.dedent(text), name)


@pytest.mark.parametrize("path", REAL_FILES, ids=lambda p: str(p.relative_to(SPECS)))
def test_every_real_file_loads(path):
    loaded = load_paths([path])
    if path.name == "agent-spec-schema.yaml":  # Toka's JSON Schema: not a spec, nothing to run
        assert [str(i) for i in loaded.issues] == [f"{path}: no agents defined"]
        return
    assert not loaded.issues, loaded.issues
    assert loaded.orchestration is not None and loaded.orchestration.agents


@pytest.mark.parametrize(
    "paths", [[V03], [AGENTS_TOML], [TESTING_TOML], [V03, AGENTS_TOML], [V03, TESTING_TOML]], ids=str
)
def test_real_sets_validate_and_plan(paths):
    checked = validate(paths)
    assert checked.ok, checked.issues
    assert checked.plan is not None and checked.plan.agents


def test_schema_file_is_skipped_with_a_note():
    checked = validate([SPECS / "agent-spec-schema.yaml", V03])
    assert checked.ok
    assert [str(w) for w in checked.warnings if "skipped" in str(w)] == [
        f"{SPECS / 'agent-spec-schema.yaml'}: skipped: a JSON Schema, not an agent or orchestration config"
    ]


def test_v03_directory_plans_into_two_waves():
    planned = validate([V03]).plan
    assert planned is not None
    assert len(planned.agents) == 9 and len(planned.tasks) == 78
    assert planned.waves == (
        ("build-system-stabilization",),
        (
            "github-cicd-issues-resolution",
            "kernel-events-enhancement",
            "testing-infrastructure",
            "document-organization",
            "llm-credentials-setup",
            "performance-observability",
            "security-extension",
            "storage-advancement",
        ),
    )
    priorities = [planned.agent(name).priority for name in planned.waves[1]]
    assert priorities == ["high"] * 3 + ["medium"] * 5
    assert all(task.kind == "llm" for task in planned.tasks)
    first = planned.agent("build-system-stabilization").tasks[0]
    assert first.id == "build-system-stabilization/01-analyze-current-base64ct-dependency"
    assert first.instruction == "Analyze current base64ct dependency conflict in workspace"


def test_v03_limits_capabilities_and_workstreams():
    planned = validate([V03]).plan
    build = planned.agent("build-system-stabilization")
    task = build.tasks[0]
    assert (task.limits.memory, task.limits.cpu, task.limits.timeout) == (512 * 1024**2, 0.75, 7200)
    assert task.workspace_writable and not task.network
    assert build.workstream == "Build System Stabilization"
    llm = planned.agent("llm-credentials-setup").tasks[0]
    assert llm.network and (llm.limits.memory, llm.limits.cpu, llm.limits.timeout) == (
        256 * 1024**2,
        0.25,
        3600,
    )
    docs = planned.agent("document-organization")
    assert docs.tasks[0].workspace_writable  # it says file-system-write
    assert set(docs.optional_requires) == {"testing-infrastructure", "github-cicd-issues-resolution"}
    assert ("testing-infrastructure", "document-organization") in planned.optional_edges


def test_agents_toml_hoists_task_dependencies():
    result = run_toka("plan", str(AGENTS_TOML), "--json")
    assert result.returncode == 0, result.stderr
    planned = json.loads(result.stdout)
    assert planned["edges"] == [
        ["toka-system-monitor", "toka-self-improvement-agent"],
        ["toka-orchestration-coordinator", "toka-meta-orchestrator"],
        ["toka-configuration-manager", "toka-meta-orchestrator"],
    ]
    assert planned["waves"] == [
        ["toka-system-monitor", "toka-orchestration-coordinator", "toka-configuration-manager"],
        ["toka-self-improvement-agent", "toka-meta-orchestrator"],
    ]
    assert planned["max_concurrent_agents"] == 8
    task = planned["agents"][0]["tasks"][0]
    assert task["limits"] == {
        "memory": "512MB",
        "cpu": 0.5,
        "timeout": "30m",
        "pids": 256,
        "workspace": "1GB",
    }


def test_toml_settings_and_kept_sections():
    orchestration = load(AGENTS_TOML)
    assert orchestration.max_concurrent_agents == 8
    assert orchestration.llm is not None
    assert (orchestration.llm.provider, orchestration.llm.model) == (
        "anthropic",
        "claude-3-5-sonnet-20241022",
    )
    assert orchestration.llm.timeout == 30 and orchestration.llm.options == {
        "rate_limit": 50,
        "debug_mode": False,
    }
    assert {"storage", "monitoring", "caching", "orchestration", "security"} <= set(orchestration.extra)
    agent = orchestration.agents[0]
    assert {"version", "domain", "branch", "objectives"} <= set(agent.extra)


def test_both_paths_make_one_plan_with_the_toml_settings_as_defaults():
    planned = validate([V03, AGENTS_TOML]).plan
    assert planned is not None
    assert len(planned.agents) == 14 and len(planned.tasks) == 83
    assert planned.max_concurrent_agents == 8
    assert planned.agent("build-system-stabilization").llm is not None  # the TOML's [llm]
    # The v0.3 spec's own limits win over the TOML defaults; a TOML agent has the defaults.
    assert planned.agent("build-system-stabilization").tasks[0].limits.cpu == 0.75
    assert planned.agent("toka-system-monitor").tasks[0].limits.timeout == 1800


def test_a_reader_that_goes_away_costs_no_traceback():
    # `toka plan --json ... | head -1`: the reader ends before the plan is written.
    planning = subprocess.Popen(
        [TOKA, "plan", str(V03), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert planning.stdout is not None and planning.stderr is not None
    planning.stdout.close()
    said = planning.stderr.read().decode()
    assert planning.wait(60) == 1
    assert "Traceback" not in said and "BrokenPipeError" not in said, said


def test_toka_plan_and_graph_on_the_real_files(tmp_path):
    result = run_toka("plan", str(V03), str(AGENTS_TOML), "--json")
    assert result.returncode == 0
    assert len(json.loads(result.stdout)["agents"]) == 14
    mermaid = run_toka("graph", str(V03), "--format", "mermaid")
    assert mermaid.returncode == 0 and mermaid.stdout.startswith("flowchart LR")
    assert mermaid.stdout.count("-->") == 8 and "-.->" in mermaid.stdout
    dot = run_toka("graph", str(V03), "--format", "dot")
    assert dot.returncode == 0 and "style=dashed" in dot.stdout
    for image, magic in (("svg", b"<svg"), ("png", b"\x89PNG")):
        out = tmp_path / f"graph.{image}"
        rendered = run_toka("graph", str(V03), "--format", image, "--output", str(out))
        assert rendered.returncode == 0, rendered.stderr
        assert magic in out.read_bytes()[:400]


V03_SPEC = """
metadata:
  name: "lists-agent"
  version: "v0.3.0"
  workstream: "Lists"
spec:
  name: "Lists Agent"
  priority: "high"
capabilities:
  primary: ["filesystem-write"]
tasks:
  default:
    - description: "Do the first thing"
      priority: "high"
dependencies:
  required:
    - "base-agent": "needs the base"
  optional:
    - "extra-agent": "nice to have"
reporting:
  metrics:
    - "rows-written": "How many rows"
security:
  sandbox: true
  capabilities_required: ["network-access"]
  resource_limits: {max_memory: "128MB", max_cpu: "0.5", timeout: "90"}
test_scenarios:
  - name: smoke
"""

BASE = """
name: base
agents:
  - name: base-agent
    tasks: [{name: t, code: {language: shell, source: "true"}}]
  - name: extra-agent
    tasks: [{name: t, code: {language: shell, source: "true"}}]
"""


def test_v03_dialect_lists_of_single_key_maps(tmp_path):
    spec(tmp_path, V03_SPEC, "lists.yaml")
    spec(tmp_path, BASE, "base.yaml")
    orchestration = load(tmp_path)
    agent = next(a for a in orchestration.agents if a.name == "lists-agent")
    assert agent.requires == ["base-agent"] and agent.optional_requires == ["extra-agent"]
    assert agent.origin.dialect == "toka-v0.3"
    assert agent.extra["reporting"]["metrics"] == [
        {"name": "rows-written", "description": "How many rows"}
    ]
    assert agent.extra["test_scenarios"] == [{"name": "smoke"}]
    assert (agent.limits.memory, agent.limits.cpu, agent.limits.timeout) == (128 * 1024**2, 0.5, 90)
    [task] = plan(orchestration).agent("lists-agent").tasks
    assert task.network and task.workspace_writable


V10_SPEC = """
metadata:
  name: "mapped-agent"
  version: "v1.0.0"
  created: "2025-07-10"
  modified: "2025-07-12T10:00:00Z"
  schema_version: "1.0.0"
  checksum: "abc123"
  workstream: "Mapped Things"
  branch: "feature/mapped-agent"
spec:
  name: "Mapped Agent"
  domain: "infrastructure"
  priority: "critical"
capabilities:
  primary: ["build-validation"]
objectives:
  - description: "An objective of the mapped agent"
    deliverable: "A deliverable"
    validation: "A validation"
tasks:
  default:
    - description: "Critical thing to do first"
      priority: "critical"
      estimated_duration: "2h"
      tools_required: ["cargo", "git"]
    - description: "Second thing"
      priority: "low"
      estimated_time: "1d"
  conditional:
    on_release:
      - description: "Tag the release"
        priority: "high"
    on_failure:
      - description: "Open an incident"
        priority: "critical"
dependencies:
  required:
    base-agent: "needs the base"
  optional: {}
reporting:
  frequency: "on-completion"
  channels: ["main-agent"]
  metrics:
    - name: "tasks-done"
      description: "How many tasks are done"
      type: "counter"
      unit: "tasks"
security:
  sandbox: true
  capabilities_required: ["filesystem-read"]
  resource_limits: {max_memory: "1gb", max_cpu: "2 cores", timeout: "45m"}
github_integration:
  webhook_events: ["push"]
"""


def test_v10_dialect(tmp_path):
    spec(tmp_path, V10_SPEC, "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    orchestration = load(tmp_path)
    agent = next(a for a in orchestration.agents if a.name == "mapped-agent")
    assert agent.origin.dialect == "toka-v1.0"
    assert agent.priority == "critical" and agent.requires == ["base-agent"]
    first, second, release, failure = agent.tasks
    assert isinstance(first, LlmTask)
    assert (first.priority, first.estimated_duration, first.tools) == (
        "critical",
        "2h",
        ["cargo", "git"],
    )
    assert (second.priority, second.estimated_duration) == ("low", "1d")
    assert (release.condition, failure.condition) == ("on_release", "on_failure")
    assert agent.extra["metadata"]["checksum"] == "abc123"
    assert agent.extra["metadata"]["schema_version"] == "1.0.0"
    assert agent.extra["reporting"]["metrics"][0] == {
        "name": "tasks-done",
        "description": "How many tasks are done",
        "type": "counter",
        "unit": "tasks",
    }
    assert agent.extra["github_integration"] == {"webhook_events": ["push"]}
    assert (agent.limits.memory, agent.limits.cpu, agent.limits.timeout) == (1024**3, 2.0, 2700)


def test_conditional_groups_run_only_when_named(tmp_path):
    spec(tmp_path, V10_SPEC, "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    ids = lambda planned: [t.name for t in planned.agent("mapped-agent").tasks]  # noqa: E731
    assert ids(validate([tmp_path]).plan) == ["01-critical-thing-to-do", "02-second-thing"]
    named = validate([tmp_path], conditions=["on_release"]).plan
    assert ids(named) == ["01-critical-thing-to-do", "02-second-thing", "on-release-01-tag-the-release"]
    result = run_toka("plan", str(tmp_path), "--json", "--conditions", "on_failure")
    assert result.returncode == 0, result.stderr
    tasks = next(a for a in json.loads(result.stdout)["agents"] if a["name"] == "mapped-agent")["tasks"]
    assert [t["condition"] for t in tasks] == [None, None, "on_failure"]


def test_unknown_domain_keys_are_kept_and_shown_in_the_report(tmp_path):
    spec(tmp_path, V10_SPEC, "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    notes = agent_notes(validate([tmp_path]).plan)
    assert "## mapped-agent" in notes and "**github_integration**" in notes and "**objectives**" in notes


def test_schema_departures_are_warnings_that_do_not_stop(tmp_path):
    path = spec(tmp_path, V03_SPEC, "lists.yaml")
    spec(tmp_path, BASE, "base.yaml")
    result = run_toka("validate", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (
        f"warning: {path}: Toka schema: 'behavioral_directives' is a required property" in result.stderr
    )
    assert f"warning: {path}: Toka schema: 6 more departures not shown" in result.stderr
    assert result.stdout.startswith("ok: ")


TOML = """
[orchestration]
max_concurrent_agents = 3
agent_pool_size = 10

[security]
sandbox_enabled = true

[security.resource_limits]
max_memory = "256MB"
max_cpu = "0.25"
timeout = "600"

[llm]
provider = "openai"
model = "local-model"
rate_limit = 5

[billing]
owner = "team-a"

[[agents]]
name = "first"
priority = "high"
workstream = "one"

[agents.capabilities]
primary = ["file-system-write"]

[agents.runbook]
pager = "none"

[[agents.tasks.default]]
description = "Do the first job"
priority = "high"
dependencies = []

[[agents]]
name = "second"
priority = "critical"
workstream = "two"

[[agents.tasks.default]]
description = "Use the first job"
priority = "critical"
dependencies = ["first"]

[[agents.tasks.default]]
description = "Use it again"
priority = "low"
dependencies = ["first"]
"""


def test_toml_dialect_with_extra_sections_and_tables(tmp_path):
    path = spec(tmp_path, TOML, "agents.toml")
    orchestration = load(path)
    assert orchestration.max_concurrent_agents == 3
    assert orchestration.extra["billing"] == {"owner": "team-a"}
    assert orchestration.extra["orchestration"]["agent_pool_size"] == 10
    first, second = orchestration.agents
    assert first.extra["runbook"] == {"pager": "none"}
    assert second.requires == ["first"]  # hoisted once from both tasks
    planned = plan(orchestration)
    assert planned.waves == (("first",), ("second",))  # critical waits for the high one it needs
    task = planned.agent("first").tasks[0]
    assert (task.limits.memory, task.limits.cpu, task.limits.timeout) == (256 * 1024**2, 0.25, 600)
    assert task.workspace_writable
    assert planned.agent("first").llm.model == "local-model"


def test_toml_unknown_dependency_names_both_agents_and_the_file(tmp_path):
    path = spec(
        tmp_path,
        TOML.replace(
            'dependencies = ["first"]\n\n[[agents.tasks.default]]',
            'dependencies = ["ghost"]\n\n[[agents.tasks.default]]',
        ),
        "agents.toml",
    )
    issues = [str(i) for i in validate([path]).issues]
    assert issues == [
        f"{path}: agents.1.tasks.default.0.dependencies.0: agent 'second' requires 'ghost', "
        "which is not defined (defined agents: first, second)"
    ]


def test_spec_requiring_an_agent_that_is_not_loaded(tmp_path):
    path = spec(tmp_path, V10_SPEC, "mapped.yaml")
    assert [str(i) for i in validate([path]).issues] == [
        f"{path}: dependencies.required.base-agent: agent 'mapped-agent' requires 'base-agent', "
        "which is not defined (defined agents: mapped-agent)"
    ]


def test_cycle_across_spec_files_names_every_agent(tmp_path):
    for name, needs in (("ring-a", "ring-b"), ("ring-b", "ring-c"), ("ring-c", "ring-a")):
        text = V10_SPEC.replace("mapped-agent", name).replace("base-agent", needs)
        spec(tmp_path, text, f"{name}.yaml")
    [issue] = [str(i) for i in validate([tmp_path]).issues]
    assert issue.endswith(
        "dependency cycle: ring-a -> ring-b -> ring-c -> ring-a (each agent requires the next)"
    )
    assert issue.startswith(f"{tmp_path / 'ring-a.yaml'}: dependencies.required: ")


def test_bad_limit_in_a_spec_names_file_key_and_value(tmp_path):
    path = spec(tmp_path, V10_SPEC.replace('max_memory: "1gb"', 'max_memory: "1 lots"'), "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    issues = [str(i) for i in validate([tmp_path]).issues]
    assert any(
        i.startswith(f"{path}: security.resource_limits.max_memory: invalid memory '1 lots'")
        for i in issues
    ), issues
    toml = spec(tmp_path / "..", TOML.replace('max_cpu = "0.25"', 'max_cpu = "quick"'), "bad.toml")
    assert [str(i) for i in validate([toml]).issues][0].startswith(
        f"{toml}: security.resource_limits.max_cpu: invalid cpu 'quick'"
    )


def test_wrong_shapes_are_config_errors_with_key_paths(tmp_path):
    broken = yaml.safe_load(V10_SPEC)
    broken["dependencies"]["required"] = "base-agent"
    broken["tasks"]["default"][1] = ["not", "a", "task"]
    broken["security"]["capabilities_required"] = {"oops": 1}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken))
    issues = [str(i) for i in validate([path]).issues]
    assert (
        f"{path}: dependencies.required: expected a mapping of agent names or a list, found a string"
        in issues
    )
    assert f"{path}: security.capabilities_required: expected a list, found a mapping" in issues
    assert any(i.startswith(f"{path}: tasks.default.1.instruction: ") for i in issues), issues
    with pytest.raises(ConfigError):
        load(path)


OPTIONAL = """
name: optional
agents:
  - {name: a, optional_requires: [b], tasks: [{name: t, code: {language: shell, source: "true"}}]}
  - {name: b, optional_requires: [c], tasks: [{name: t, code: {language: shell, source: "true"}}]}
  - {name: c, optional_requires: [a], tasks: [{name: t, code: {language: shell, source: "true"}}]}
  - {name: d, requires: [a], optional_requires: [missing], tasks: [{name: t, code: {language: shell, source: "true"}}]}
"""


def test_optional_dependencies_do_not_order_by_default(tmp_path):
    planned = validate([spec(tmp_path, OPTIONAL)]).plan
    assert planned.waves == (("a", "b", "c"), ("d",))
    assert set(planned.optional_edges) == {("b", "a"), ("c", "b"), ("a", "c")}
    assert planned.to_json()["optional_edges"] == [["b", "a"], ["c", "b"], ["a", "c"]]


def test_order_mode_breaks_an_optional_cycle_with_a_warning(tmp_path):
    path = spec(tmp_path, OPTIONAL)
    checked = validate([path], optional_dependencies="order")
    assert checked.ok
    assert checked.plan.waves == (("c",), ("b",), ("a",), ("d",))
    assert checked.plan.warnings == (
        "optional dependency of 'c' on 'a' does not order them: it would close the cycle a -> c -> b -> a",
    )
    setting = spec(
        tmp_path,
        OPTIONAL.replace("name: optional", "name: optional\noptional_dependencies: order"),
        "ordered.yaml",
    )
    result = run_toka("plan", str(setting), "--json")
    assert result.returncode == 0
    assert "would close the cycle" in result.stderr


def test_sandbox_false_is_refused_unless_allowed(tmp_path):
    path = spec(tmp_path, V10_SPEC.replace("sandbox: true", "sandbox: false"), "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    [issue] = [str(i) for i in validate([tmp_path]).issues]
    assert issue.startswith(
        f"{path}: security.sandbox: agent 'mapped-agent' asks to run without a sandbox"
    )
    allowed = validate([tmp_path], allow_unsandboxed=True)
    assert allowed.ok
    task = allowed.plan.agent("mapped-agent").tasks[0]
    assert task.network and task.workspace_writable
    assert any("asked for no sandbox" in w for w in allowed.plan.warnings)
    toml = spec(
        tmp_path / "..",
        TOML.replace("sandbox_enabled = true", "sandbox_enabled = false"),
        "nosandbox.toml",
    )
    issues = [str(i) for i in validate([toml]).issues]
    assert len(issues) == 2 and all(i.startswith(f"{toml}: security.sandbox_enabled: ") for i in issues)


def test_unknown_capabilities_are_kept_and_warned_about(tmp_path):
    planned = validate([spec(tmp_path, TOML, "agents.toml")]).plan
    assert planned.agent("first").tasks[0].capabilities == ("file-system-write",)
    spec(tmp_path, V10_SPEC, "mapped.yaml")
    spec(tmp_path, BASE, "base.yaml")
    checked = validate([tmp_path / "mapped.yaml", tmp_path / "base.yaml"])
    assert "build-validation" in checked.plan.agent("mapped-agent").tasks[0].capabilities
    assert (
        "agent 'mapped-agent': 1 capabilities are not in the capability model; they are kept but "
        "grant nothing: build-validation"
    ) in checked.plan.warnings


def test_llm_tasks_without_a_provider_are_refused_before_any_task(tmp_path):
    result = run_toka("orchestrate", str(V03))
    assert result.returncode == 1
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("error: 78 LLM task(s) of agents build-system-stabilization, ")
    assert "need an LLM provider, and none is configured" in message and "--dry-run" in message
    assert "Flow run" not in result.stdout  # nothing started


def test_a_directory_and_a_copy_load_the_same(tmp_path):
    copy = tmp_path / "specs"
    shutil.copytree(V03, copy)
    assert [a.name for a in load(copy).agents] == [a.name for a in load(V03).agents]
