"""Run inputs: what a config declares under `inputs:`, and the values a run is given for them.

A declaration says an input's type, choices, default or `required: true`. `resolve_inputs`
checks the values a run is given (from the CLI as text, from Python or a file as YAML gives
them) against the declarations, every problem at once, one line each naming the input.
A value reaches the agents as text in `{name}` placeholders (`as_text`) and as the
environment variables `TOKA_INPUT_<NAME>` and `TOKA_INPUTS` (`input_env`); the sandbox also
writes `TOKA_INPUTS` to a file, `$TOKA_INPUTS_FILE`, that the code can read and not change.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from toka_agents.config.documents import DocumentProblem, parse_yaml, read_document
from toka_agents.errors import ConfigError, ConfigIssue

InputType = Literal["string", "integer", "number", "boolean", "list", "path"]
InputValue = str | int | float | bool | list[str]

INPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_\-]*")
"""CrewAI's placeholder name: what `{name}` may hold, so what an input may be called."""
INPUTS_FILE = "<inputs>"
"""The `file` of the problems with the values a run is given (no file says them)."""


class InputDeclaration(BaseModel):
    """One input a run takes: its type, what a person is told of it, its choices and default."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: InputType = Field(
        "string",
        description="string, integer, number, boolean, list (of strings) or path (on the machine "
        "that runs the flow).",
    )
    title: str | None = Field(None, description="Its label in a form; default: its name.")
    description: str = ""
    choices: list[str | int | float] | None = Field(
        None, min_length=1, description="The only values allowed (for a list, its items)."
    )
    default: Any = Field(None, description="The value when a run gives none.")
    required: bool = Field(False, description="A run must give a value (no `default` then).")

    @field_validator("choices")
    @classmethod
    def _choices_of_its_type(cls, choices: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        kind = info.data.get("type")
        if choices is None or kind is None:
            return choices
        if kind == "boolean":
            raise ValueError("a boolean input has no choices")
        item_kind = "string" if kind == "list" else kind
        return [coerce_value(item_kind, choice) for choice in choices]

    @field_validator("default")
    @classmethod
    def _default_of_its_type(cls, default: Any, info: ValidationInfo) -> Any:
        kind = info.data.get("type")
        if default is None or kind is None:
            return default
        value = coerce_value(kind, default)
        outside = outside_choices(value, info.data.get("choices"))
        if outside:
            raise ValueError(outside)
        return value

    @model_validator(mode="after")
    def _default_or_required(self) -> InputDeclaration:
        if self.required and self.default is not None:
            raise ValueError("give `default` or `required: true`, not both")
        return self


def env_name(name: str) -> str:
    """The environment variable code reads an input from: `TOKA_INPUT_<NAME>`."""
    return "TOKA_INPUT_" + name.upper().replace("-", "_")


def _input_names(declared: dict[str, InputDeclaration]) -> dict[str, InputDeclaration]:
    seen: dict[str, str] = {}
    for name in declared:
        if not INPUT_NAME.fullmatch(name) or len(name) > 100:
            raise ValueError(
                f"{name!r} is not an input name: letters, digits, '_' and '-', starting with a "
                "letter or '_'"
            )
        variable = env_name(name)
        if variable in seen:
            raise ValueError(f"inputs {seen[variable]!r} and {name!r} are both read as ${variable}")
        seen[variable] = name
    return declared


Inputs = Annotated[dict[str, InputDeclaration], AfterValidator(_input_names)]


def coerce_value(kind: InputType, value: Any) -> InputValue:
    """`value` as an input of type `kind`; text (from a command line) is read as that type.
    Raises `ValueError` saying why it is not one."""
    if kind == "list":
        return _as_list(value)
    if isinstance(value, (list, dict)) or value is None:
        raise ValueError(f"{_shown(value)} is not {_A[kind]}")
    if kind == "boolean":
        return _as_boolean(value)
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not {_A[kind]}")
    if kind in ("integer", "number"):
        return _as_number(kind, value)
    text = value if isinstance(value, str) else str(value)
    if kind == "path" and not text.strip():
        raise ValueError("an empty path")
    return text


_A = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean (true or false)",
    "list": "a list of strings",
    "path": "a path",
}


def _shown(value: Any) -> str:
    return repr(value) if not isinstance(value, bool) else str(value).lower()


def _as_boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"{_shown(value)} is not {_A['boolean']}")


def _as_number(kind: InputType, value: Any) -> int | float:
    number: int | float | None = None
    if isinstance(value, (int, float)):
        number = value
    elif isinstance(value, str):
        for read in (int, float) if kind == "number" else (int,):
            try:
                number = read(value.strip())
                break
            except ValueError:
                continue
    if number is None or (kind == "integer" and not isinstance(number, int)):
        raise ValueError(f"{_shown(value)} is not {_A[kind]}")
    if not math.isfinite(number):
        raise ValueError(f"{_shown(value)} is not a finite number")
    return number


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            value = _parsed_list(value)
        else:
            return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{_shown(value)} is not {_A['list']}")
    items = []
    for item in value:
        if isinstance(item, (bool, list, dict)) or item is None:
            raise ValueError(f"{_shown(list(value))} is not {_A['list']}")
        items.append(item if isinstance(item, str) else str(item))
    return items


def _parsed_list(text: str) -> Any:
    try:
        return parse_yaml(text)
    except DocumentProblem:
        raise ValueError(f"{text!r} is not {_A['list']} (a YAML or JSON list)") from None


def outside_choices(value: InputValue, choices: list[Any] | None) -> str | None:
    """Why `value` is not allowed by `choices`, or None when it is."""
    if choices is None:
        return None
    outside = [item for item in (value if isinstance(value, list) else [value]) if item not in choices]
    if not outside:
        return None
    allowed = ", ".join(str(choice) for choice in choices)
    return f"{_shown(outside[0])} is not one of the choices: {allowed}"


def resolve_inputs(
    declared: Mapping[str, InputDeclaration],
    given: Mapping[str, Any] | None,
    *,
    require: bool = True,
) -> tuple[dict[str, InputValue], list[ConfigIssue]]:
    """The value of every input that has one (given, else its default), each of its declared
    type, and every problem with what was given, one issue each naming the input.
    `require=False`: a required input given no value is not a problem (a config checked alone).
    """
    given = dict(given or {})
    issues: list[ConfigIssue] = []
    names = ", ".join(sorted(declared)) or "the config declares no inputs"
    for name in given:
        if name not in declared:
            issues.append(_issue(f"input {name!r} is not declared (declared: {names})"))
    values: dict[str, InputValue] = {}
    for name, declaration in declared.items():
        if name not in given:
            if declaration.default is not None:
                values[name] = declaration.default
            elif declaration.required and require:
                issues.append(_issue(f"input {name!r} is required"))
            continue
        try:
            value = coerce_value(declaration.type, given[name])
        except ValueError as exc:
            issues.append(_issue(f"input {name!r}: {exc}"))
            continue
        outside = outside_choices(value, declaration.choices)
        if outside:
            issues.append(_issue(f"input {name!r}: {outside}"))
            continue
        values[name] = value
    return values, issues


def _issue(message: str) -> ConfigIssue:
    return ConfigIssue(INPUTS_FILE, "", message)


def as_text(value: InputValue) -> str:
    """A value as a placeholder shows it: lists as `a, b`, booleans as `true`/`false`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ", ".join(value)
    return str(value)


def input_env(values: Mapping[str, InputValue]) -> dict[str, str]:
    """`TOKA_INPUT_<NAME>` for each value (lists as a JSON array), and `TOKA_INPUTS`, all of
    them as one JSON object."""
    env = {
        env_name(name): json.dumps(value) if isinstance(value, list) else as_text(value)
        for name, value in values.items()
    }
    return {**env, "TOKA_INPUTS": json.dumps(dict(values))}


def read_inputs_file(path: Path) -> dict[str, Any]:
    """The values in a YAML or JSON file of `name: value`; raises `ConfigError` naming the file."""
    shown = str(path)
    try:
        document = read_document(path)
    except DocumentProblem as problem:
        raise ConfigError([ConfigIssue(shown, problem.path, problem.message)]) from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        found = type(document).__name__
        expected = f"expected a mapping of input names to values, found a {found}"
        raise ConfigError([ConfigIssue(shown, "", expected)])
    return {str(name): value for name, value in document.items()}


_SCHEMA_TYPES: dict[InputType, dict[str, Any]] = {
    "string": {"type": "string"},
    "path": {"type": "string"},
    "integer": {"type": "integer"},
    "number": {"type": "number"},
    "boolean": {"type": "boolean"},
    "list": {"type": "array", "items": {"type": "string"}},
}


def inputs_schema(declared: Mapping[str, InputDeclaration], given: Mapping[str, Any]) -> dict[str, Any]:
    """The inputs as a JSON Schema object, what a form asks: a field per input with its title,
    description, type, choices and default (a value in `given` wins), in the config's order
    (`position`), the required ones that `given` lacks marked required."""
    properties: dict[str, Any] = {}
    for position, (name, declaration) in enumerate(declared.items()):
        schema: dict[str, Any] = {
            "title": declaration.title or name,
            "description": declaration.description or f"`{name}` ({declaration.type})",
            "position": position,
            **_SCHEMA_TYPES[declaration.type],
        }
        if declaration.choices is not None:
            if declaration.type == "list":
                schema["items"] = {**schema["items"], "enum": list(declaration.choices)}
            else:
                schema["enum"] = list(declaration.choices)
        default = given.get(name, declaration.default)
        if default is not None:
            schema["default"] = default
        properties[name] = schema
    required = [name for name, d in declared.items() if d.required and name not in given]
    return {"type": "object", "properties": properties, "required": required}
