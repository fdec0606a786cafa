"""The Docker engine going away in the middle of a run: the task fails with one line, the
run's cleanup errors are logged, never raised, and the summary is still written."""

from __future__ import annotations

import contextlib
import contextvars
import socket
import textwrap
import threading
import time
from pathlib import Path

import pytest
from conftest import _drain_prefect_workers, write_config
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from test_flows import artifacts, task_runs

from toka_agents import run
from toka_agents.compiling import RUN_LABEL
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
    label = {"label": [f"{LABEL_MANAGED}=1", "org.toka-agents.task=long/wait"]}
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
