"""People in the loop: an agent's question to a person, asked and answered through Prefect.

An agent with `human: ask` calls the tool `ask_human(question)`. The flow run goes Paused with a
typed input: the UI shows the run as Paused, and its Resume form says who asks what and has one
field, the answer. `answer` (and `toka agent answer`) resumes it from anywhere that reaches the
server. While the question waits, no model call is open and no container runs for it; other
agents go on. One question waits at a time: a second agent's question waits for the first's
answer. A question ends without an answer when `human_timeout` passes (the task fails saying
so, and the run is Running again) or when the run is cancelled.

This is Prefect's `pause_flow_run(wait_for_input=...)` with its wait made our own, so that a
cancel ends the wait at once instead of after the timeout.
"""

from __future__ import annotations

import threading
import time
from uuid import UUID, uuid4

from prefect import get_client
from prefect.context import FlowRunContext
from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
from prefect.flow_runs import resume_flow_run
from prefect.input import RunInput, keyset_from_paused_state
from prefect.states import Paused, Running
from prefect.utilities.engine import propose_state_sync
from pydantic import Field

from toka_agents.config.limits import format_seconds
from toka_agents.errors import LlmCancelled, NoAnswer, TokaError
from toka_agents.orchestration import reporting
from toka_agents.orchestration.reporting.outputs import fenced, shown_literally
from toka_agents.planning import PlannedTask

POLL_SECONDS = 1.0


class Answer(RunInput):
    """The Resume form of a paused run: the person's answer."""

    answer: str = Field(min_length=1, title="Answer", description="What the agent reads as your answer.")


_ONE_AT_A_TIME = threading.Lock()


def ask_person(timeout: float, cancel: threading.Event, task: PlannedTask, question: str) -> str:
    """Pause the flow run until a person answers `question` of `task`; return the answer.
    Raises `NoAnswer` past `timeout` seconds, `LlmCancelled` when the run is cancelled."""
    context = FlowRunContext.get()
    assert context is not None and context.flow_run is not None, "asks inside a flow run"
    flow_run_id = context.flow_run.id
    description = (
        f"**{shown_literally(task.agent)}** asks, in its task `{task.name}`:\n\n"
        + fenced(question)
        + "\n\nAnswer below, then Resume; or from a terminal: "
        + f"`toka agent answer {flow_run_id} 'ANSWER'`"
    )
    with _ONE_AT_A_TIME:
        reporting.person_event("asked", task, question)
        answer = _wait_for_answer(flow_run_id, description, timeout, cancel)
        reporting.person_event("answered", task, answer)
        return answer


def _wait_for_answer(
    flow_run_id: UUID, description: str, timeout: float, cancel: threading.Event
) -> str:
    paused = Paused(timeout_seconds=int(timeout), reschedule=False, pause_key=f"toka-{uuid4().hex[:12]}")
    keyset = keyset_from_paused_state(paused)
    paused.state_details.run_input_keyset = keyset
    form = Answer.with_initial_data(description=description)
    with get_client(sync_client=True) as client:
        state = propose_state_sync(client=client, state=paused, flow_run_id=flow_run_id)
        if not state.is_paused():
            raise NoAnswer(f"the run could not wait for a person: Prefect set it {state.name}")
        form.save(keyset, flow_run_id=flow_run_id)
        deadline = time.monotonic() + timeout
        while not cancel.wait(POLL_SECONDS):
            flow_run = client.read_flow_run(flow_run_id)
            now = flow_run.state
            if now is not None and now.is_running():
                return form.load(keyset, flow_run_id=flow_run_id).answer
            # A cancel is the run's cancel watcher's to see: it sets `cancel`, and the run then
            # ends Cancelled (seen here first, the run would not know it was cancelled).
            if time.monotonic() > deadline:
                client.set_flow_run_state(flow_run_id, Running(message="no answer came"), force=True)
                raise NoAnswer(f"no answer within {format_seconds(timeout)}")
    raise LlmCancelled("cancelled while waiting for a person's answer")


def answer(flow_run_id: UUID | str, text: str) -> None:
    """Answer the question a paused run waits on: resume it with `text`. Raises `TokaError`
    in one line when the text is empty, the run does not exist or waits for no answer."""
    if not text.strip():
        raise TokaError("the answer is empty: give the text the agent should read")
    try:
        run_id = UUID(str(flow_run_id))
    except ValueError:
        raise TokaError(f"{flow_run_id!r} is not a flow run id") from None
    with get_client(sync_client=True) as client:
        try:
            flow_run = client.read_flow_run(run_id)
        except ObjectNotFound:
            raise TokaError(f"no flow run {run_id} on this Prefect server") from None
    state = flow_run.state
    if state is None or not state.is_paused() or state.state_details.run_input_keyset is None:
        shown = state.name if state is not None else "no state"
        raise TokaError(f"flow run {run_id} waits for no answer: it is {shown}")
    try:
        resume_flow_run(run_id, run_input={"answer": text})
    except (FlowPauseTimeout, NotPausedError, RuntimeError) as exc:
        raise TokaError(f"Prefect did not take the answer: {exc}") from None
