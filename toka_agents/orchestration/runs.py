"""Acting on runs through Prefect's API: start a run on a deployment, stop a run, wait for
the embedded server to record a run.

What `toka agent spawn --deployment` and `toka agent stop` do. Stopping is Prefect's
cancellation: the flow run goes to Cancelling, and whoever runs it (a `toka` process's
cancel watcher, a worker) kills its sandbox containers; whatever the local engine still
holds of the run once it is final is removed here too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling

from toka_agents.errors import TokaError
from toka_agents.orchestration.deployments import FLOW_NAME
from toka_agents.orchestration.flow import RUN_LABEL


def deployment_name(name: str) -> str:
    """`NAME` means the toka deployment `toka-orchestrate/NAME`; `FLOW/NAME` is taken as given."""
    return name if "/" in name else f"{FLOW_NAME}/{name}"


def start_on_deployment(name: str, parameters: Mapping[str, Any]) -> FlowRun:
    """Create a run of the deployment with these parameters (merged over its own); a worker
    of its pool, or its `serve` process, runs it."""
    from prefect.deployments import run_deployment

    full_name = deployment_name(name)
    try:
        return run_deployment(full_name, parameters=dict(parameters), timeout=0)  # type: ignore[return-value]
    except ObjectNotFound:
        raise TokaError(
            f"no deployment {full_name!r} on this Prefect server (`prefect deployment ls` lists them)"
        ) from None


def read_flow_run(flow_run_id: UUID) -> FlowRun:
    with get_client(sync_client=True) as client:
        try:
            return client.read_flow_run(flow_run_id)
        except ObjectNotFound:
            raise TokaError(f"no flow run {flow_run_id} on this Prefect server") from None


def stop(flow_run_id: UUID, *, wait_seconds: float = 20.0) -> FlowRun:
    """Cancel a run and wait (at most `wait_seconds`) for it to end; return it as it is then.
    A run already final is returned as it is."""
    flow_run = read_flow_run(flow_run_id)
    if flow_run.state is not None and flow_run.state.is_final():
        return flow_run
    with get_client(sync_client=True) as client:
        result = client.set_flow_run_state(
            flow_run_id, Cancelling(message="stopped with `toka agent stop`")
        )
        # A run that has not started is cancelled at once: the server rejects Cancelling and
        # sets Cancelled itself. Only an abort is a refusal.
        if result.status == SetStateStatus.ABORT:
            reason = getattr(result.details, "reason", None) or result.status.value
            raise TokaError(f"Prefect refused to cancel flow run {flow_run_id}: {reason}")
        deadline = time.monotonic() + wait_seconds
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            state = flow_run.state
            if state is not None and state.is_final() or time.monotonic() > deadline:
                return flow_run
            time.sleep(0.2)


def remove_local_containers(flow_run_id: UUID) -> int | None:
    """Remove the run's sandbox containers from the local Docker engine, if it answers and
    holds any (a run on another machine has its own engine); None when it does not answer."""
    from toka_agents.sandbox import LABEL_MANAGED, connect, remove_labeled

    try:
        return remove_labeled(connect(), {LABEL_MANAGED: "1", RUN_LABEL: str(flow_run_id)})
    except Exception:  # no local engine, or it failed: the run's own process cleans up
        return None


def is_cancelled(flow_run: FlowRun) -> bool:
    return flow_run.state is not None and flow_run.state.type == StateType.CANCELLED


FINAL_TYPES = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]
RECORD_WAIT = 15.0
"""Seconds the end of a run waits, at most, for the embedded server to record its task runs."""
RECORD_STILL = 2.0
"""Seconds with nothing new recorded after which the wait ends though some task run is not
final (one left so by a cancel or a crash)."""


def wait_until_recorded(flow_run_id: UUID) -> None:
    """On Prefect's embedded server (no PREFECT_API_URL), which stops with this process, wait
    until it has recorded the run's task runs: every one final, their number unchanged for a
    moment. Their states reach it as events, recorded after the run has ended; stopped before,
    it lost them and printed its services' tracebacks. A server of its own records them later."""
    if PREFECT_API_URL.value():
        return
    runs = {"flow_runs": {"id": {"any_": [str(flow_run_id)]}}}
    final = {**runs, "task_runs": {"state": {"type": {"any_": [t.value for t in FINAL_TYPES]}}}}
    deadline, seen, changed = time.monotonic() + RECORD_WAIT, None, time.monotonic()
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            counted = tuple(
                client.request("POST", "/task_runs/count", json=body).json() for body in (runs, final)
            )
            if counted != seen:
                seen, changed = counted, time.monotonic()
            elif counted[0] == counted[1] or time.monotonic() - changed > RECORD_STILL:
                return
            time.sleep(0.2)
