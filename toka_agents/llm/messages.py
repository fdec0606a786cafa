"""A conversation with a model, in no provider's format: messages, tool specs, tool calls, replies.

The provider modules (`openai`, `anthropic`) translate these to and from their wire formats;
nothing else in toka-agents sees a wire format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

TOOL_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""What both providers accept as a tool's name."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolSpec(_Frozen):
    """A tool the model may call: its name, what it does, and its arguments as a JSON Schema."""

    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str
    parameters: dict[str, Any] = Field(description="JSON Schema of the arguments object.")

    @field_validator("parameters")
    @classmethod
    def _a_schema_of_an_object(cls, schema: dict[str, Any]) -> dict[str, Any]:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise ValueError(f"not a JSON Schema: {exc.message}") from None
        if schema.get("type") != "object":
            raise ValueError("a tool's parameters must be a JSON Schema of type 'object'")
        return schema


class ToolCall(_Frozen):
    """One call of a tool, as the model asked for it."""

    id: str
    name: str
    arguments: dict[str, Any]


class SystemMessage(_Frozen):
    role: Literal["system"] = "system"
    content: str


class UserMessage(_Frozen):
    role: Literal["user"] = "user"
    content: str


class AssistantMessage(_Frozen):
    role: Literal["assistant"] = "assistant"
    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()


class ToolMessage(_Frozen):
    """What one tool call gave back; `is_error` when the tool refused or failed."""

    role: Literal["tool"] = "tool"
    tool_call_id: str
    name: str
    content: str
    is_error: bool = False


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class ModelReply(_Frozen):
    """One answer of the model: its text, the tools it calls, and what the call cost."""

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    stop_reason: str | None = Field(None, description="As the provider said it: stop, tool_use, ...")
    model: str = Field("", description="The model that answered, as the provider names it.")

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def as_message(self) -> AssistantMessage:
        return AssistantMessage(content=self.text, tool_calls=self.tool_calls)
