"""LLM work: provider wire formats, the gateway (retries, rate-limit hook, token counts), the
tools an agent works with, and the bounded agent loop. It knows no Prefect: its callers hand it
the key, the rate-limit hook, the step runner and the sandbox's `run_code`.
"""

from toka_agents.llm.errors import LlmCancelled, LlmError, MalformedReply
from toka_agents.llm.gateway import Gateway, Retry, TokenUsage, api_key_from_env
from toka_agents.llm.loop import LoopResult, StepRunner, TaskBrief, run_directly, run_loop
from toka_agents.llm.messages import (
    AssistantMessage,
    Message,
    ModelReply,
    SystemMessage,
    ToolCall,
    ToolMessage,
    ToolSpec,
    UserMessage,
)
from toka_agents.llm.tools import RunCode, Toolbox, ToolResult, Verdict, sandbox_runner, tool_specs

__all__ = [
    "AssistantMessage",
    "Gateway",
    "LlmCancelled",
    "LlmError",
    "LoopResult",
    "MalformedReply",
    "Message",
    "ModelReply",
    "Retry",
    "RunCode",
    "StepRunner",
    "SystemMessage",
    "TaskBrief",
    "TokenUsage",
    "ToolCall",
    "ToolMessage",
    "ToolResult",
    "ToolSpec",
    "Toolbox",
    "UserMessage",
    "Verdict",
    "api_key_from_env",
    "run_directly",
    "run_loop",
    "sandbox_runner",
    "tool_specs",
]
