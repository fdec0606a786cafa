"""The base of the config format's models: unknown keys are refused, a loaded config never changes."""

from pydantic import BaseModel, ConfigDict


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
