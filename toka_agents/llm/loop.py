"""The agent loop: an LLM carries out one task with its tools, within bounds.

It builds the prompt from the agent's context, asks the model, runs the tools the model calls,
feeds their results back, and goes on until the model calls `finish` (whose verdict decides
success; words in its text never do) or a bound is hit: steps, tokens, wall-clock time. A
malformed reply is fed back to the model once; a second one in a row ends the task, named.

Every model call and tool call goes through a step runner, `runner(kind, name, fn, *args)`,
which must return `fn(*args)`: `orchestration.tasks` hands in one that makes each a Prefect
task run; tests hand in a plain function. The loop itself knows no Prefect.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from toka_agents.config.models import TokenPrice
from toka_agents.errors import NoAnswer, SandboxError
from toka_agents.llm.errors import LlmCancelled, LlmError, MalformedReply
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
from toka_agents.llm.tools import WORKSPACE, Toolbox, ToolResult
from toka_agents.sandbox import SandboxCancelled

T = TypeVar("T")
StepRunner = Callable[..., Any]
"""`runner(kind, name, fn, *args)` runs one step ("model" or "tool") and returns `fn(*args)`."""
Complete = Callable[[Sequence[Message], Sequence[ToolSpec]], ModelReply]
"""A model call: `Gateway.complete`."""

REDACTED = "[redacted]"
EndedBy = Literal[
    "finish",
    "max_steps",
    "max_tokens",
    "timeout",
    "malformed",
    "llm_error",
    "sandbox_error",
    "cancelled",
    "no_answer",
]


def run_directly(kind: str, name: str, fn: Callable[..., T], *args: Any) -> T:
    """The plainest step runner: call the step here and now."""
    return fn(*args)


class TaskBrief(BaseModel):
    """What the model is told about itself and its task."""

    agent: str
    task: str
    instruction: str
    expected_output: str | None = Field(None, description="What the finish summary should hand on.")
    description: str = ""
    objectives: list[str] = []
    capabilities: list[str] = []
    directives: list[str] = Field([], description="Behavioural directives of a Toka spec.")
    success_criteria: list[str] = []
    upstream: dict[str, str] = Field({}, description="Finished upstream agents and their summaries.")
    may_write: bool = False


class LoopResult(BaseModel):
    """How the loop ended, what it used, and the conversation with secrets redacted."""

    success: bool
    summary: str = Field(
        description="The model's summary at `finish`, or why the loop ended without it."
    )
    ended_by: EndedBy
    steps: int = Field(description="Model calls made.")
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model_seconds: float = Field(0.0, description="Time spent waiting for the model.")
    transcript: list[Message] = []

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def cost(self, price: TokenPrice | None) -> float | None:
        if price is None:
            return None
        return (self.input_tokens * price.input + self.output_tokens * price.output) / 1_000_000


class _Ended(Exception):
    def __init__(self, ended_by: EndedBy, reason: str) -> None:
        super().__init__(reason)
        self.ended_by: EndedBy = ended_by


def run_loop(
    brief: TaskBrief,
    complete: Complete,
    toolbox: Toolbox,
    *,
    max_steps: int,
    max_tokens: int | None = None,
    timeout: float | None = None,
    runner: StepRunner = run_directly,
    secrets: Sequence[str] = (),
    cancel: threading.Event | None = None,
) -> LoopResult:
    """Carry out `brief` with the model behind `complete` and the tools of `toolbox`.

    Never raises for the task's own failure: the result says how it ended. `timeout` is the
    task's wall-clock limit in seconds, checked between steps (a model call in flight is
    bounded by the gateway's own timeout, a tool call by the sandbox's).
    """
    loop = _Loop(brief, complete, toolbox, runner, cancel or threading.Event())
    started = time.monotonic()
    try:
        listing = loop.tool(
            ToolCall(id="workspace", name="list_files", arguments={"path": "."}), by_model=False
        )
        loop.messages = prompt(brief, listing.content)
        malformed: MalformedReply | None = None
        while True:
            loop.check_cancel()
            if loop.steps >= max_steps:
                raise _Ended(
                    "max_steps", f"the model did not finish within llm.max_steps {max_steps} steps"
                )
            if max_tokens is not None and loop.tokens >= max_tokens:
                raise _Ended(
                    "max_tokens",
                    f"the task used {loop.tokens} tokens, reaching llm.max_tokens_per_task {max_tokens}",
                )
            if timeout is not None and time.monotonic() - started >= timeout:
                raise _Ended("timeout", f"the task ran past its time limit of {timeout:g}s")
            try:
                reply = loop.ask()
            except MalformedReply as exc:
                if malformed is not None:
                    raise _Ended(
                        "malformed", f"the model's reply was malformed twice in a row: {exc}"
                    ) from None
                malformed = exc
                loop.messages.append(UserMessage(content=_malformed_note(exc, toolbox.specs)))
                continue
            malformed = None
            loop.messages.append(reply.as_message())
            if not reply.tool_calls:
                loop.messages.append(UserMessage(content=_NO_TOOL_NOTE))
                continue
            for i, call in enumerate(reply.tool_calls):
                result = loop.tool(call)
                loop.messages.append(result.answering(call))
                if result.verdict is not None:
                    skipped = reply.tool_calls[i + 1 :]
                    loop.messages += [
                        ToolMessage(
                            tool_call_id=c.id,
                            name=c.name,
                            content="not run: the task finished",
                            is_error=True,
                        )
                        for c in skipped
                    ]
                    return loop.result(result.verdict.success, result.verdict.summary, "finish", secrets)
    except _Ended as ended:
        return loop.result(False, str(ended), ended.ended_by, secrets)
    except (LlmCancelled, SandboxCancelled):
        return loop.result(False, "cancelled: the run was cancelled", "cancelled", secrets)
    except LlmError as exc:
        return loop.result(False, str(exc), "llm_error", secrets)
    except SandboxError as exc:
        return loop.result(False, f"sandbox error: {exc}", "sandbox_error", secrets)
    except NoAnswer as exc:
        return loop.result(False, str(exc), "no_answer", secrets)


@dataclass
class _Loop:
    """The loop's running state: the conversation, counts, and the steps through the runner."""

    brief: TaskBrief
    complete: Complete
    toolbox: Toolbox
    runner: StepRunner
    cancel: threading.Event
    messages: list[Message] = field(default_factory=list)
    steps: int = 0
    tool_counts: dict[str, int] = field(default_factory=dict)
    tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    model_seconds: float = 0.0

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def check_cancel(self) -> None:
        if self.cancel.is_set():
            raise LlmCancelled("the run was cancelled")

    def ask(self) -> ModelReply:
        self.steps += 1
        started = time.monotonic()
        try:
            reply: ModelReply = self.runner(
                "model", f"model {self.steps}", self.complete, list(self.messages), self.toolbox.specs
            )
        except MalformedReply as exc:
            self.input_tokens += exc.input_tokens
            self.output_tokens += exc.output_tokens
            raise
        finally:
            self.model_seconds += time.monotonic() - started
        self.input_tokens += reply.input_tokens
        self.output_tokens += reply.output_tokens
        return reply

    def tool(self, call: ToolCall, *, by_model: bool = True) -> ToolResult:
        self.check_cancel()
        self.tool_calls += by_model
        number = self.tool_counts[call.name] = self.tool_counts.get(call.name, 0) + 1
        return self.runner("tool", f"{call.name} {number}", self.toolbox.run, call)

    def result(
        self, success: bool, summary: str, ended_by: EndedBy, secrets: Sequence[str]
    ) -> LoopResult:
        return LoopResult(
            success=success,
            summary=redact(summary, secrets),
            ended_by=ended_by,
            steps=self.steps,
            tool_calls=self.tool_calls,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            model_seconds=self.model_seconds,
            transcript=[redact_message(m, secrets) for m in self.messages],
        )


def prompt(brief: TaskBrief, listing: str) -> list[Message]:
    """The opening of the conversation: who the agent is (system) and what to do now (user)."""
    system = [
        f"You are {brief.agent}, an agent in a team run by toka-agents.",
        brief.description,
        _section("Your objectives", brief.objectives),
        _section("Your capabilities", brief.capabilities),
        _section("Directives you follow", brief.directives),
        _section("Your work succeeds when", brief.success_criteria),
        "You act only through your tools. Code you run executes in your sandbox, a container whose "
        f"working directory is the workspace {WORKSPACE}, shared with the other agents of this run"
        + (" (you may write to it)." if brief.may_write else " (you may read it, not write it)."),
        "When the task is done, or cannot be done, call finish(success, summary): success says "
        "whether the task is done as asked, and the summary is what the agents after you read.",
    ]
    task = [f"Task {brief.task}: {brief.instruction}"]
    if brief.expected_output:
        task.append(f"Your finish summary hands on: {brief.expected_output}")
    if brief.upstream:
        task.append(
            _section(
                "The agents before you finished with these results",
                [f"{agent}: {summary}" for agent, summary in brief.upstream.items()],
            )
        )
    task.append(f"The workspace {WORKSPACE} holds:\n{listing}")
    return [
        SystemMessage(content="\n\n".join(part for part in system if part)),
        UserMessage(content="\n\n".join(task)),
    ]


def _section(title: str, items: Sequence[str]) -> str:
    return f"{title}:\n" + "\n".join(f"- {item}" for item in items) if items else ""


_NO_TOOL_NOTE = (
    "You answered without calling a tool. Go on with the task through your tools; when it is "
    "done, or cannot be done, call finish(success, summary)."
)


def _malformed_note(exc: MalformedReply, tools: Sequence[ToolSpec]) -> str:
    return (
        f"Your last reply could not be used ({exc.kind}): {exc.detail}. The tools are "
        f"{', '.join(t.name for t in tools)}; call them with arguments that fit their schemas."
    )


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            # Also as JSON writes it, for secrets inside JSON text (tool arguments).
            for form in {secret, json.dumps(secret)[1:-1]}:
                text = text.replace(form, REDACTED)
    return text


def redact_message(message: Message, secrets: Sequence[str]) -> Message:
    """`message` with every secret in its text and tool arguments replaced by `[redacted]`."""
    if not any(secrets):
        return message
    update: dict[str, Any] = {"content": redact(message.content, secrets)}
    if isinstance(message, AssistantMessage):
        update["tool_calls"] = tuple(
            call.model_copy(
                update={"arguments": json.loads(redact(json.dumps(call.arguments), secrets))}
            )
            for call in message.tool_calls
        )
    return message.model_copy(update=update)
