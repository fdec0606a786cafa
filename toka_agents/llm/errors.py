"""The errors of the LLM room, kept in `toka_agents.errors` with every other error; here for the
LLM modules' imports."""

from toka_agents.errors import LlmCancelled, LlmError, MalformedKind, MalformedReply

__all__ = ["LlmCancelled", "LlmError", "MalformedKind", "MalformedReply"]
