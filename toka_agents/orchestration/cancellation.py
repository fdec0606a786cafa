"""Cancelling a run: a thread that watches the flow run's state and, once someone cancels it
(the UI, the API, `toka agent stop`), stops its LLM loops and kills its sandbox containers.
"""

from __future__ import annotations

import contextvars
import threading
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_client

from toka_agents.errors import one_line
from toka_agents.orchestration import reporting
from toka_agents.sandbox import Sandbox


@dataclass(eq=False)
class CancellationWatcher:
    """Watches the flow run's state; when someone cancels it (the UI, the API), kills the
    run's containers so its tasks end at once and no new ones start.

    Runs started by a Prefect worker are also cancelled by signal; this covers runs started
    in-process, such as `toka orchestrate`, which no worker supervises. When the API cannot
    be reached it says so and keeps asking: a cancel sent meanwhile lands once it answers.
    """

    flow_run_id: UUID
    interval: float
    sandbox: Sandbox | None
    logger: reporting.RunLogger
    llm_cancel: threading.Event | None = None
    cancelled: threading.Event = field(default_factory=threading.Event, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _context: contextvars.Context = field(default_factory=contextvars.copy_context, init=False)
    """The settings of where the watcher was made (this run's Prefect API), for its thread."""
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._context.run, args=(self._watch,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        failures = 0
        while not self._stop.wait(self.interval):
            try:
                with get_client(sync_client=True) as client:
                    state = client.read_flow_run(self.flow_run_id).state
            except Exception as exc:  # the API is away for now; the run goes on meanwhile
                failures += 1
                if failures == 1 or failures % 30 == 0:
                    self.logger.warning(
                        "cannot read this flow run's state to watch for a cancel "
                        "(%d attempt(s) so far): %s; trying again every %gs",
                        failures,
                        one_line(exc),
                        self.interval,
                    )
                continue
            if failures:
                self.logger.info("the Prefect API answers again after %d failed attempt(s)", failures)
                failures = 0
            if state is not None and (state.is_cancelling() or state.is_cancelled()):
                self.cancelled.set()
                if self.llm_cancel is not None:
                    self.llm_cancel.set()  # LLM loops stop, a model call under way too
                if self.sandbox is not None:
                    self.sandbox.cancel()
                return
