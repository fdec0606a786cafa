"""Run inputs: declared under `inputs:`, given from the CLI, a file or Python, checked all at
once, filled into instructions, `env` and `network_allow`, and read by code as TOKA_INPUT_*."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import EXAMPLES, run_toka, write_config

from toka_agents import ConfigError, load, plan, validate
from toka_agents.config.inputs import InputDeclaration

INPUTS_EXAMPLE = EXAMPLES / "inputs.yaml"

EVERY_TYPE = """
name: every-type
inputs:
  topic: {type: string, required: true, title: Topic, description: What to research.}
  days: {type: integer, default: 3}
  ratio: {type: number, default: 0.5}
  strict: {type: boolean, default: false}
  mode: {choices: [fast, thorough], default: fast}
  tags: {type: list, default: []}
  repo: {type: path}
agents:
  - name: a
    tasks: [{name: t, code: {language: shell, source: "true"}}]
"""

PLACES = r"""
name: places
inputs:
  topic: {required: true}
  host: {default: "API.example.com:8443"}
  extra-host: {}
  tags: {type: list, default: [x, y]}
defaults:
  env: {HEADLINE: "{topic} ({tags})"}
agents:
  - name: researcher
    network_allow: ["{host}", "{extra-host}", "fixed.example.org"]
    env: {ASK: 'about {topic}, as {"json": {"stays": 1}}, not {{topic}}'}
    tasks:
      - {name: think, instruction: "Research {topic}; answer as {\"summary\": \"...\"}."}
      - name: code
        code: {language: python, source: "print(f'{topic}', {'a': 1})"}
"""


def planned(tmp_path, config: str, **inputs):
    return plan(load(write_config(tmp_path, config)), inputs=inputs)


def problems(tmp_path, config: str, **inputs) -> list[str]:
    with pytest.raises(ConfigError) as raised:
        planned(tmp_path, config, **inputs)
    return [str(issue) for issue in raised.value.issues]


def test_text_from_a_command_line_is_read_as_each_declared_type_and_defaults_fill_the_rest(tmp_path):
    given = {"topic": "solar power", "days": "5", "ratio": "2.5", "strict": "TRUE", "tags": "a, b,"}
    result = planned(tmp_path, EVERY_TYPE, **given)
    assert result.inputs == {
        "topic": "solar power",
        "days": 5,
        "ratio": 2.5,
        "strict": True,
        "mode": "fast",
        "tags": ["a", "b"],
    }
    env = result.tasks[0].env
    assert {name: env[name] for name in env if name.startswith("TOKA_INPUT")} == {
        "TOKA_INPUT_TOPIC": "solar power",
        "TOKA_INPUT_DAYS": "5",
        "TOKA_INPUT_RATIO": "2.5",
        "TOKA_INPUT_STRICT": "true",
        "TOKA_INPUT_MODE": "fast",
        "TOKA_INPUT_TAGS": '["a", "b"]',
        "TOKA_INPUTS": json.dumps(result.inputs),
    }  # `repo` has no value: no variable
    assert planned(tmp_path, EVERY_TYPE, topic="t", tags="[a, 'b c']", days=7).inputs["tags"] == [
        "a",
        "b c",
    ]
    declared = result.declared_inputs
    assert declared["topic"] == InputDeclaration(
        type="string", title="Topic", description="What to research.", required=True
    )
    assert (declared["mode"].type, declared["mode"].choices, declared["repo"].default) == (
        "string",
        ["fast", "thorough"],
        None,
    )


def test_every_bad_value_is_refused_at_once_one_line_each_naming_its_input(tmp_path):
    assert problems(
        tmp_path, EVERY_TYPE, topc="x", days="many", ratio="nan", strict="maybe", mode="slow", repo=" "
    ) == [
        "<inputs>: input 'topc' is not declared (declared: days, mode, ratio, repo, strict, tags, topic)",
        "<inputs>: input 'topic' is required",
        "<inputs>: input 'days': 'many' is not an integer",
        "<inputs>: input 'ratio': 'nan' is not a finite number",
        "<inputs>: input 'strict': 'maybe' is not a boolean (true or false)",
        "<inputs>: input 'mode': 'slow' is not one of the choices: fast, thorough",
        "<inputs>: input 'repo': an empty path",
    ]
    assert problems(tmp_path, EVERY_TYPE, topic="t", days=2.5, tags=[["nested"]]) == [
        "<inputs>: input 'days': 2.5 is not an integer",
        "<inputs>: input 'tags': [['nested']] is not a list of strings",
    ]


def test_placeholders_fill_instructions_env_and_network_allow_but_never_code(tmp_path):
    result = planned(tmp_path, PLACES, topic="solar power")
    think, code = result.tasks
    assert think.instruction == 'Research solar power; answer as {"summary": "..."}.'
    assert think.env["HEADLINE"] == "solar power (x, y)"
    assert think.env["ASK"] == 'about solar power, as {"json": {"stays": 1}}, not {topic}'
    # An entry filled with nothing (an input with no value) allows nothing; hosts are lower case.
    assert think.network_allow == ("api.example.com:8443", "fixed.example.org")
    assert code.code.source == "print(f'{topic}', {'a': 1})"
    assert code.env["TOKA_INPUT_HOST"] == "API.example.com:8443"
    assert "TOKA_INPUT_EXTRA_HOST" not in code.env

    assert problems(tmp_path, PLACES, topic="t", host="not a host") == [
        f"{tmp_path / 'config.yaml'}: agents.0.network_allow.0: filled from '{{host}}': 'not a host' "
        "is not a host to allow: a host name or IPv4 address, optionally with `:port` (1-65535), "
        "such as 'api.example.com' or '10.0.0.5:8000'"
    ]


def test_a_placeholder_naming_no_input_is_a_config_error_at_its_key(tmp_path):
    config = PLACES.replace("Research {topic}", "Research {topc}").replace("{topic} ({tags})", "{day}")
    file = tmp_path / "config.yaml"
    declared = "(declared: extra-host, host, tags, topic)"
    unknown = [
        f"{file}: agents.0.tasks.0.instruction: placeholder {{topc}} names no declared input {declared}",
        f"{file}: defaults.env.HEADLINE: placeholder {{day}} names no declared input {declared}",
    ]
    assert problems(tmp_path, config, topic="t") == unknown
    checked = validate([file], inputs={"topic": "t", "days": "x"})
    assert [str(issue) for issue in checked.issues] == [
        f"<inputs>: input 'days' is not declared {declared}",
        *unknown,
    ]


def test_declarations_refuse_defaults_off_their_type_unknown_keys_and_clashing_names(tmp_path):
    config = """
    inputs:
      days: {type: integer, default: many}
      mode: {choices: [fast, thorough], default: slow}
      topic: {required: true, default: x}
      tags: {type: list, colour: red}
      flag: {type: boolean, choices: [true]}
    agents: [{name: a, tasks: [{name: t, code: {language: shell, source: "true"}}]}]
    """
    file = write_config(tmp_path, textwrap.dedent(config))
    assert [str(issue) for issue in validate([file], require_inputs=False).issues] == [
        f"{file}: inputs.days.default: 'many' is not an integer",
        f"{file}: inputs.mode.default: 'slow' is not one of the choices: fast, thorough",
        f"{file}: inputs.topic: give `default` or `required: true`, not both",
        f"{file}: inputs.tags.colour: unknown key (`toka schema` lists the keys of the format)",
        f"{file}: inputs.flag.choices: a boolean input has no choices",
    ]
    clash = (
        "inputs: {9x: {}, a-b: {}, A_B: {}}\nagents: [{name: a, tasks: [{name: t, instruction: x}]}]\n"
    )
    file = write_config(tmp_path, clash)
    assert [str(issue) for issue in validate([file]).issues] == [
        f"{file}: inputs: '9x' is not an input name: letters, digits, '_' and '-', starting with "
        "a letter or '_'"
    ]
    file = write_config(tmp_path, clash.replace("9x: {}, ", ""))
    assert [str(issue) for issue in validate([file]).issues] == [
        f"{file}: inputs: inputs 'a-b' and 'A_B' are both read as $TOKA_INPUT_A_B"
    ]


def test_a_config_without_inputs_keeps_its_braces_as_plain_text(tmp_path):
    config = """
    defaults: {env: {X: "{topic}"}}
    agents: [{name: a, env: {Y: "{{y}}"}, tasks: [{name: t, instruction: "Explain {topic}."}]}]
    """
    result = planned(tmp_path, textwrap.dedent(config))
    [task] = result.tasks
    assert (task.instruction, task.env) == ("Explain {topic}.", {"X": "{topic}", "Y": "{{y}}"})
    assert (result.inputs, result.declared_inputs) == ({}, {})
    assert problems(tmp_path, textwrap.dedent(config), topic="x") == [
        "<inputs>: input 'topic' is not declared (declared: the config declares no inputs)"
    ]
    unfillable = "agents: [{name: a, network_allow: ['{host}'], tasks: [{name: t, instruction: x}]}]"
    assert problems(tmp_path, unfillable)[0].endswith(
        "agents.0.network_allow.0: '{host}' is not a host to allow: a host name or IPv4 address, "
        "optionally with `:port` (1-65535), such as 'api.example.com' or '10.0.0.5:8000'"
    )


def test_tokas_specs_beside_a_native_file_with_inputs_are_not_filled(tmp_path):
    spec = """
    metadata: {name: "toka-agent", version: "v0.3.0", workstream: "Things"}
    spec: {name: "Toka Agent", priority: "high"}
    capabilities: {primary: ["filesystem-read"]}
    tasks:
      default:
        - description: "Return {feature} as {\\"json\\": true}"
          priority: "high"
    dependencies: {required: {}, optional: {}}
    """
    native = "inputs: {topic: {default: sun}}\nagents: [{name: n, tasks: [{name: t, instruction: '{topic}'}]}]\n"
    files = [write_config(tmp_path, textwrap.dedent(spec), "spec.yaml"), write_config(tmp_path, native)]
    result = plan(load(*files))
    instructions = {task.id: task.instruction for task in result.tasks}
    assert instructions["n/t"] == "sun"
    assert [text for task_id, text in instructions.items() if task_id != "n/t"] == [
        'Return {feature} as {"json": true}'
    ]
    assert all(task.env["TOKA_INPUT_TOPIC"] == "sun" for task in result.tasks)


def test_validate_checks_a_config_alone_and_plan_refuses_a_run_without_required_values():
    checked = validate([INPUTS_EXAMPLE], require_inputs=False)
    assert checked.ok and checked.plan is not None and "topic" not in checked.plan.inputs
    assert [str(issue) for issue in validate([INPUTS_EXAMPLE]).issues] == [
        "<inputs>: input 'topic' is required"
    ]
    assert run_toka("validate", str(INPUTS_EXAMPLE)).returncode == 0


def test_toka_plan_shows_the_inputs_and_takes_a_file_that_input_flags_override(tmp_path):
    values = write_config(tmp_path, "topic: wind\ndays: 9\ntags: [a, b]\n", "values.yaml")
    shown = run_toka("plan", str(INPUTS_EXAMPLE), "--inputs-file", str(values), "--input", "days=2=x")
    assert shown.returncode == 1 and shown.stderr == "<inputs>: input 'days': '2=x' is not an integer\n"

    shown = run_toka(
        "plan",
        str(INPUTS_EXAMPLE),
        "--inputs-file",
        str(values),
        "--input",
        "days=4",
        env={"COLUMNS": "200"},
    )
    assert shown.returncode == 0, shown.stderr
    rows = [" ".join(line.strip("│ ").split()) for line in shown.stdout.splitlines()]
    assert "topic │ string │ required │ wind │ What the team researches." in rows
    assert "days │ integer │ 3 │ 4 │ How many days of data." in rows
    assert any(row.startswith("tags │ list │ [] │") for row in rows), shown.stdout

    filled = run_toka("plan", str(write_config(tmp_path, PLACES)), "--input", "topic=wind")
    assert 'researcher/think: Research wind; answer as {"summary": "..."}.' in filled.stdout

    as_json = json.loads(run_toka("plan", str(INPUTS_EXAMPLE), "--json", "--input", "topic=x").stdout)
    assert as_json["inputs"] == {"topic": "x", "days": 3, "mode": "fast", "tags": []}
    assert as_json["declared_inputs"]["mode"]["choices"] == ["fast", "thorough"]

    malformed = run_toka("plan", str(INPUTS_EXAMPLE), "--input", "topic", "--input", "=x")
    assert malformed.returncode == 1
    assert malformed.stderr.splitlines() == [
        "<command line>: --input: 'topic' is not NAME=VALUE",
        "<command line>: --input: '=x' is not NAME=VALUE",
    ]
    schema = json.loads(run_toka("schema").stdout)
    assert set(schema["$defs"]["InputDeclaration"]["properties"]) == {
        "type",
        "title",
        "description",
        "choices",
        "default",
        "required",
    }
    assert schema["properties"]["inputs"]["additionalProperties"] == {"$ref": "#/$defs/InputDeclaration"}


RUNS = ("prefect_api", "sandbox_image", "no_leftover_run_containers")


def orchestrate_example(tmp_path, prefect_api: str, *inputs: str, json_output: bool = False):
    """`toka orchestrate flows/examples/inputs.yaml --input ...` against the session's server."""
    flags = [part for given in inputs for part in ("--input", given)]
    output = ["--output", "json"] if json_output else []
    runs = ["--workspace-dir", str(tmp_path / "runs")]
    return run_toka(
        "orchestrate", str(INPUTS_EXAMPLE), *flags, *output, *runs, env={"PREFECT_API_URL": prefect_api}
    )


@pytest.mark.usefixtures(*RUNS)
def test_orchestrate_hands_the_values_to_the_code_as_environment_variables(tmp_path, prefect_api):
    topic = "topic=solar power, with = inside"
    result = orchestrate_example(
        tmp_path, prefect_api, topic, "days=5", "tags=solar,grid", json_output=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [task] = json.loads(result.stdout)["tasks"]
    values = {
        "topic": "solar power, with = inside",
        "days": 5,
        "mode": "fast",
        "tags": ["solar", "grid"],
    }
    assert task["stdout_tail"].splitlines() == [
        "headline: solar power, with = inside, 5 days, fast",
        "TOKA_INPUT_DAYS=5",
        "TOKA_INPUT_MODE=fast",
        'TOKA_INPUT_TAGS=["solar", "grid"]',
        "TOKA_INPUT_TOPIC=solar power, with = inside",
        f"TOKA_INPUTS={json.dumps(values)}",
        "120 hours of data, 2 tag(s)",
    ]


@pytest.mark.usefixtures(*RUNS)
def test_bad_inputs_exit_1_with_a_line_each_and_start_no_flow_run(tmp_path, prefect_api):
    result = orchestrate_example(tmp_path, prefect_api, "topc=solar", "days=many", "mode=slow")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.splitlines() == [
        "<inputs>: input 'topc' is not declared (declared: days, mode, tags, topic)",
        "<inputs>: input 'topic' is required",
        "<inputs>: input 'days': 'many' is not an integer",
        "<inputs>: input 'mode': 'slow' is not one of the choices: fast, thorough",
    ]
    assert "Flow run" not in result.stdout and not (tmp_path / "runs").exists()
