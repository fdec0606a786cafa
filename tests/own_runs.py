"""What a test sees of its own runs: their flow run ids and their containers.

Tests share the Docker engine with other runs (other suites, an operator's run), so they find
their containers by the run's own label, `org.toka-agents.run=<flow run id>`, never by the
label every toka-agents container carries.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import docker
import pytest
from conftest import toka_containers
from prefect import get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterName
from prefect.exceptions import ObjectNotFound

from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import LABEL_MANAGED

TEST_LABEL = "org.toka-agents.test"
"""Carried by the containers that tests make themselves to stand for a run's."""

THIS_SESSION = f"session-{uuid.uuid4().hex[:12]}"
"""The value of TEST_LABEL on the containers this test session makes (other suites use it too)."""

START_DEADLINE = 120.0
"""Seconds a run may take to start its first container: SQLite's 503 retries can delay it."""


PAGE = 200
"""The most records one of Prefect's `read_*` calls returns."""


def read_all(read: Callable[..., list[Any]], **query: Any) -> list[Any]:
    """Every record a Prefect `read_*` call finds for `query`, page by page."""
    found: list[Any] = []
    while True:
        page = read(**query, limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


def run_containers(docker_client, flow_run_id: UUID | str) -> list[str]:
    """Ids of the containers of one run, running or not."""
    labels = [f"{LABEL_MANAGED}=1", f"{RUN_LABEL}={flow_run_id}"]
    return [c["Id"] for c in docker_client.api.containers(all=True, filters={"label": labels})]


def flow_run_id_of(flow_name: str, deadline: float = START_DEADLINE) -> UUID:
    """The id of the one flow run of the flow `flow_name`, once it exists."""
    end = time.monotonic() + deadline
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])))
            if runs:
                [flow_run] = runs
                return flow_run.id
            assert time.monotonic() < end, f"no flow run of {flow_name!r} started"
            time.sleep(0.1)


def wait_for_running_container(docker_client, flow_run_id: UUID | str) -> str:
    """The id of the run's first container, once it is running."""
    end = time.monotonic() + START_DEADLINE
    while True:
        for container_id in run_containers(docker_client, flow_run_id):
            # The engine lists a container a moment before (and after) inspect finds it.
            with contextlib.suppress(docker.errors.NotFound):
                if docker_client.api.inspect_container(container_id)["State"]["Running"]:
                    return container_id
        assert time.monotonic() < end, f"run {flow_run_id} never started a container"
        time.sleep(0.1)


def seconds_until_gone(docker_client, flow_run_id: UUID | str, bound: float) -> float | None:
    """How long the run's containers took to disappear, or None if some outlived `bound` seconds."""
    start = time.monotonic()
    while run_containers(docker_client, flow_run_id):
        if time.monotonic() - start > bound:
            return None
        time.sleep(0.1)
    return time.monotonic() - start


@dataclass
class Signalled:
    """How a `toka orchestrate` process that got a signal mid-run ended."""

    flow_run_id: UUID | None
    seconds_until_gone: float | None
    returncode: int
    stdout: str
    stderr: str


def signal_mid_run(
    config: Path,
    flow_name: str,
    workspace_root: Path,
    docker_client,
    prefect_api: str,
    sig: int,
    bound: float,
) -> Signalled:
    """Start `toka orchestrate CONFIG` (whose flow is `flow_name`), send it `sig` once its first
    container runs, and say how long its containers took to go (None: longer than `bound`
    seconds) and how it ended."""
    from conftest import REPO, TOKA

    stdout, stderr = workspace_root.parent / "stdout", workspace_root.parent / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            [TOKA, "orchestrate", str(config), "--workspace-dir", str(workspace_root)],
            # A process that does not end is made to say where each thread is (SIGABRT).
            env={**os.environ, "PREFECT_API_URL": prefect_api, "PYTHONFAULTHANDLER": "1"},
            stdout=out,
            stderr=err,
            cwd=REPO,
            # As in a terminal, whatever started the tests: a shell's background job (`cmd &`
            # without job control) hands its children SIGINT ignored, and Python keeps it so.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    flow_run_id = None
    try:
        flow_run_id = flow_run_id_of(flow_name)
        wait_for_running_container(docker_client, flow_run_id)
        process.send_signal(sig)
        took = seconds_until_gone(docker_client, flow_run_id, bound)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            process.wait(timeout=10)
            raise AssertionError(
                f"toka orchestrate did not end within 60 s of signal {sig}; its threads:\n"
                + stderr.read_text()[-20_000:]
            ) from None
    finally:
        process.kill()
        process.wait()
        if flow_run_id is not None:
            remove_run_containers(docker_client, flow_run_id)
    return Signalled(flow_run_id, took, process.returncode, stdout.read_text(), stderr.read_text())


def flow_events(flow_run_id: UUID, since: datetime, prefix: str, expected: int) -> list:
    """The flow run's events whose names start with `prefix`, once the server has stored
    `expected` of them (or after 30 s)."""
    from prefect.events.filters import (
        EventFilter,
        EventNameFilter,
        EventOccurredFilter,
        EventRelatedFilter,
    )
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)  # events leave this process in the background
    wanted = EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(minutes=5)),
        event=EventNameFilter(prefix=[prefix]),
        related=EventRelatedFilter(id=[f"prefect.flow-run.{flow_run_id}"]),
    )
    deadline = time.monotonic() + 30
    with get_client(sync_client=True) as client:
        while True:
            events = client.read_events(filter=wanted, limit=50).events
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.2)


def remove_run_containers(docker_client, flow_run_id: UUID | str) -> None:
    """Remove what a failed test's run left, so that one failure does not leak containers."""
    for container_id in run_containers(docker_client, flow_run_id):
        with contextlib.suppress(docker.errors.NotFound):  # the run removed it meanwhile
            docker_client.api.remove_container(container_id, force=True)


def _is_flow_run_of_this_session(client, flow_run_id: str) -> bool:
    try:
        client.read_flow_run(UUID(flow_run_id))
    except (ValueError, ObjectNotFound):
        return False
    return True


@pytest.fixture
def no_leftover_run_containers(docker_client, prefect_api) -> Iterator[None]:
    """Fails the test if a run of this session, or a container a test parked, is left behind.

    Scoped to this session's own containers: its Prefect server knows only its own flow runs,
    so containers of runs beside the suite (other suites, an operator's run) are not counted.
    """
    before = set(toka_containers(docker_client))
    yield
    left = []
    with get_client(sync_client=True) as client:
        for container in docker_client.api.containers(
            all=True, filters={"label": [f"{LABEL_MANAGED}=1"]}
        ):
            labels = container.get("Labels") or {}
            if container["Id"] in before:
                continue
            mine = labels.get(TEST_LABEL) == THIS_SESSION
            if mine or _is_flow_run_of_this_session(client, labels.get(RUN_LABEL, "")):
                left.append(f"{container['Id'][:12]} {container['Names']} {container['Status']}")
    assert not left, f"containers left behind: {sorted(left)}"
