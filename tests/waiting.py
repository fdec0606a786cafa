"""What the tests of people in the loop share: a run in a thread of its own (it pauses), the
paused run and each of its pauses, and the `toka.human.*` events as the server stored them."""

from __future__ import annotations

import contextvars
import threading
import time
from datetime import UTC, datetime, timedelta
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.events.filters import EventFilter, EventNameFilter, EventOccurredFilter
from prefect.events.worker import EventsWorker
from prefect.input.actions import read_flow_run_input

from toka_agents import RunResult, run


def run_in_background(config, workspace_root) -> tuple[threading.Thread, list[RunResult]]:
    results: list[RunResult] = []
    context = contextvars.copy_context()
    thread = threading.Thread(  # a daemon: a failed test's waiting run cannot hold the session
        target=lambda: context.run(lambda: results.append(run(config, workspace_root=workspace_root))),
        daemon=True,
    )
    thread.start()
    return thread, results


def paused_run(flow_name: str, within: float = 60) -> UUID:
    """The id of the flow run of `flow_name` once it is Paused."""
    deadline = time.monotonic() + within
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
            for flow_run in runs:
                if flow_run.state is not None and flow_run.state.is_paused():
                    return flow_run.id
            time.sleep(0.3)
    raise AssertionError(f"no run of {flow_name} paused within {within}s")


def next_pause(flow_run_id: UUID, after: str | None = None, within: float = 60) -> tuple[str, str]:
    """The pause key and the form's description of the run's next pause after `after`."""
    deadline = time.monotonic() + within
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and state.is_paused() and state.state_details.pause_key != after:
                keyset = state.state_details.run_input_keyset
                if keyset is not None:
                    try:
                        description = read_flow_run_input(keyset["description"], flow_run_id)
                    except Exception:  # saved a moment after the pause
                        description = None
                    if description is not None:
                        return str(state.state_details.pause_key), description
            time.sleep(0.3)
    raise AssertionError(f"flow run {flow_run_id} did not pause again within {within}s")


def human_events(since: datetime, count: int, within: float = 30) -> list[tuple[str, dict]]:
    """The `toka.human.*` events since `since`, once the server has stored `count` of them."""
    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + within
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(
                filter=EventFilter(
                    occurred=EventOccurredFilter(
                        since=since, until=datetime.now(UTC) + timedelta(minutes=1)
                    ),
                    event=EventNameFilter(prefix=["toka.human."]),
                ),
                limit=50,
            )
            if len(page.events) >= count or time.monotonic() > deadline:
                return sorted(((e.event, e.payload) for e in page.events), key=lambda pair: pair[0])
            time.sleep(0.5)
