"""Runs code in a container of its own per call and removes it whatever happens.

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
its leftovers at the run's end.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import LogConfig, Mount
from docker.utils.socket import frames_iter
from requests.exceptions import RequestException

from toka_agents.errors import SandboxError
from toka_agents.sandbox.disk import WorkspaceDisk, release_orphaned
from toka_agents.sandbox.egress import (
    REFUSED_DNS,
    Egress,
    remove_networks,
    remove_orphaned_networks,
    start_egress,
)
from toka_agents.sandbox.engine import EngineUnreachable
from toka_agents.sandbox.output import Capture, Captured, OutputCallback
from toka_agents.sandbox.owners import LABEL_OWNER, current_owner, is_orphaned
from toka_agents.sandbox.pool import PoolKey, WarmPool, pool_key
from toka_agents.sandbox.spec import SandboxResult, SandboxSpec

LABEL_MANAGED = "org.toka-agents.managed"
BOOTSTRAP = resources.files("toka_agents.sandbox").joinpath("bootstrap.py").read_text()
SUPERVISOR_USER = "0:0"
"""The supervisor (PID 1) runs as another user than the code, so the code cannot reach its
memory or file descriptors (and through them the output cap and the report)."""
SUPERVISOR_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
"""All the supervisor keeps of root: enough to start the code as `SandboxSpec.user` and to
kill it at its time limit (and what it leaves running, at its end). No other capability (not
even reading files it does not own), and the code has none at all."""
_STREAMS = {1: "stdout", 2: "stderr"}
_ENGINE_ERRORS = (DockerException, RequestException, OSError)
HOST_GRACE = 2.0
"""Seconds past the time limit after which this process kills the container, in case the
supervisor (which kills the code at the limit and reports what it used) could not."""
DEADLINE_GRACE = 5.0
"""Seconds past the time limit after which the supervisor ends the container itself, in
case this process died before its timer could kill it."""
IDLE_LIMIT = 3600
"""Seconds a container waits for its code before its supervisor ends it: a warm container
of a process that forgot it (without dying, which closes its socket) does not wait forever."""


logger = logging.getLogger(__name__)


class SandboxCancelled(SandboxError):
    """The sandbox was cancelled: it starts no more containers."""


@dataclass(frozen=True)
class Container:
    """A container a sandbox created: its id, and the name `docker ps` shows."""

    id: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:12]})" if self.name else self.id[:12]


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
        self._disks: dict[Path, WorkspaceDisk | None] = {}
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
            _kill(self.client, container_id)
        for pool in pools:
            pool.close()

    def close(self) -> None:
        """Cancel (see `cancel`) and remove every container carrying this sandbox's labels."""
        self.cancel()
        self.remove_leftovers()

    def remove_leftovers(self) -> int:
        """Remove every container carrying this sandbox's labels, then release the workspace
        disks it mounted (their files stay, in plain directories); return how many containers
        there were."""
        with self._egress_lock:  # a proxy starting now is up (and found below) when this returns
            self._egress.clear()
        try:
            return remove_labeled(self.client, self.labels)
        finally:
            self.release_disks()
            remove_networks(self.client, self.labels)  # after their containers, the proxies too

    def release_disks(self) -> None:
        """Release the workspace disks this sandbox mounted (see `disk.WorkspaceDisk.release`)."""
        with self._lock:
            disks = [disk for disk in self._disks.values() if disk is not None]
            self._disks.clear()
        for disk in disks:
            disk.release()

    def _with_disk(self, spec: SandboxSpec) -> SandboxSpec:
        """`spec`, its workspace on a disk of its `workspace_limit` (mounted for the first spec
        of that workspace); without the limit where no disk could be mounted (a warning said
        why), so that its result claims none."""
        if spec.workspace is None or spec.workspace_limit is None:
            return spec
        from toka_agents.sandbox.workspace import workspace_mode  # it imports this module

        if workspace_mode() == "volume":  # the engine's own directory: a disk of ours would hide it
            return spec.model_copy(update={"workspace_limit": None})
        with self._lock:
            if spec.workspace not in self._disks:
                self._disks[spec.workspace] = WorkspaceDisk.attach(spec.workspace, spec.workspace_limit)
            disk = self._disks[spec.workspace]
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
            raise SandboxError(
                f"sandbox image {name!r} is not on the Docker engine: build it with "
                "`toka sandbox build` (scripts/setup does), or set `image:` to one you have"
            ) from exc
        except EngineUnreachable:  # its message already says it all
            raise
        except _ENGINE_ERRORS as exc:
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
                    alive=_waiting,
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
        stream = None
        try:
            with engine_errors("attaching to", container):
                stream = self.client.api.attach_socket(
                    container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
                )
            with engine_errors("starting", container):
                self._start(container.id)
        except BaseException:
            self._discard_warm(Warm(container, stream))
            raise
        return Warm(container, stream)

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

    def _create(self, spec: SandboxSpec, warm: bool = False) -> Container:
        """Create a container with `spec`'s settings. `warm`: one for a pool, which may serve
        any task of the same creation settings, so it carries only this sandbox's labels and
        a name of its own (labels cannot change after creation)."""
        if warm:
            labels, name = self.labels, f"toka-warm-{secrets.token_hex(4)}"
        else:
            labels = {**self.labels, **spec.labels}
            name = f"{spec.name}-{secrets.token_hex(4)}" if spec.name else None
        image = self._image_id(spec.image)
        try:
            created = self.client.api.create_container(
                image,
                command=["python3", "-c", BOOTSTRAP, str(IDLE_LIMIT)],
                user=SUPERVISOR_USER,
                stdin_open=True,  # with detach=False the SDK also sets StdinOnce
                labels=labels,
                name=name,
                working_dir="/workspace" if spec.workspace else "/tmp",
                network_disabled=spec.network is None,
                host_config=self.client.api.create_host_config(**host_settings(spec)),
            )
        except ImageNotFound as exc:
            raise SandboxError(
                f"sandbox image {spec.image!r} is not on the Docker engine: build it with "
                "`toka sandbox build` (scripts/setup does), or set `image:` to one you have"
            ) from exc
        except EngineUnreachable:  # its message already says it all
            raise
        except _ENGINE_ERRORS as exc:
            what = f"container {name}" if name else f"a container of {spec.image}"
            raise SandboxError(
                f"the Docker engine refused to create {what}: {engine_said(exc)}"
            ) from exc
        return Container(created["Id"], name)

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
        with engine_errors("attaching to", container):
            stream = self.client.api.attach_socket(
                container.id, params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1}
            )
        return self._run_in(container, stream, spec, on_output, warm=False)

    def _run_in(
        self,
        container: Container,
        stream: Any,
        spec: SandboxSpec,
        on_output: OutputCallback | None,
        *,
        warm: bool,
    ) -> SandboxResult:
        """Send `spec`'s code to the supervisor on `stream` (starting the container first
        unless it is `warm`, already running) and collect the result. The time limit, the
        host's timer and the supervisor's deadline alike, counts from here."""
        api = self.client.api
        marker = f"TOKA-RESULT-{secrets.token_hex(8)}"
        header = {
            "language": spec.language,
            "output_limit": spec.output_limit,
            "marker": marker,
            "user": spec.user,
            "cwd": "/workspace" if spec.workspace else "/tmp",
            "timeout": spec.timeout,
            "deadline": spec.timeout + DEADLINE_GRACE,
            "env": spec.env,
        }
        payload = json.dumps(header).encode() + b"\n" + spec.source.encode()
        capture = Capture(spec.output_limit, b"\0" + marker.encode(), on_output)
        timed_out = threading.Event()

        def on_deadline() -> None:
            timed_out.set()
            _kill(self.client, container.id)

        timer = threading.Timer(spec.timeout + HOST_GRACE, on_deadline)
        timer.daemon = True
        try:
            if not warm:
                with engine_errors("starting", container):
                    self._start(container.id)
            started = time.monotonic()
            timer.start()
            _send(stream, payload)
            for number, chunk in _frames(stream, container):
                if number in _STREAMS:
                    capture.add(_STREAMS[number], chunk)
                    # A warm container's result is in: the task is done, and the container,
                    # which now ends by itself, is retired without waiting for its end.
                    if warm and capture.complete:
                        break
            if warm and capture.complete:
                status: dict[str, Any] = {}
                state: dict[str, Any] = {}
            else:
                with engine_errors("waiting for", container):
                    status = api.wait(container.id, timeout=max(spec.timeout, 30))
            duration = time.monotonic() - started
        finally:
            timer.cancel()
            with contextlib.suppress(OSError):
                stream.close()
        if status:
            with engine_errors("inspecting", container):
                state = api.inspect_container(container.id)["State"]
        if state.get("Status") in ("removing", "dead") and not (timed_out.is_set() or self.cancelled):
            raise SandboxError(f"container {container} was removed while its task ran")
        output = capture.finish()
        killed_at_limit = timed_out.is_set() or bool(output.report and output.report.timed_out)
        return _result(
            spec,
            container.id,
            output,
            status=status.get("StatusCode"),
            oom_killed=bool(state.get("OOMKilled")),
            timed_out=killed_at_limit,
            cancelled=self.cancelled and not killed_at_limit,
            duration=min(duration, spec.timeout) if killed_at_limit else duration,
            warm=warm,
            image_digest=self._image_ids.get(spec.image),
        )


@contextlib.contextmanager
def engine_errors(doing: str, container: Container) -> Iterator[None]:
    """Turn an error of the engine (or of the connection to it) into a one-line `SandboxError`
    saying what the engine said, doing what, to which container."""
    try:
        yield
    except _ENGINE_ERRORS as exc:
        raise SandboxError(
            f"Docker engine error while {doing} container {container}: {engine_said(exc)}"
        ) from exc


def engine_said(exc: BaseException) -> str:
    """The engine's own words from an error, in one line."""
    explanation = getattr(exc, "explanation", None)  # an APIError's message from the engine
    text = str(explanation or exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _frames(stream: Any, container: Container) -> Iterator[tuple[int, bytes]]:
    """The attach stream's (stream number, bytes) frames, failing as `engine_errors` does."""
    with engine_errors("reading the output of", container):
        yield from frames_iter(stream, tty=False)


def host_settings(spec: SandboxSpec) -> dict[str, Any]:
    """The Docker host config of a spec: where every limit and permission reaches the container."""
    mounts = []
    if spec.workspace is not None:
        mounts.append(
            Mount(
                target="/workspace",
                source=str(spec.workspace),
                type="bind",
                read_only=not spec.workspace_writable,
            )
        )
    return {
        "network_mode": spec.network or "none",
        "mem_limit": spec.memory,
        "memswap_limit": spec.memory,  # no swap: the memory limit is the limit
        "nano_cpus": int(spec.cpus * 1e9),
        "pids_limit": spec.pids,
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmp_size},mode=1777"},
        "cap_drop": ["ALL"],
        "cap_add": SUPERVISOR_CAPABILITIES,
        "security_opt": ["no-new-privileges"],
        "mounts": mounts,
        **(REFUSED_DNS if spec.refuse_dns else {}),
        # Output is read from the attach socket; keeping a log file too would only use disk.
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }


def _send(stream: Any, payload: bytes) -> None:
    raw = getattr(stream, "_sock", stream)
    raw.settimeout(None)  # quiet code may print nothing for long; the timer enforces the limit
    try:
        raw.sendall(payload)
        raw.shutdown(socket.SHUT_WR)  # closes the container's stdin (StdinOnce)
    except OSError:
        pass  # the container is already gone (killed, or no python3 in the image): its result says why


def _result(
    spec: SandboxSpec,
    container_id: str,
    output: Captured,
    *,
    status: int | None,
    oom_killed: bool,
    timed_out: bool,
    cancelled: bool,
    duration: float,
    warm: bool,
    image_digest: str | None = None,
) -> SandboxResult:
    report = output.report
    stderr_text = output.stderr.decode("utf-8", "replace")
    error = output.report_error
    if report is None and error is None and not (timed_out or cancelled or oom_killed):
        last = stderr_text.strip().splitlines()[-1:] or ["no output"]
        error = f"the sandbox supervisor did not report (container exit code {status}): {last[0][:300]}"
    return SandboxResult(
        exit_code=report.exit_code if report else status,
        stdout=output.stdout.decode("utf-8", "replace"),
        stderr=stderr_text,
        stdout_bytes=output.stdout_bytes,
        stderr_bytes=output.stderr_bytes,
        stdout_tail=output.stdout_tail.decode("utf-8", "replace"),
        stderr_tail=output.stderr_tail.decode("utf-8", "replace"),
        peak_memory=report.peak_memory if report else None,
        cpu_seconds=report.cpu_seconds if report else None,
        peak_pids=report.peak_pids if report else None,
        refused_forks=report.refused_forks if report else None,
        disk_written=report.disk_written if report else None,
        tmp_full=bool(report and report.tmp_full),
        workspace_full=bool(report and report.workspace_full),
        oom_killed=oom_killed or bool(report and report.oom_kills),
        error=error,
        output_limit=spec.output_limit,
        duration=duration,
        timed_out=timed_out,
        cancelled=cancelled,
        timeout=spec.timeout,
        memory_limit=spec.memory,
        pids_limit=spec.pids,
        tmp_size=spec.tmp_size,
        workspace_limit=spec.workspace_limit,
        image=spec.image,
        image_digest=image_digest,
        container_id=container_id,
        warm=warm,
    )


def _waiting(warm: Warm) -> bool:
    """Whether a warm container's supervisor still waits: its socket has nothing to read. It
    writes nothing before its header, so anything there (its end, most likely) means gone."""
    raw = getattr(warm.stream, "_sock", warm.stream)
    if raw is None:  # closed
        return False
    try:
        readable, _, _ = select.select([raw], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _kill(client: docker.DockerClient, container_id: str) -> None:
    with contextlib.suppress(*_ENGINE_ERRORS):  # already stopped or gone: removal follows
        client.api.kill(container_id)


def remove(client: docker.DockerClient, container_id: str, attempts: int = 5) -> None:
    """Force-remove a container; gone already is fine. Raises `SandboxError` if it stays."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.api.remove_container(container_id, force=True, v=True)
            return
        except NotFound:
            return
        except APIError as exc:
            if exc.status_code == 409 and "in progress" in str(exc):
                _wait_until_removed(client, container_id)  # another remover's: gone when we return
                return
            last = exc
        except _ENGINE_ERRORS as exc:
            last = exc
        time.sleep(0.2 * (attempt + 1))
    said = engine_said(last) if last else "no answer"
    raise SandboxError(f"could not remove container {container_id[:12]}: {said}")


def _wait_until_removed(client: docker.DockerClient, container_id: str, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(container_id)
        except NotFound:
            return
        except _ENGINE_ERRORS:
            return  # the engine's trouble is for the next caller to report
        time.sleep(0.05)


def remove_labeled(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove every container that carries all of `labels`; return how many there were."""
    found = list_labeled(client, labels)
    for container_id in found:
        remove(client, container_id)
    return len(found)


def list_labeled(client: docker.DockerClient, labels: dict[str, str]) -> list[str]:
    filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
    return [c["Id"] for c in client.api.containers(all=True, filters=filters)]


def remove_orphans(client: docker.DockerClient, labels: dict[str, str] | None = None) -> list[str]:
    """Remove the containers of toka-agents processes on this host that were killed before
    they could clean up (see `owners`), only those carrying `labels` too when given, then
    release the workspace disks such processes left mounted; return the container ids
    removed. Never raises: what cannot be removed now is tried again by the next run."""
    wanted = [f"{LABEL_MANAGED}=1", *(f"{key}={value}" for key, value in (labels or {}).items())]
    try:
        found = client.api.containers(all=True, filters={"label": wanted})
    except _ENGINE_ERRORS:
        found = []
    removed = []
    for container in found:
        owner = (container.get("Labels") or {}).get(LABEL_OWNER)
        if owner is not None and is_orphaned(owner):
            with contextlib.suppress(SandboxError):
                remove(client, container["Id"])
                removed.append(container["Id"])
    release_orphaned()
    remove_orphaned_networks(client)
    return removed
