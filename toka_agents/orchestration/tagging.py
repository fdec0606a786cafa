"""Agent task runs' tags, paid for only when a tag concurrency limit needs them.

Compiling's helper for one thing: how the agent/workstream/priority tags reach a task run.
Prefect's task engine asks the server for a slot of `tag:<tag>` for every tag a task run
starts with, whether or not a limit exists (PrefectHQ/prefect#19367). On SQLite, Prefect's
embedded default, each ask is a write transaction; beside the other writes of a busy run it
meets `database is locked`, the server answers 503 and the client tries again about 2 s
later (#18934). So a task run's tags travel two ways:

- tags that a tag concurrency limit names (`prefect concurrency-limit create TAG N`, as the
  run found them when it submitted its first task) are on the task run from its creation,
  and the engine takes their slots as it always does: the limit holds;
- every other tag is added to the task run when its code starts, after the engine asked for
  slots, and reaches the server with the task run's next state. A task run carries all its
  tags, for the UI's filters, from the moment it ends (a running one is found by its name,
  `<agent>/<task>`).

When the limits cannot be read, every tag takes the engine's path, as in plain Prefect.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from uuid import UUID

from prefect import get_client
from prefect.context import FlowRunContext, TagsContext, TaskRunContext

TAG_LIMIT_PREFIX = "tag:"
"""Prefect names a tag's concurrency limit `tag:<tag>` (a global concurrency limit)."""

_deferred: ContextVar[tuple[str, ...]] = ContextVar("toka_deferred_tags", default=())
_lock = threading.Lock()


def read_limited_tags() -> frozenset[str] | None:
    """The tags that a concurrency limit exists for on the server, or None if it cannot say."""
    found: set[str] = set()
    try:
        with get_client(sync_client=True) as client:
            offset, page = 0, 200
            while True:
                limits = client.read_global_concurrency_limits(limit=page, offset=offset)
                found.update(
                    limit.name.removeprefix(TAG_LIMIT_PREFIX)
                    for limit in limits
                    if limit.name.startswith(TAG_LIMIT_PREFIX)
                )
                if len(limits) < page:
                    return frozenset(found)
                offset += page
    except Exception:  # the API is away or refuses: the engine's way is always right
        return None


@functools.lru_cache(maxsize=16)
def _limited_tags_of_run(flow_run_id: UUID) -> frozenset[str] | None:
    return read_limited_tags()


def limited_tags_of_this_run() -> frozenset[str] | None:
    """The limited tags as the current flow run first read them (once per flow run)."""
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return read_limited_tags()
    with _lock:
        return _limited_tags_of_run(context.flow_run.id)


def split_tags(tags: Iterable[str], limited: frozenset[str] | None) -> tuple[set[str], tuple[str, ...]]:
    """(tags for the engine at creation, tags to add once the task runs)."""
    wanted = set(tags)
    if limited is None:
        return wanted, ()
    engine = {tag for tag in wanted if tag in limited}
    return engine, tuple(sorted(wanted - engine))


@contextmanager
def agent_tags(tags: Iterable[str]) -> Iterator[None]:
    """Like `prefect.tags(*tags)` around a task submission, for the tags of an agent task:
    the tags in force around it and `tags` reach the task run by one of the two ways above."""
    wanted = TagsContext.get().current_tags | set(tags)
    engine, deferred = split_tags(wanted, limited_tags_of_this_run())
    token = _deferred.set(deferred)
    try:
        with TagsContext(current_tags=engine):
            yield
    finally:
        _deferred.reset(token)


def add_deferred_tags() -> None:
    """Inside an agent task run: add the tags `agent_tags` kept off its creation. The task run
    is the engine's own record, whose next state event carries them to the server."""
    deferred = _deferred.get()
    context = TaskRunContext.get()
    if not deferred or context is None:
        return
    task_run = context.task_run
    task_run.tags = [*task_run.tags, *(tag for tag in deferred if tag not in task_run.tags)]
