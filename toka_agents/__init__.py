"""toka-agents: run teams of agents on Prefect.

config files --load--> Orchestration --plan--> Plan --compile--> Prefect flow --run-->
agent tasks in Docker sandboxes, reported into Prefect states, artifacts and events.

The public names below are imported when first used (as Prefect's own package does), so that
what needs no Prefect (`toka validate`, `toka plan`, the sandbox) does not wait for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from toka_agents.api import RunResult, run, run_plan
    from toka_agents.config import Orchestration, load
    from toka_agents.config.models import LlmOverrides
    from toka_agents.errors import (
        ConfigError,
        ConfigIssue,
        ExecutionError,
        LlmCancelled,
        LlmError,
        MalformedReply,
        SandboxError,
        TokaError,
    )
    from toka_agents.executor import TaskOutcome
    from toka_agents.orchestration import (
        RunOptions,
        answer,
        approve,
        compile_flow,
        deploy,
        orchestrate,
        reject,
        serve,
    )
    from toka_agents.planning import Plan, Validation, plan, validate

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(["RunResult", "run", "run_plan"], "toka_agents.api"),
    **dict.fromkeys(["Orchestration", "load"], "toka_agents.config"),
    "LlmOverrides": "toka_agents.config.models",
    **dict.fromkeys(
        [
            "ConfigError",
            "ConfigIssue",
            "ExecutionError",
            "LlmCancelled",
            "LlmError",
            "MalformedReply",
            "SandboxError",
            "TokaError",
        ],
        "toka_agents.errors",
    ),
    "TaskOutcome": "toka_agents.executor",
    **dict.fromkeys(
        ["RunOptions", "answer", "approve", "compile_flow", "deploy", "orchestrate", "reject", "serve"],
        "toka_agents.orchestration",
    ),
    **dict.fromkeys(["Plan", "Validation", "plan", "validate"], "toka_agents.planning"),
}
"""Each public name and the module it comes from."""

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "ExecutionError",
    "LlmCancelled",
    "LlmError",
    "LlmOverrides",
    "MalformedReply",
    "Orchestration",
    "Plan",
    "RunOptions",
    "RunResult",
    "SandboxError",
    "TaskOutcome",
    "TokaError",
    "Validation",
    "__version__",
    "answer",
    "approve",
    "compile_flow",
    "deploy",
    "load",
    "orchestrate",
    "plan",
    "reject",
    "run",
    "run_plan",
    "serve",
    "validate",
]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'toka_agents' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
