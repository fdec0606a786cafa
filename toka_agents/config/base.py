"""The base of the config format's models (unknown keys are refused, a loaded config never
changes) and the field types several of them share: names and durations."""

from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer

from toka_agents.config.limits import at_most_timeout, format_seconds, parse_duration


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[
    str,
    Field(
        pattern=_NAME_PATTERN,
        max_length=100,
        description="Letters, digits, '-', '_' and '.', starting with a letter or digit.",
    ),
]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    AfterValidator(at_most_timeout),
    PlainSerializer(format_seconds, return_type=str, when_used="json"),
    Field(json_schema_extra={"type": "string", "examples": ["30s", "5m", "2h", "1800"]}),
]
