"""People in the loop: an agent's question to a person, and a person's approval of a task or a
tool call, asked and answered through Prefect.

An agent with `human: ask` calls the tool `ask_human(question)`; a task with `approval:` waits
for a person before it starts, or before each call of the tools it names. Either way the flow
run goes Paused with a typed input: the UI shows the run as Paused, and its Resume form says
who asks what, with one field for the answer (`Answer`) or a decision and a comment
(`Approval`). `answer`, `approve` and `reject` (and `toka agent answer|approve|reject`) resume
it from anywhere that reaches the server; `waiting_on` tells what a paused run waits for.

While a person is asked, no model call is open and no container runs for it; other agents go
on. One question waits at a time: a second agent's waits for the first's answer. A wait ends
without an answer when `human_timeout` passes (the task fails saying so, and the run is
Running again) or when the run is cancelled.

This is Prefect's `pause_flow_run(wait_for_input=...)` with its wait made our own, so that a
cancel ends the wait at once instead of after the timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from uuid import UUID, uuid4

import httpx
from prefect import get_client
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput, keyset_from_paused_state
from prefect.states import Paused, Running
from prefect.utilities.engine import propose_state_sync
from pydantic import BaseModel, Field, ValidationError

from toka_agents import text
from toka_agents.approvals import Proposal
from toka_agents.config.limits import format_seconds
from toka_agents.errors import LlmCancelled, NoAnswer, Rejected, TokaError
from toka_agents.orchestration import reporting
from toka_agents.orchestration.reporting.outputs import fenced, shown_literally
from toka_agents.planning import PlannedTask

POLL_SECONDS = 1.0
WaitKind = Literal["question", "approval"]


class Answer(RunInput):
    """The Resume form of a run an agent's question holds: the person's answer."""

    answer: str = Field(min_length=1, title="Answer", description="What the agent reads as your answer.")


class Approval(RunInput):
    """The Resume form of a run an approval holds: the person's decision and why."""

    decision: Literal["approve", "reject"] = Field(
        title="Decision", description="approve: it runs now. reject: it does not, and fails."
    )
    comment: str = Field(
        "",
        title="Comment",
        description="Why: the task's failure (or the model, for a tool call) says it.",
    )


class Waiting(BaseModel):
    """What a paused run waits for: a person's answer to a question, or their approval."""

    kind: WaitKind
    flow_run_id: UUID
    agent: str
    task: str
    text: str
    """The question, or what is to be approved (`call write_file: {...}`)."""
    key: str = ""
    """The pause's key: one per question or approval."""

    @property
    def pause(self) -> str:
        """The pause's short id, which binds a reply to it (`--pause`)."""
        return self.key.rpartition("-")[2]

    def commands(self) -> str:
        """The terminal commands that answer it, and only it."""
        run, pause = self.flow_run_id, self.pause
        if self.kind == "question":
            return f"toka agent answer {run} 'ANSWER' --pause {pause}"
        return (
            f"toka agent approve {run} --pause {pause}, "
            f"or toka agent reject {run} --pause {pause} --comment 'WHY'"
        )

    def subject(self) -> str:
        """What waits, in one visible line: `deployer/ship: run its shell code: echo ...`."""
        return text.one_line(f"{self.agent}/{self.task}: {self.text}", 200)


_ONE_AT_A_TIME = threading.Lock()
_Form = TypeVar("_Form", Answer, Approval)


def ask_person(wait: Wait, task: PlannedTask, question: str) -> str:
    """Pause the flow run until a person answers `question` of `task`; return the answer.
    Raises `NoAnswer` past the wait's timeout, `LlmCancelled` when the run is cancelled."""
    flow_run_id = _flow_run_id()
    description = (
        f"**{shown_literally(task.agent)}** asks, in its task `{task.name}`:\n\n"
        + fenced(text.visible(question))
        + "\n\nAnswer below, then Resume; or from a terminal: "
    )
    waiting = Waiting(
        kind="question", flow_run_id=flow_run_id, agent=task.agent, task=task.name, text=question
    )
    with _ONE_AT_A_TIME:
        reporting.person_event("asked", wait.run_name, task, {"question": question})
        reply = wait.until_replied(Answer, waiting, description)
        reporting.person_event("answered", wait.run_name, task, {"answer": reply.answer})
        return reply.answer


def ask_approval(wait: Wait, task: PlannedTask, proposal: Proposal) -> None:
    """Pause the flow run until a person approves `proposal` of `task`. Raises `Rejected` with
    their comment, `NoAnswer` past the wait's timeout, `LlmCancelled` when the run is cancelled."""
    flow_run_id = _flow_run_id()
    description = (
        f"**{shown_literally(task.agent)}** waits for your approval to {proposal.what}, "
        f"in its task `{task.name}`:\n\n"
        + fenced(text.visible(proposal.detail), proposal.syntax)
        + "\n\nChoose approve or reject (a comment says why), then Resume; or from a terminal: "
    )
    waiting = Waiting(
        kind="approval",
        flow_run_id=flow_run_id,
        agent=task.agent,
        task=task.name,
        text=f"{proposal.what}: {proposal.detail}",
    )
    asked = {"what": proposal.what, "detail": proposal.detail}
    with _ONE_AT_A_TIME:
        reporting.person_event("approval-requested", wait.run_name, task, asked)
        decision = wait.until_replied(Approval, waiting, description)
        said = {**asked, "comment": decision.comment}
        if decision.decision == "reject":
            reporting.person_event("rejected", wait.run_name, task, said)
            raise Rejected(decision.comment)
        reporting.person_event("approved", wait.run_name, task, said)


def _flow_run_id() -> UUID:
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "asks inside a flow run"
    return context.flow_run.id


@dataclass(frozen=True)
class Wait:
    """How the run `run_name` waits for a person: at most `timeout` seconds, ended early by `cancel`;
    `on_wait` runs once the run is paused (it empties the sandbox's warm pools)."""

    run_name: str
    timeout: float
    cancel: threading.Event
    on_wait: Callable[[], None] = lambda: None

    def until_replied(self, form_type: type[_Form], waiting: Waiting, description: str) -> _Form:
        """Pause the run with the form `form_type` showing `description`; return the reply."""
        flow_run_id, timeout = waiting.flow_run_id, self.timeout
        pause_key = f"toka-{waiting.kind}-{uuid4().hex[:12]}"
        waiting = waiting.model_copy(update={"key": pause_key})
        paused = Paused(timeout_seconds=int(timeout), reschedule=False, pause_key=pause_key)
        keyset = keyset_from_paused_state(paused)
        paused.state_details.run_input_keyset = keyset
        terminal = " or ".join(f"`{command}`" for command in waiting.commands().split(", or "))
        form = form_type.with_initial_data(description=description + terminal)
        with get_client(sync_client=True) as client:
            client.create_flow_run_input(flow_run_id, _waiting_key(pause_key), waiting.model_dump_json())
            state = propose_state_sync(client=client, state=paused, flow_run_id=flow_run_id)
            if not state.is_paused():
                raise NoAnswer(f"the run could not wait for a person: Prefect set it {state.name}")
            form.save(keyset, flow_run_id=flow_run_id)
            self.on_wait()
            deadline = time.monotonic() + timeout
            while not self.cancel.wait(POLL_SECONDS):
                now = client.read_flow_run(flow_run_id).state
                if now is not None and now.is_running():
                    try:
                        return form.load(keyset, flow_run_id=flow_run_id)
                    except (ValidationError, httpx.HTTPStatusError):
                        raise NoAnswer("the run was set Running without a reply") from None
                # A cancel is the run's cancel watcher's to see: it sets `cancel`, and the run
                # then ends Cancelled (seen here first, the run would not know it was cancelled).
                if time.monotonic() > deadline:
                    client.set_flow_run_state(flow_run_id, Running(message="no answer came"), force=True)
                    verb = "no answer" if waiting.kind == "question" else "not approved"
                    raise NoAnswer(f"{verb} within {format_seconds(timeout)}")
        raise LlmCancelled("cancelled while waiting for a person")


def _waiting_key(pause_key: str) -> str:
    return f"{pause_key}-waiting"


def waiting_on(client: Any, flow_run: FlowRun) -> Waiting | None:
    """What `flow_run` waits for, when a toka agent's question or approval paused it."""
    state = flow_run.state
    if state is None or not state.is_paused():
        return None
    pause_key = state.state_details.pause_key or ""
    if not pause_key.startswith("toka-"):
        return None
    try:
        return Waiting.model_validate_json(
            client.read_flow_run_input(flow_run.id, _waiting_key(pause_key))
        )
    except (httpx.HTTPStatusError, ValidationError):
        return None


def answer(flow_run_id: UUID | str, text: str, pause: str | None = None) -> Waiting:
    """Answer the question a paused run waits on (the pause `pause`, when given): resume it
    with `text`, and return what was answered. Raises `TokaError` in one line when the text is
    empty, the run does not exist, or waits for no answer (or for another than `pause`)."""
    if not text.strip():
        raise TokaError("the answer is empty: give the text the agent should read")
    return _resume(flow_run_id, "question", {"answer": text}, pause)


def approve(flow_run_id: UUID | str, comment: str = "", pause: str | None = None) -> Waiting:
    """Approve what a paused run waits to do (the pause `pause`, when given): the task starts,
    or the tool call runs; return what was approved. Raises `TokaError` in one line when the
    run does not exist or waits for no approval (or for another than `pause`)."""
    return _resume(flow_run_id, "approval", {"decision": "approve", "comment": comment}, pause)


def reject(flow_run_id: UUID | str, comment: str, pause: str | None = None) -> Waiting:
    """Reject what a paused run waits to do, saying why: the task fails with `comment` (for a
    tool call, the model reads it); return what was rejected. Raises `TokaError` in one line
    as `approve` does, and when the comment is empty."""
    if not comment.strip():
        raise TokaError("a rejection needs a comment: say why, for the agent and the run's record")
    return _resume(flow_run_id, "approval", {"decision": "reject", "comment": comment}, pause)


def _resume(
    flow_run_id: UUID | str, kind: WaitKind, run_input: dict[str, str], pause: str | None
) -> Waiting:
    try:
        run_id = UUID(str(flow_run_id))
    except ValueError:
        raise TokaError(f"{flow_run_id!r} is not a flow run id") from None
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise TokaError(f"no flow run {run_id} on this Prefect server") from None
        waiting = waiting_on(client, flow_run)
    if waiting is None:
        shown = flow_run.state.name if flow_run.state is not None else "no state"
        wanted = "answer" if kind == "question" else "approval"
        raise TokaError(f"flow run {run_id} waits for no {wanted}: it is {shown}")
    if pause is not None and pause != waiting.pause:
        raise TokaError(
            f"flow run {run_id} no longer waits on pause {pause}: it waits for "
            f"{_wanted(waiting.kind)} of {waiting.subject()}: {waiting.commands()}"
        )
    if waiting.kind != kind:
        raise TokaError(f"flow run {run_id} waits for {_wanted(waiting.kind)}: {waiting.commands()}")
    try:
        resume_flow_run(run_id, run_input=run_input)
    except (FlowPauseTimeout, NotPausedError, RuntimeError) as exc:
        raise TokaError(f"Prefect did not take the reply: {exc}") from None
    return waiting


def _wanted(kind: WaitKind) -> str:
    return "an answer to a question" if kind == "question" else "an approval"
