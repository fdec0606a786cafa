"""LLM work: provider wire formats, the gateway (retries, rate-limit hook, token counts), and
the messages they share. It knows no Prefect: its callers hand it keys and hooks.
"""

from toka_agents.llm.errors import LlmCancelled, LlmError, MalformedReply
from toka_agents.llm.gateway import Gateway, Retry, TokenUsage, api_key_from_env
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

__all__ = [
    "AssistantMessage",
    "Gateway",
    "LlmCancelled",
    "LlmError",
    "MalformedReply",
    "Message",
    "ModelReply",
    "Retry",
    "SystemMessage",
    "TokenUsage",
    "ToolCall",
    "ToolMessage",
    "ToolSpec",
    "UserMessage",
    "api_key_from_env",
]
