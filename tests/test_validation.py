"""`toka validate`: every problem as `FILE: key.path: message`, all of them in one pass."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from conftest import EXAMPLES, run_toka, write_config

from toka_agents import ConfigError, load, validate


def problems(*paths: Path) -> list[str]:
    return [str(issue) for issue in validate(paths).issues]


def config(tmp_path: Path, body: str, name: str = "config.yaml") -> Path:
    return write_config(tmp_path, textwrap.dedent(body), name)


AGENT = """
  - name: {name}
    requires: {requires}
    tasks:
      - name: t
        code: {{language: shell, source: "true"}}
"""


def agents_yaml(*pairs: tuple[str, list[str]]) -> str:
    body = "".join(AGENT.format(name=n, requires=json.dumps(r)) for n, r in pairs)
    return "name: graph\nagents:" + body


def test_quickstart_is_valid():
    checked = validate([EXAMPLES / "quickstart.yaml"])
    assert checked.ok, checked.issues
    assert checked.plan is not None and len(checked.plan.agents) >= 3


def test_unknown_dependency_names_both_agents(tmp_path):
    path = config(tmp_path, agents_yaml(("a", []), ("b", ["ghost"])))
    assert problems(path) == [
        f"{path}: agents.1.requires.0: agent 'b' requires 'ghost', which is not defined "
        "(defined agents: a, b)"
    ]


def test_cycle_names_every_agent_in_order(tmp_path):
    path = config(tmp_path, agents_yaml(("a", ["c"]), ("b", ["a"]), ("c", ["b"]), ("d", [])))
    [problem] = problems(path)
    assert problem == (
        f"{path}: agents.0.requires: dependency cycle: a -> c -> b -> a (each agent requires the next)"
    )


def test_self_dependency_is_a_cycle(tmp_path):
    path = config(tmp_path, agents_yaml(("a", ["a"])))
    assert problems(path) == [
        f"{path}: agents.0.requires: dependency cycle: a -> a (each agent requires the next)"
    ]


def test_two_separate_cycles_are_both_reported(tmp_path):
    path = config(tmp_path, agents_yaml(("a", ["b"]), ("b", ["a"]), ("c", ["d"]), ("d", ["c"])))
    found = problems(path)
    assert len(found) == 2
    assert "a -> b -> a" in found[0] and "c -> d -> c" in found[1]


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("memory", "12XB", "invalid memory '12XB'"),
        ("cpu", "fast", "invalid cpu 'fast'"),
        ("timeout", "soon", "invalid duration 'soon'"),
        ("memory", "1MB", "below 6MB"),
    ],
)
def test_bad_limit_shows_the_value(tmp_path, key, value, expected):
    path = config(
        tmp_path,
        f"""
        name: limits
        agents:
          - name: a
            limits: {{{key}: "{value}"}}
            tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
        """,
    )
    [problem] = problems(path)
    assert problem.startswith(f"{path}: agents.0.limits.{key}: ")
    assert expected in problem


def test_missing_fields(tmp_path):
    path = config(
        tmp_path,
        """
        agents:
          - tasks: [{name: t, code: {language: shell, source: "true"}}]
          - name: b
            tasks:
              - code: {language: shell}
        """,
    )
    found = problems(path)
    assert f"{path}: agents.0.name: missing required key" in found
    assert f"{path}: agents.1.tasks.0.name: missing required key" in found
    assert any(p.startswith(f"{path}: agents.1.tasks.0.code: give exactly one of") for p in found)


def test_unknown_keys_in_the_native_format(tmp_path):
    path = config(
        tmp_path,
        """
        name: typo
        max_concurent_agents: 3
        agents:
          - name: a
            prority: high
            tasks: [{name: t, code: {language: shell, source: "true", lang: sh}}]
        """,
    )
    found = problems(path)
    assert (
        f"{path}: max_concurent_agents: unknown key (`toka schema` lists the keys of the format)"
        in found
    )
    assert any(p.startswith(f"{path}: agents.0.prority: unknown key") for p in found)
    assert any(p.startswith(f"{path}: agents.0.tasks.0.code.lang: unknown key") for p in found)


def test_bad_values(tmp_path):
    path = config(
        tmp_path,
        """
        name: values
        max_concurrent_agents: 0
        agents:
          - name: a
            priority: urgent
            tasks: [{name: t, code: {language: ruby, source: "puts 1"}}]
          - name: "bad/name"
            tasks: [{name: t}]
        """,
    )
    found = problems(path)
    assert any(p.startswith(f"{path}: max_concurrent_agents: ") and "(got 0)" in p for p in found)
    assert any(p.startswith(f"{path}: agents.0.priority: ") and "'urgent'" in p for p in found)
    assert any(
        p.startswith(f"{path}: agents.0.tasks.0.code.language: ") and "'ruby'" in p for p in found
    )
    assert any(p.startswith(f"{path}: agents.1.name: ") and "'bad/name'" in p for p in found)
    assert (
        f"{path}: agents.1.tasks.0: a task needs `code` (a code task) or `instruction` (an LLM task)"
        in found
    )


def test_bad_yaml_gives_the_line(tmp_path):
    path = config(tmp_path, "name: broken\nagents:\n  - name: a\n    tasks: [\n  oops: 1\n")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: invalid YAML at line ")
    line = int(problem.split("line ")[1].split(",")[0])
    assert 4 <= line <= 6


def test_bad_toml_gives_the_line(tmp_path):
    path = config(tmp_path, 'name = "x"\n[[agents]\n', name="config.toml")
    [problem] = problems(path)
    assert problem.startswith(f"{path}: invalid TOML: ") and "line 2" in problem


@pytest.mark.parametrize("body", ["", "# only a comment\n", "{}\n"])
def test_empty_config(tmp_path, body):
    path = config(tmp_path, body)
    assert problems(path) == [f"{path}: the file is empty"]


def test_top_level_must_be_a_mapping(tmp_path):
    path = config(tmp_path, "- a\n- b\n")
    assert problems(path) == [f"{path}: expected a mapping of keys at the top level, found a list"]


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert problems(missing) == [f"{missing}: no such file"]


def test_missing_code_file(tmp_path):
    path = config(
        tmp_path,
        """
        name: files
        agents:
          - name: a
            tasks: [{name: t, code: {language: shell, file: scripts/absent.sh}}]
        """,
    )
    [problem] = problems(path)
    assert problem.startswith(f"{path}: agents.0.tasks.0.code.file: no such file: ")
    assert problem.endswith("scripts/absent.sh")


def test_duplicate_names(tmp_path):
    path = config(
        tmp_path,
        """
        name: dupes
        agents:
          - name: a
            tasks:
              - {name: t, code: {language: shell, source: "true"}}
              - {name: t, code: {language: shell, source: "true"}}
          - name: b
            tasks: [{name: t, code: {language: shell, source: "true"}}]
          - name: b
            tasks: [{name: t, code: {language: shell, source: "true"}}]
        """,
    )
    found = problems(path)
    assert f"{path}: agents.0: two tasks are named 't'" in found
    assert f"{path}: agents.2.name: agent 'b' is already defined in {path}" in found


def test_every_error_across_files_and_agents_in_one_pass(tmp_path):
    first = config(
        tmp_path,
        """
        name: one
        agents:
          - name: a
            limits: {memory: 12XB}
            tasks: [{name: t, code: {language: shell, source: "true"}}]
          - name: b
            requires: [a, nobody]
            tasks: [{name: t, code: {language: shell, source: "true"}}]
          - name: c
            requires: [d]
            tasks: [{name: t, code: {language: shell, source: "true"}}]
        """,
        "one.yaml",
    )
    second = config(
        tmp_path,
        """
        agents:
          - name: d
            requires: [c]
            tasks: [{name: t, code: {language: shell, source: "true"}}]
          - name: e
            limits: {cpu: lots}
            tasks: [{name: t, code: {language: shell, source: "true"}}]
        """,
        "two.yaml",
    )
    missing = tmp_path / "three.yaml"
    found = problems(first, second, missing)
    assert any(p.startswith(f"{first}: agents.0.limits.memory: invalid memory '12XB'") for p in found)
    assert any(p.startswith(f"{second}: agents.1.limits.cpu: invalid cpu 'lots'") for p in found)
    assert f"{missing}: no such file" in found
    # `a` failed validation but exists: requiring it is fine; `nobody` does not exist.
    assert any("requires 'nobody', which is not defined" in p for p in found)
    assert not any("requires 'a'" in p for p in found)
    assert any("dependency cycle: c -> d -> c" in p for p in found)
    assert len(found) == 5, found


def test_load_raises_config_error_with_issues(tmp_path):
    path = config(tmp_path, agents_yaml(("a", ["b"]), ("b", ["a"])))
    orchestration = load(path)  # loading alone does not check the graph
    assert [agent.name for agent in orchestration.agents] == ["a", "b"]
    with pytest.raises(ConfigError) as info:
        load(tmp_path / "absent.yaml")
    assert [str(issue) for issue in info.value.issues] == [f"{tmp_path / 'absent.yaml'}: no such file"]


def test_cli_prints_every_problem_and_exits_1_without_traceback(tmp_path):
    bad = config(tmp_path, agents_yaml(("a", ["ghost"]), ("b", ["b"])))
    result = run_toka("validate", str(bad), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{tmp_path / 'missing.yaml'}: no such file",
        f"{bad}: agents.0.requires.0: agent 'a' requires 'ghost', which is not defined (defined agents: a, b)",
        f"{bad}: agents.1.requires: dependency cycle: b -> b (each agent requires the next)",
        "3 problem(s) found",
    ]
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("command", ["validate", "plan", "orchestrate"])
def test_every_command_reports_config_errors_the_same_way(tmp_path, command):
    bad = config(tmp_path, "name: x\nagents:\n  - name: a\n    limits: {memory: 12XB}\n    tasks: []\n")
    result = run_toka(command, str(bad))
    assert result.returncode == 1
    assert f"{bad}: agents.0.limits.memory: invalid memory '12XB'" in result.stderr
    assert f"{bad}: agents.0.tasks: " in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_valid_config():
    result = run_toka("validate", str(EXAMPLES / "quickstart.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: quickstart: 5 agents, 6 tasks, 4 waves")


def test_schema_is_json_schema_of_the_native_format():
    result = run_toka("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert schema["title"] == "OrchestrationFile"
    assert {"name", "agents", "defaults", "max_concurrent_agents"} <= set(schema["properties"])
    agent = schema["$defs"]["Agent"]
    assert {"requires", "capabilities", "limits", "priority", "workstream", "tasks"} <= set(
        agent["properties"]
    )
