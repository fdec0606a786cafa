# ruff: noqa: F811
"""The Docker engine going away in the middle of a run: the task fails with one line, the
run's cleanup errors are logged, never raised, and the summary is still written."""

from __future__ import annotations

import contextlib
import contextvars
import re
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path
from uuid import UUID

import pytest
from conftest import _drain_prefect_workers, own_labels, start_toka, write_config
from prefect import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateName,
)
from second_engine import SecondEngine, second_engine  # noqa: F401 (tests name it: F811)
from test_flows import artifacts, task_runs

from toka_agents import run
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import LABEL_MANAGED

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image")

ENGINE = "/var/run/docker.sock"


class EngineRelay:
    """A unix socket that relays to the real engine's; `cut` closes it and every connection
    through it, as an engine that went away would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._listener = socket.socket(socket.AF_UNIX)
        self._listener.bind(str(path))
        self._listener.listen(32)
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            # shutdown, not just close: close leaves a blocked accept() accepting
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self.path.unlink()
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                near, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._cut:
                    near.close()
                    return
                far = socket.socket(socket.AF_UNIX)
                far.connect(ENGINE)
                self._open += [near, far]
            for source, sink in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def test_an_engine_lost_mid_run_fails_the_task_and_the_run_still_reports(
    tmp_path, workspace_root, docker_client, monkeypatch
):
    relay = EngineRelay(tmp_path / "engine.sock")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{relay.path}")
    path = write_config(
        tmp_path,
        textwrap.dedent(
            """
            name: engine-lost
            agents:
              - name: long
                tasks: [{name: wait, code: {language: shell, source: "echo started; sleep 600"}}]
              - name: after
                requires: [long]
                tasks: [{name: never, code: {language: shell, source: "true"}}]
            """
        ),
    )
    holder: dict[str, object] = {}
    context = contextvars.copy_context()  # the thread must see this test's Prefect settings
    worker = threading.Thread(
        target=context.run,
        args=(lambda: holder.update(result=run(path, workspace_root=workspace_root)),),
    )
    worker.start()
    # This process's run's task: another test process may run a `long/wait` too.
    label = own_labels("org.toka-agents.task=long/wait")
    deadline = time.monotonic() + 120
    while not (running := docker_client.api.containers(filters=label)):
        assert time.monotonic() < deadline, "the task's container never started"
        time.sleep(0.1)
    run_id = running[0]["Labels"][RUN_LABEL]
    try:
        time.sleep(0.5)  # the task is under way
        relay.cut()
        worker.join(timeout=60)
        assert not worker.is_alive(), "the run did not end after the engine went away"
    finally:
        for container in docker_client.api.containers(
            all=True, filters={"label": [f"{RUN_LABEL}={run_id}"]}
        ):
            docker_client.api.remove_container(container["Id"], force=True)

    result = holder["result"]
    assert result.state.is_failed(), result.state.message
    outcomes = {o.task_id: o for o in result.outcomes}
    lost = outcomes["long/wait"]
    assert lost.status == "failed"
    assert lost.message.startswith("sandbox error: Docker engine error while"), lost.message
    assert running[0]["Names"][0].lstrip("/") in lost.message  # names the container
    assert f"Docker engine not reachable at unix://{relay.path}: " in lost.message  # and the engine
    assert "\n" not in lost.message and "Traceback" not in lost.message
    assert outcomes["after/never"].status == "skipped"

    runs = task_runs(result.flow_run_id)
    assert runs["long/wait"].state.is_failed()
    assert runs["long/wait"].state.message == lost.message
    # The summary is written although the run's containers could not be removed, and the
    # cleanup error is a line of the log, not the run's error.
    assert any(a.key == "engine-lost-summary" for a in artifacts(result.flow_run_id))
    _drain_prefect_workers()  # the run's log lines reach the server in the background
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result.flow_run_id]))
        )
    assert any("could not remove the run's sandbox containers" in log.message for log in logs)
    assert "could not remove" not in result.state.message


# A second engine of the test's own, stopped and started again while a run uses it.

RETRY_DELAY = 8
"""Seconds between a task's attempts (Prefect's own setting): longer than the engine's restart."""


def orchestrate_on(engine: SecondEngine, config: Path, api: str, **env: str) -> subprocess.Popen[str]:
    """`toka orchestrate` in a process of its own, its DOCKER_HOST the second engine."""
    return start_toka(
        "orchestrate",
        str(config),
        env={
            "DOCKER_HOST": engine.url,
            "PREFECT_API_URL": api,
            "PREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS": str(RETRY_DELAY),
            **env,
        },
    )


def attempts(flow_run_id: str, task: str) -> list[str]:
    """The names of the states the task run went through, oldest first."""
    with get_client(sync_client=True) as client:
        [task_run] = [
            r
            for r in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
            )
            if r.name == task
        ]
        states = client.read_task_run_states(task_run.id)
    return [state.name for state in sorted(states, key=lambda s: s.timestamp)]


def retried(log: str, task: str) -> list[str]:
    """The messages of the task's failed attempts that Prefect retried, from the run's log."""
    pattern = rf"Task run '{re.escape(task)}' - Task run failed: (.*) - Retry \d+/\d+ will start"
    return re.findall(pattern, log)


def finish(run: subprocess.Popen[str], timeout: float = 180) -> tuple[str, str]:
    try:
        return run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        stdout, stderr = run.communicate()
        pytest.fail(f"the run did not end within {timeout} s:\n{stdout}\n{stderr[-3000:]}")


def flow_run_id_of(stdout: str) -> str:
    [found] = re.findall(r"^Flow run: ([0-9a-f-]{36})$", stdout, re.MULTILINE)
    return found


WAIT_FOR_A_SECOND_ATTEMPT = textwrap.dedent(
    """
    name: {name}
    sandbox: {{pool_size: 0}}
    agents:
      - name: steady
        retries: 1
        capabilities: [filesystem-write]
        tasks:
          - name: work
            code:
              language: shell
              source: |
                if [ -e /workspace/first ]; then echo second attempt; exit 0; fi
                touch /workspace/first; echo first attempt; sleep 600
      - name: after
        requires: [steady]
        tasks: [{{name: check, code: {{language: shell, source: "echo after"}}}}]
    """
)


def test_an_engine_stopped_mid_task_fails_the_attempt_and_the_retry_runs_once_it_is_back(
    tmp_path, second_engine, prefect_api
):
    second_engine.load_image()
    name = f"engine-restart-{uuid.uuid4().hex[:8]}"
    config = write_config(tmp_path, WAIT_FOR_A_SECOND_ATTEMPT.format(name=name))
    # A bind workspace, for the mark the first attempt leaves: a restarted dockerd mounts its data
    # root afresh, hiding the host's mounts under it (the workspace disk on a volume's directory).
    run = orchestrate_on(
        second_engine, config, prefect_api, TOKA_WORKSPACE="bind", TOKA_HOME=str(tmp_path / "home")
    )
    try:
        label = {"label": [f"{LABEL_MANAGED}=1", "org.toka-agents.task=steady/work"]}
        deadline = time.monotonic() + 120
        with second_engine.client() as client:
            while not (running := client.api.containers(filters=label)):
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the task's container never started"
                time.sleep(0.2)
        run_id = running[0]["Labels"][RUN_LABEL]
        second_engine.stop()  # kills the container, then ends: the task sees its engine go
        second_engine.start()  # back well before the retry, RETRY_DELAY s after the failure
        stdout, stderr = finish(run)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, stdout + stderr
    assert flow_run_id_of(stdout) == run_id

    # Prefect keeps the failed attempt's message in the run's log, its state is AwaitingRetry.
    [failed] = retried(stderr, "steady/work")
    assert (
        failed.startswith("sandbox error: ")
        and f"Docker engine not reachable at {second_engine.url}: " in failed
    )
    states = attempts(run_id, "steady/work")
    assert [state for state in states if state in ("AwaitingRetry", "Completed")] == [
        "AwaitingRetry",
        "Completed",
    ]
    assert "Task run 'steady/work' - second attempt" in stderr  # it found the first one's mark

    with second_engine.client() as client:  # the first attempt's container went with the run's end
        assert client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []


def test_an_engine_down_when_the_run_starts_fails_the_attempt_and_the_retry_reaches_it(
    tmp_path, second_engine, prefect_api
):
    second_engine.load_image()
    name = f"engine-down-{uuid.uuid4().hex[:8]}"
    config = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: {name}
            sandbox: {{pool_size: 0}}
            agents:
              - name: patient
                retries: 1
                tasks: [{{name: work, code: {{language: shell, source: "echo reached"}}}}]
            """
        ),
    )
    second_engine.stop()
    # A bind workspace: a volume is made on the engine before any task, so a run whose engine
    # is down then is refused outright (the remote-engine tests show that message).
    run = orchestrate_on(
        second_engine, config, prefect_api, TOKA_WORKSPACE="bind", TOKA_HOME=str(tmp_path / "home")
    )
    try:
        deadline = time.monotonic() + 120
        with get_client(sync_client=True) as client:
            while not client.read_task_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                task_run_filter=TaskRunFilter(
                    state=TaskRunFilterState(name=TaskRunFilterStateName(any_=["AwaitingRetry"]))
                ),
            ):
                assert run.poll() is None, run.communicate()
                assert time.monotonic() < deadline, "the task never failed its first attempt"
                time.sleep(0.2)
        second_engine.start()
        stdout, stderr = finish(run)
    finally:
        if run.poll() is None:
            run.kill()
        if not second_engine.running:
            second_engine.start()  # for the module's other tests
    assert run.returncode == 0, stdout + stderr
    [failed] = retried(stderr, "patient/work")
    # Said once, not wrapped in what the sandbox was doing when it found out.
    assert failed.startswith(f"sandbox error: Docker engine not reachable at {second_engine.url}: "), (
        failed
    )
    states = attempts(flow_run_id_of(stdout), "patient/work")
    assert [state for state in states if state in ("AwaitingRetry", "Completed")] == [
        "AwaitingRetry",
        "Completed",
    ]
    assert "Task run 'patient/work' - reached" in stderr
