"""The cancellation watcher: a cancel sent while the Prefect API cannot be reached still
lands once it answers, and the run's log says the API was away."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from urllib.parse import urlparse

from prefect import flow, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling

from toka_agents.orchestration.cancellation import CancellationWatcher


class Relay:
    """A TCP relay on 127.0.0.1 in front of the test's Prefect server; `cut` refuses every
    connection (and drops the open ones) until `restore`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._listener: socket.socket | None = None
        self._open: list[socket.socket] = []

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        if self._listener is not None:
            # shutdown, not just close: close leaves a blocked accept() accepting
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for sock in self._open:
            sock.close()
        self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            far = socket.create_connection(("127.0.0.1", self.target_port))
            self._open += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.close()


@flow(name="watched")
def watched() -> None:
    """Never run: the test only needs a flow run to exist on the server."""


def test_a_cancel_lands_after_the_api_was_unreachable(prefect_api, caplog):
    with get_client(sync_client=True) as client:
        flow_run = client.create_flow_run(watched)
    relay = Relay(urlparse(prefect_api).port)  # cut: nothing listens on its port yet
    logger = logging.getLogger("toka-test-watcher")
    caplog.set_level(logging.INFO, logger=logger.name)

    with temporary_settings(updates={PREFECT_API_URL: f"http://127.0.0.1:{relay.port}/api"}):
        watcher = CancellationWatcher(flow_run.id, 0.2, None, logger)
    watcher.start()
    try:
        deadline = time.monotonic() + 30
        while "cannot read this flow run's state" not in caplog.text:
            assert time.monotonic() < deadline, "the watcher never said the API was away"
            time.sleep(0.1)
        with get_client(sync_client=True) as client:  # the server itself answers
            client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        time.sleep(1)
        assert not watcher.cancelled.is_set()  # it cannot know yet

        relay.restore()
        assert watcher.cancelled.wait(15), "the cancel did not land once the API answered"
        assert "the Prefect API answers again" in caplog.text
    finally:
        watcher.stop()
        relay.cut()
