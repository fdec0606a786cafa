"""toka-agents: run teams of agents on Prefect.

config files --load--> Orchestration --plan--> Plan --compile--> Prefect flow --run-->
agent tasks in Docker sandboxes, reported into Prefect states, artifacts and events.
"""

__version__ = "0.1.0"

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

__all__ = [
    "ConfigError",
    "ConfigIssue",
    "ExecutionError",
    "LlmOverrides",
    "LlmCancelled",
    "LlmError",
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
