"""The sandbox's one door: `Sandbox` runs code in a container of its own per call and removes
it whatever happens.

The container's settings come from a `SandboxSpec` and nowhere else: no network unless
asked, memory/cpu/pids limits, a read-only root file system with a tmpfs /tmp, and
no-new-privileges. The code, its environment and its limits go in over the attach socket's
stdin to the supervisor in `bootstrap.py`, which runs it as the spec's unprivileged user
with no capabilities at all; its output comes back on the same socket as it is printed,
kept by `output.Capture`; a timer kills the container at the wall-clock limit.

With a `pool_size`, containers are started ahead of demand (`pool.WarmPool`, one pool per
creation setting) and a call claims one whose supervisor already waits for its code; it is
still single-use, destroyed after its one task. An empty pool never makes a task wait: it
starts a container of its own, as without a pool.

A spec with a `workspace_limit` gets its workspace on a disk of that size (`disk`), mounted
before the first container that mounts the workspace and released when the sandbox removes
its leftovers at the run's end; a workspace without one is cleaned where it lies then. Either
way only what may reach the host stays (`sanitize`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
from docker.errors import ImageNotFound

from toka_agents.errors import SandboxError
from toka_agents.sandbox.attach import is_waiting, run_attached
from toka_agents.sandbox.cleanup import LABEL_MANAGED, kill, remove, remove_labeled
from toka_agents.sandbox.creation import Container, create_container, engine_errors, image_missing
from toka_agents.sandbox.disk import WorkspaceDisk
from toka_agents.sandbox.egress import Egress, remove_networks, start_egress
from toka_agents.sandbox.engine import ENGINE_ERRORS, EngineUnreachable, engine_said
from toka_agents.sandbox.output import OutputCallback
from toka_agents.sandbox.owners import LABEL_OWNER, current_owner
from toka_agents.sandbox.pool import PoolKey, WarmPool, pool_key
from toka_agents.sandbox.sanitize import clean_in_place
from toka_agents.sandbox.session import SandboxSession
from toka_agents.sandbox.spec import SandboxResult, SandboxSpec

__all__ = ["LABEL_MANAGED", "AttachedProcess", "Sandbox", "SandboxCancelled"]

logger = logging.getLogger(__name__)


class SandboxCancelled(SandboxError):
    """The sandbox was cancelled: it starts no more containers."""


_CLI_ENV = ("PATH", "HOME")
"""What the `docker` command needs of this process's environment, beside DOCKER_*."""


@dataclass(frozen=True)
class AttachedProcess:
    """A host process (`argv`, with `env`) whose stdin and stdout are a sandbox container's."""

    argv: tuple[str, ...]
    env: dict[str, str]
    container: str
    """The container, as people read it: its name and short id."""
    out_of_memory: Callable[[], bool]
    """Whether the engine killed the container for want of memory (ask once it has ended)."""


@dataclass(frozen=True)
class Warm:
    """A started container of a pool, its supervisor waiting for a header on `stream`."""

    container: Container
    stream: Any


class Sandbox:
    """Runs `SandboxSpec`s on one engine, tracking live containers so `cancel()` can stop them all.

    `pool_size`: containers kept started and waiting for code, per creation setting (see
    `pool.pool_key`); 0 starts a fresh container for every call.
    """

    def __init__(
        self, client: docker.DockerClient, labels: dict[str, str] | None = None, *, pool_size: int = 0
    ) -> None:
        self.client = client
        self.labels = {LABEL_MANAGED: "1", LABEL_OWNER: current_owner(), **(labels or {})}
        self.pool_size = pool_size
        self._live: set[str] = set()
        self._starting = 0  # calls to the engine's start under way; cancel() waits them out
        self._lock = threading.Condition()
        self._cancelled = threading.Event()
        self._pools: dict[PoolKey, WarmPool[Warm]] = {}
        self._workspaces: dict[Path, WorkspaceDisk | None] = {}  # the bind-mounted ones, with disks
        self._image_ids: dict[str, str] = {}
        self._egress: dict[tuple[str, tuple[str, ...]], Egress] = {}
        self._egress_lock = threading.Lock()  # held while a proxy starts: one per allow list

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, spec: SandboxSpec, on_output: OutputCallback | None = None) -> SandboxResult:
        """Run `spec` in a container of its own (a warm one when its pool has one ready);
        return how it ended. Raises `SandboxError`, with one line naming the container, when
        the engine fails it (no image, engine gone, container removed under it): no engine
        error escapes as anything else."""
        spec = self._with_disk(self._with_egress(spec))
        claimed = self._claim(spec)
        if claimed is not None:
            pool, warm = claimed
            try:
                result = self._run_in(warm.container, warm.stream, spec, on_output, warm=True)
            except BaseException:
                self._discard(warm.container, quietly=True)
                raise
            with self._lock:
                self._live.discard(warm.container.id)
            pool.retire(warm)  # it ends by itself after its report; removed off the task's path
            return result
        container = self._create(spec)
        with self._lock:
            self._live.add(container.id)
        try:
            result = self._attach_and_run(container, spec, on_output)
        except BaseException:
            self._discard(container, quietly=True)
            raise
        self._discard(container)
        return result

    def cancel(self) -> None:
        """Kill every container this sandbox is running and remove its warm ones; later `run`
        calls are refused.

        No container of a cancelled sandbox ever starts: `_start` checks the flag and starts
        under the lock this sets it under, and a start already under way is waited for, so
        its container is running (and killable) when the live set is read. A claim checks
        the flag under the same lock, so no warm container is handed out after it; the pools
        then destroy what waits in them and what their threads were making.
        """
        with self._lock:
            self._cancelled.set()
            self._lock.wait_for(lambda: self._starting == 0)
            live = list(self._live)
            pools = list(self._pools.values())
        for container_id in live:
            kill(self.client, container_id)
        for pool in pools:
            pool.close()

    def empty_pools(self) -> None:
        """Destroy the warm containers waiting in the pools, as a run that waits for a person
        does: it holds none while it waits. A later `run` starts its pool again."""
        with self._lock:
            pools = list(self._pools.values())
            self._pools.clear()
        for pool in pools:
            pool.close()

    def close(self) -> None:
        """Cancel (see `cancel`) and remove every container carrying this sandbox's labels."""
        self.cancel()
        for warning in self.remove_leftovers():
            logger.warning("%s", warning)

    def remove_leftovers(self) -> list[str]:
        """Remove every container carrying this sandbox's labels, then release the workspaces
        it mounted (see `release_workspaces`); return its warnings."""
        with self._egress_lock:  # a proxy starting now is up (and found below) when this returns
            self._egress.clear()
        try:
            remove_labeled(self.client, self.labels)
        finally:
            warnings = self.release_workspaces()
            remove_networks(self.client, self.labels)  # after their containers, the proxies too
        return warnings

    def release_workspaces(self) -> list[str]:
        """Leave the workspaces this sandbox bind-mounted as plain directories holding only what
        may reach the host: a disk is released (`disk.WorkspaceDisk.release`), a directory
        cleaned where it lies (`sanitize.clean_in_place`). Call it once no container runs.
        Returns one warning per workspace that held something that was not kept."""
        with self._lock:
            workspaces = dict(self._workspaces)
            self._workspaces.clear()
        warnings = []
        for path, disk in workspaces.items():
            kept = disk.release() if disk is not None else clean_in_place(path)
            if kept:
                warnings.append(kept.warning(path))
        return warnings

    def _with_disk(self, spec: SandboxSpec) -> SandboxSpec:
        """`spec`, its workspace on a disk of its `workspace_limit` (mounted for the first spec
        of that workspace); without the limit where no disk could be mounted (a warning said
        why), so that its result claims none."""
        if spec.workspace is None:
            return spec
        from toka_agents.sandbox.workspace import workspace_mode  # it imports this module

        if workspace_mode() == "volume":  # the engine's own directory: a disk of ours would hide it
            return spec.model_copy(update={"workspace_limit": None})
        with self._lock:
            if spec.workspace not in self._workspaces:
                self._workspaces[spec.workspace] = (
                    WorkspaceDisk.attach(spec.workspace, spec.workspace_limit, spec.user)
                    if spec.workspace_limit is not None
                    else None
                )
            disk = self._workspaces[spec.workspace]
        size = disk.size if disk is not None else None
        return (
            spec if size == spec.workspace_limit else spec.model_copy(update={"workspace_limit": size})
        )

    def _with_egress(self, spec: SandboxSpec) -> SandboxSpec:
        """`spec` with a limited network (`network_allow`): on the internal network of the proxy
        for its allow list and upstream network (started for the first such spec), its HTTP
        clients pointed at the proxy, its DNS refused (see `egress`)."""
        if spec.network_allow is None:
            return spec
        upstream = spec.network or "bridge"
        key = (upstream, tuple(sorted(set(spec.network_allow))))
        with self._egress_lock:
            if self.cancelled:
                raise SandboxCancelled("the run was cancelled")
            egress = self._egress.get(key)
            if egress is None:
                egress = self._egress[key] = start_egress(self.client, self.labels, upstream, key[1])
        return spec.model_copy(
            update={"network": egress.network, "refuse_dns": True, "env": {**spec.env, **egress.env}}
        )

    def _image_id(self, name: str) -> str:
        """The id of the image `name` names now, looked up once per sandbox: the container is
        created from the id, so the id recorded is the one that ran."""
        with self._lock:
            known = self._image_ids.get(name)
        if known is not None:
            return known
        try:
            found = self.client.api.inspect_image(name)["Id"]
        except ImageNotFound as exc:
            raise SandboxError(image_missing(name)) from exc
        except EngineUnreachable:  # its message already says it all
            raise
        except ENGINE_ERRORS as exc:
            raise SandboxError(
                f"the Docker engine could not look up image {name!r}: {engine_said(exc)}"
            ) from exc
        with self._lock:
            self._image_ids[name] = found
        return found

    def warm_containers(self) -> int:
        """Containers waiting in this sandbox's pools now."""
        with self._lock:
            pools = list(self._pools.values())
        return sum(pool.ready for pool in pools)

    def _claim(self, spec: SandboxSpec) -> tuple[WarmPool[Warm], Warm] | None:
        """A warm container for `spec`, now live, and its pool; None when the pool has none
        ready (a new pool starts filling here). Raises `SandboxCancelled` once the sandbox is
        cancelled."""
        with self._lock:
            if self.cancelled:
                raise SandboxCancelled("the run was cancelled")
            if self.pool_size <= 0:
                return None
            key = pool_key(spec)
            pool = self._pools.get(key)
            if pool is None:
                pool = WarmPool(
                    f"{len(self._pools) + 1}",
                    self.pool_size,
                    make=lambda: self._make_warm(spec),
                    discard=self._discard_warm,
                    alive=lambda warm: is_waiting(warm.stream),
                )
                self._pools[key] = pool
                pool.start()
                return None
            warm = pool.claim()
            if warm is None:
                return None
            self._live.add(warm.container.id)
            return pool, warm

    def _make_warm(self, template: SandboxSpec) -> Warm | None:
        """Create, attach to and start a container with `template`'s creation settings (and
        none of its code, env or labels), its supervisor left waiting for a header. None
        once the sandbox is cancelled: a pool then makes no more."""
        try:
            return self._make_warm_container(template)
        except SandboxCancelled:
            return None

    def _make_warm_container(self, template: SandboxSpec) -> Warm:
        if self.cancelled:
            raise SandboxCancelled("the run was cancelled")
        container = self._create(template, warm=True)
        try:
            return Warm(container, self._attach_and_start(container))
        except BaseException:
            self._discard_warm(Warm(container, None))
            raise

    def _discard_warm(self, warm: Warm) -> None:
        if warm.stream is not None:
            with contextlib.suppress(OSError):
                warm.stream.close()
        remove(self.client, warm.container.id)

    def _discard(self, container: Container, *, quietly: bool = False) -> None:
        """Forget a container and remove it. `quietly`: another error is on its way, so a
        removal error is logged rather than raised in its place."""
        with self._lock:
            self._live.discard(container.id)
        try:
            remove(self.client, container.id)
        except SandboxError as exc:
            if not quietly:
                raise
            logger.warning("%s", exc)

    @contextlib.contextmanager
    def session(self, spec: SandboxSpec) -> Iterator[SandboxSession]:
        """One live container for the calls of one task (`session.SandboxSession`), made like
        `spec`'s at its first call and removed when the block ends."""
        session = SandboxSession(self)
        try:
            yield session
        finally:
            session.close()

    def start_attached(self, spec: SandboxSpec) -> tuple[Container, Any, SandboxSpec]:
        """A started container of `spec`'s settings, its supervisor waiting on the attach
        socket returned with it, and the spec it was made with (egress and disk applied); a
        cancel kills it. `discard` removes it."""
        spec = self._with_disk(self._with_egress(spec))
        container = self._create(spec)
        with self._lock:
            self._live.add(container.id)
        try:
            return container, self._attach_and_start(container), spec
        except BaseException:
            self._discard(container, quietly=True)
            raise

    def _attach_and_start(self, container: Container) -> Any:
        """Attach to a created container's stdin and output, then start it (unless the
        sandbox is cancelled); the attach socket, which its supervisor waits on."""
        stream = self._attach(container)
        try:
            with engine_errors("starting", container):
                self._start(container.id)
        except BaseException:
            with contextlib.suppress(OSError):
                stream.close()
            raise
        return stream

    def _attach(self, container: Container) -> Any:
        with engine_errors("attaching to", container):
            return self.client.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )

    def discard(self, container: Container, stream: Any = None) -> None:
        """Close `stream` and remove `container` (its errors logged, not raised)."""
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
        self._discard(container, quietly=True)

    def image_digest(self, name: str) -> str | None:
        """The id of image `name` this sandbox created containers from, if it did."""
        with self._lock:
            return self._image_ids.get(name)

    @contextlib.contextmanager
    def process(self, spec: SandboxSpec, command: list[str]) -> Iterator[AttachedProcess]:
        """A container of its own that runs `command` (a server speaking on its stdin and
        stdout) as the spec's user, with its limits, network, workspace and env, and no
        capability. Yields how a host process becomes its stdin and stdout (`docker start
        --attach --interactive`, reaching the engine as this process does); a cancel of the
        sandbox kills it, and it is removed when the block ends."""
        spec = self._with_disk(self._with_egress(spec))
        if self.cancelled:
            raise SandboxCancelled("the run was cancelled")
        container = self._create(spec, command=command)
        with self._lock:
            self._live.add(container.id)
        try:
            yield AttachedProcess(
                argv=("docker", "start", "--attach", "--interactive", container.id),
                env={k: v for k, v in os.environ.items() if k.startswith("DOCKER_") or k in _CLI_ENV},
                container=str(container),
                out_of_memory=functools.partial(self._out_of_memory, container),
            )
        finally:
            self._discard(container, quietly=True)

    def _out_of_memory(self, container: Container) -> bool:
        try:
            return bool(self.client.api.inspect_container(container.id)["State"].get("OOMKilled"))
        except ENGINE_ERRORS:
            return False

    def _create(
        self, spec: SandboxSpec, warm: bool = False, command: list[str] | None = None
    ) -> Container:
        """Create a container with `spec`'s settings. `warm`: one for a pool, which may serve
        any task of the same creation settings, so it carries only this sandbox's labels and
        a name of its own (labels cannot change after creation)."""
        if warm:
            labels, name = self.labels, f"toka-warm-{secrets.token_hex(4)}"
        else:
            labels = {**self.labels, **spec.labels}
            name = f"{spec.name}-{secrets.token_hex(4)}" if spec.name else None
        return create_container(self.client, self._image_id(spec.image), spec, labels, name, command)

    def _start(self, container_id: str) -> None:
        """Start a created container, unless the sandbox is cancelled (then it never runs)."""
        with self._lock:
            if self.cancelled:
                raise SandboxCancelled("the run was cancelled")
            self._starting += 1
        try:
            self.client.api.start(container_id)
        finally:
            with self._lock:
                self._starting -= 1
                self._lock.notify_all()

    def _attach_and_run(
        self, container: Container, spec: SandboxSpec, on_output: OutputCallback | None
    ) -> SandboxResult:
        return self._run_in(container, self._attach(container), spec, on_output, warm=False)

    def _run_in(
        self,
        container: Container,
        stream: Any,
        spec: SandboxSpec,
        on_output: OutputCallback | None,
        *,
        warm: bool,
    ) -> SandboxResult:
        return run_attached(
            self.client,
            container,
            stream,
            spec,
            on_output,
            warm=warm,
            start=self._start,
            cancelled=lambda: self.cancelled,
            image_digest=self._image_ids.get(spec.image),
        )
