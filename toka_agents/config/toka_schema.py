"""Toka's JSON Schema for agent specs (`schemas/toka-agent-spec.yaml`, draft 2019-09), checked
as warnings only: most real specs do not pass it, and they still load and run.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml
from jsonschema import Draft201909Validator

from toka_agents.errors import ConfigIssue

MAX_WARNINGS_PER_FILE = 10


@functools.cache
def _validator() -> Draft201909Validator:
    text = resources.files("toka_agents.config").joinpath("schemas/toka-agent-spec.yaml").read_text()
    return Draft201909Validator(yaml.safe_load(text))


def check(document: dict[str, Any], file: str) -> list[ConfigIssue]:
    """Where the spec departs from Toka's schema, as warnings with key paths."""
    errors = sorted(_validator().iter_errors(document), key=lambda e: [str(p) for p in e.absolute_path])
    warnings = [
        ConfigIssue(
            file, ".".join(str(p) for p in error.absolute_path), f"Toka schema: {_short(error.message)}"
        )
        for error in errors[:MAX_WARNINGS_PER_FILE]
    ]
    if len(errors) > MAX_WARNINGS_PER_FILE:
        more = len(errors) - MAX_WARNINGS_PER_FILE
        warnings.append(ConfigIssue(file, "", f"Toka schema: {more} more departures not shown"))
    return warnings


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."
