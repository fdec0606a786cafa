"""The warm pool: containers started ahead of demand, each waiting for one task's code.

A cold container costs about 200 ms before its code runs; one whose supervisor already
waits on its attach socket answers in a few tens of milliseconds. A `WarmPool` keeps up to
`size` such containers of one creation setting (`PoolKey`: image, limits, capabilities,
workspace mount) ready, refilling in background threads of its own, off the tasks' path.

A container is single-use: `claim` hands each out at most once, and after its one task its
claimer hands it to `retire`, which destroys it in the background too. The pool knows no
Docker: it is handed `make` (create, attach and start one container), `discard` (destroy
one) and `alive` (a cheap check that a waiting container is still there), and keeps the
rest to a few threads and two queues. `Sandbox` owns the containers, and is the only door to
the pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from toka_agents.sandbox.spec import SandboxSpec

T = TypeVar("T")
PoolKey = tuple[tuple[str, Any], ...]

CREATION_FIELDS = (
    "image",
    "memory",
    "cpus",
    "pids",
    "network",
    "workspace",
    "workspace_writable",
    "tmp_size",
)
"""What a container is created with: a warm container serves only a spec that agrees on all
of these. The rest (code, language, env, time limit, output cap, user) goes in over stdin."""
RETRY_AFTER = (0.5, 1.0, 2.0, 5.0, 10.0)
"""Seconds a pool waits before it tries again after failing to make a container, by
failures in a row: a broken engine is not hammered, and a pool that cannot fill itself only
means tasks start cold."""

WORKERS = 4
"""Threads of a pool making and destroying containers at once (never more than its size)."""

logger = logging.getLogger(__name__)


def pool_key(spec: SandboxSpec) -> PoolKey:
    """The creation settings of `spec`: specs with equal keys can share a pool."""
    return tuple((name, getattr(spec, name)) for name in CREATION_FIELDS)


@dataclass(eq=False)
class WarmPool(Generic[T]):
    """Up to `size` ready containers of one creation setting, each handed out at most once.

    Up to `workers` threads make and destroy containers at once: one thread making them one
    after another could not keep up with tasks that claim them several at a time.
    """

    name: str
    size: int
    make: Callable[[], T | None]
    discard: Callable[[T], None]
    alive: Callable[[T], bool] = lambda item: True
    workers: int = WORKERS
    _ready: deque[T] = field(default_factory=deque, init=False)
    _retired: deque[T] = field(default_factory=deque, init=False)
    _making: int = field(default=0, init=False)
    _changed: threading.Condition = field(default_factory=threading.Condition, init=False)
    _closed: bool = field(default=False, init=False)
    _emptied: threading.Event = field(default_factory=threading.Event, init=False)
    """Set once close() has destroyed what the pool holds."""
    _failures: int = field(default=0, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)

    @property
    def ready(self) -> int:
        """Containers waiting for a task now."""
        with self._changed:
            return len(self._ready)

    def start(self) -> None:
        """Start filling the pool in the background."""
        self._threads = [
            threading.Thread(target=self._work, name=f"toka-pool-{self.name}-{i}", daemon=True)
            for i in range(max(1, min(self.workers, self.size)))
        ]
        for thread in self._threads:
            thread.start()

    def claim(self) -> T | None:
        """A ready container, now never handed out again; None when none is ready (or the
        pool is closed): the caller then starts one of its own rather than wait."""
        dead = []
        try:
            with self._changed:
                while self._ready and not self._closed:
                    item = self._ready.popleft()
                    self._changed.notify_all()  # room to refill
                    if self.alive(item):
                        return item
                    dead.append(item)
                return None
        finally:
            for item in dead:
                self._discard_quietly(item)

    def retire(self, item: T) -> None:
        """Destroy a claimed container after its task, in the background."""
        with self._changed:
            if not self._closed:
                self._retired.append(item)
                self._changed.notify_all()
                return
        self._discard_quietly(item)

    def close(self, timeout: float = 60.0) -> None:
        """Stop refilling and destroy every container still waiting or retired. Waits up to
        `timeout` for containers being made to come back, and destroys them too; claimed
        containers not yet retired are their claimers' to destroy. A second call waits for
        the first to finish."""
        with self._changed:
            first = not self._closed
            self._closed = True
            self._changed.notify_all()
        if not first:
            self._emptied.wait(timeout)
            return
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread.ident is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        with self._changed:
            left = [*self._ready, *self._retired]
            self._ready.clear()
            self._retired.clear()
        for item in left:
            self._discard_quietly(item)
        self._emptied.set()

    def _work(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._closed or bool(self._retired) or self._short())
                if self._closed:
                    return
                if self._retired:
                    old, making = self._retired.popleft(), False
                else:
                    self._making += 1
                    making = True
            if not making:
                self._discard_quietly(old)
                continue
            try:
                item = self.make()
            except Exception as exc:
                with self._changed:
                    self._making -= 1
                self._failed(exc)
                continue
            self._failures = 0
            with self._changed:
                self._making -= 1
                if item is None:  # the owner stopped making containers (cancelled): wait to close
                    self._changed.wait_for(lambda: self._closed)
                    return
                if not self._closed:
                    self._ready.append(item)
                    self._changed.notify_all()
                    continue
            self._discard_quietly(item)  # closed while it was being made
            return

    def _short(self) -> bool:
        return len(self._ready) + self._making < self.size

    def _failed(self, exc: Exception) -> None:
        pause = RETRY_AFTER[min(self._failures, len(RETRY_AFTER) - 1)]
        self._failures += 1
        with self._changed:
            if self._closed:
                return
            logger.warning(
                "warm pool %s could not start a container (next try in %ss): %s", self.name, pause, exc
            )
            self._changed.wait(pause)  # close() wakes it

    def _discard_quietly(self, item: T) -> None:
        try:
            self.discard(item)
        except Exception as exc:  # the engine's to clean up later: the run's end removes it by label
            logger.warning("warm pool %s could not remove a container: %s", self.name, exc)
