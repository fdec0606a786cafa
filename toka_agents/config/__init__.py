"""Config: reads orchestration files in every supported dialect into one pydantic model.

It knows nothing of Prefect or Docker. Every problem names its file and key path.
"""

from toka_agents.config.inputs import InputDeclaration
from toka_agents.config.loader import LoadResult, load, load_paths
from toka_agents.config.models import (
    Agent,
    CodeSource,
    CodeTask,
    Defaults,
    Limits,
    LlmSettings,
    LlmTask,
    Orchestration,
    OrchestrationFile,
    Settings,
)

__all__ = [
    "Agent",
    "CodeSource",
    "CodeTask",
    "Defaults",
    "InputDeclaration",
    "Limits",
    "LlmSettings",
    "LlmTask",
    "LoadResult",
    "Orchestration",
    "OrchestrationFile",
    "Settings",
    "load",
    "load_paths",
]
