"""The per-run workspace, mounted at /workspace in every container of a run, and copying it out.

Where it lives depends on the engine (`TOKA_WORKSPACE`, by default `auto`):

- `bind`: a directory of this machine, `<root>/<run name>/workspace`, bind-mounted. Only an
  engine on this machine can mount it; `auto` picks it for the local engine's default socket.
- `volume`: a Docker volume on the engine itself, `toka-ws-<flow run id>`, labelled with the run.
  `auto` picks it for every other `DOCKER_HOST` (tcp://, ssh://, another socket): a remote engine
  cannot see this machine's directories. It stays after the run, as a directory does, until
  `toka workspace rm`; `toka workspace get FLOW_RUN_ID DEST` copies it out.

Files go in and out of a volume through a helper container that is created and never started
(the engine's archive API reads and writes a stopped container's volumes), so nothing runs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import secrets
import stat
import tarfile
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import docker
from docker.errors import ImageNotFound
from docker.types import Mount

from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.errors import SandboxError
from toka_agents.sandbox.cleanup import LABEL_MANAGED
from toka_agents.sandbox.engine import ENGINE_ERRORS, connect, engine_said, engine_url, is_local_engine
from toka_agents.sandbox.owners import LABEL_OWNER, LABEL_RUN, current_owner
from toka_agents.sandbox.sanitize import Sanitized
from toka_agents.sandbox.spec import SANDBOX_USER

WORKSPACE_ENV = "TOKA_WORKSPACE"
LABEL_WORKSPACE = "org.toka-agents.workspace"
"""Carried by workspace volumes, and by the helper containers that reach into them."""

WorkspaceMode = Literal["bind", "volume"]


def default_root() -> Path:
    """`$TOKA_HOME/runs`, by default `~/.toka/runs`."""
    return Path(os.environ.get("TOKA_HOME", Path.home() / ".toka")) / "runs"


def workspace_mode(environ: Mapping[str, str] | None = None) -> WorkspaceMode:
    """`bind` or `volume`, from `TOKA_WORKSPACE` (`bind`, `volume` or `auto`, the default)."""
    env = os.environ if environ is None else environ
    chosen = env.get(WORKSPACE_ENV, "auto").strip().lower() or "auto"
    if chosen == "auto":
        return "bind" if is_local_engine(engine_url(env)) else "volume"
    if chosen not in ("bind", "volume"):
        raise SandboxError(f"{WORKSPACE_ENV}={chosen!r} is not one of bind, volume, auto")
    return chosen  # type: ignore[return-value]


def create_workspace(
    root: Path | None, run_name: str, *, run_id: str | None = None, user: str = SANDBOX_USER
) -> Path:
    """Make the run's workspace, writable by `user` (the `uid:gid` its code runs as); return
    the path to bind-mount.

    A directory's run folder (`<root>/<run name>`) is this process's user's alone (mode 700):
    no other user of the machine reaches what the sandbox wrote. A workspace that exists already
    (a resumed run's) is handed to `user` whole. In `volume` mode (see the module) the path is
    the volume's directory on the engine's machine, which that engine can mount; `run_id` names
    and labels the volume."""
    if workspace_mode() == "volume":
        return create_volume(connect(), run_id or run_name, user).path
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name).strip("-") or "run"
    path = (root or default_root()).expanduser().resolve() / safe / "workspace"
    path.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    uid, gid = (int(part) for part in user.split(":"))
    if os.geteuid() == 0:
        if os.stat(path).st_uid not in (0, uid):
            _hand_over(path, uid, gid)
        os.chown(path, uid, gid)
        path.chmod(0o755)
    else:
        # Without root we cannot hand the directory to the sandbox user; let it write anyway
        # (the run folder keeps every other user out).
        path.chmod(0o777)
    return path


def _hand_over(path: Path, uid: int, gid: int) -> None:
    """Make every file under `path` `uid:gid`'s: an earlier attempt's code ran as another user."""
    for directory, subdirectories, files in os.walk(path):
        for name in [*subdirectories, *files]:
            with contextlib.suppress(OSError):
                os.lchown(os.path.join(directory, name), uid, gid)


def volume_name(run_id: str) -> str:
    return "toka-ws-" + (re.sub(r"[^A-Za-z0-9_.-]+", "-", run_id).strip("-") or "run")


@dataclass(frozen=True)
class VolumeWorkspace:
    """A run's workspace volume on one engine."""

    name: str
    path: Path
    """Its directory on the engine's machine: what a container's bind mount names."""


def create_volume(client: docker.DockerClient, run_id: str, user: str = SANDBOX_USER) -> VolumeWorkspace:
    """Create (or find) the run's workspace volume and give its top directory to `user`.
    Raises `SandboxError` in one line when the engine fails it."""
    name = volume_name(run_id)
    labels = {LABEL_MANAGED: "1", LABEL_WORKSPACE: "1", LABEL_RUN: run_id}
    try:
        created = client.api.create_volume(name, driver="local", labels=labels)
    except ENGINE_ERRORS as exc:
        raise SandboxError(f"could not create the workspace volume {name}: {engine_said(exc)}") from exc
    uid, gid = (int(part) for part in user.split(":"))
    top = tarfile.TarInfo("workspace")
    top.type, top.mode, top.uid, top.gid = tarfile.DIRTYPE, 0o755, uid, gid
    with _Helper(client, name, run_id, read_only=False) as helper:
        _engine_call(
            f"preparing the workspace volume {name}", client.api.put_archive, helper, "/", _tar(top)
        )
    return VolumeWorkspace(name, Path(created["Mountpoint"]))


def find_volume(client: docker.DockerClient, run_id: str) -> str:
    """The name of the workspace volume of flow run `run_id`; `SandboxError` if there is none."""
    filters = {"label": [f"{LABEL_WORKSPACE}=1", f"{LABEL_RUN}={run_id}"]}
    found = _engine_call("listing volumes", client.api.volumes, filters=filters)
    names = [volume["Name"] for volume in found.get("Volumes") or []]
    if not names:
        raise SandboxError(
            f"no workspace volume of flow run {run_id} on the Docker engine at {engine_url()} "
            f"(runs on this machine's own engine keep theirs in a directory: see `toka orchestrate`'s "
            f"output, or {default_root()})"
        )
    return names[0]


def copy_out(client: docker.DockerClient, run_id: str, destination: Path) -> tuple[list[str], Sanitized]:
    """Copy flow run `run_id`'s workspace volume into `destination` (made if missing); return
    the paths copied, relative to it, and what was left out or changed: as on every way files of
    a sandbox reach the host (see `sanitize`), links that lead outside it, FIFOs and device
    nodes are left out and setuid/setgid bits cleared (`tarfile`'s "data" filter)."""
    name = find_volume(client, run_id)
    destination.mkdir(parents=True, exist_ok=True)
    found = Sanitized()
    with _Helper(client, name, run_id, read_only=True) as helper, tempfile.TemporaryFile() as spool:
        chunks, _ = _engine_call(
            f"reading the workspace volume {name}", client.api.get_archive, helper, "/workspace/."
        )
        for chunk in chunks:
            spool.write(chunk)
        spool.seek(0)
        with tarfile.open(fileobj=spool, mode="r|") as archive:
            return extract_clean(archive, destination, found), found


def put_into_volume(client: docker.DockerClient, run_id: str, archive: IO[bytes]) -> None:
    """Unpack `archive` (a tar whose members are under `workspace/`) into flow run `run_id`'s
    workspace volume."""
    name = find_volume(client, run_id)
    with _Helper(client, name, run_id, read_only=False) as helper:
        _engine_call(
            f"seeding the workspace volume {name}", client.api.put_archive, helper, "/", archive
        )


@contextlib.contextmanager
def local_workspace(workspace: Path, run_id: str) -> Iterator[Path]:
    """The run's workspace as a directory of this machine: `workspace` itself in `bind` mode, a
    temporary copy of the run's volume in `volume` mode, removed on exit."""
    if workspace_mode() != "volume":
        yield workspace
        return
    with tempfile.TemporaryDirectory(prefix="toka-workspace-") as scratch:
        copy_out(connect(), run_id, Path(scratch))
        yield Path(scratch)


def remove_volume(client: docker.DockerClient, run_id: str) -> str:
    """Remove flow run `run_id`'s workspace volume; return its name."""
    name = find_volume(client, run_id)
    _engine_call(f"removing the workspace volume {name}", client.api.remove_volume, name, force=True)
    return name


def extract_clean(archive: tarfile.TarFile, destination: Path, found: Sanitized) -> list[str]:
    """Unpack `archive` into `destination` as every way files of a sandbox reach the host does
    (see `copy_out`), noting in `found` what was left out or changed; return the paths unpacked."""
    return list(_extract(archive, destination, found))


def _extract(archive: tarfile.TarFile, destination: Path, found: Sanitized) -> Iterator[str]:
    for member in archive:
        relative = member.name.removeprefix("./").lstrip("/")
        if not relative or relative == ".":
            continue
        try:
            archive.extract(member, destination, filter="data")  # refuses escapes and device files
        except tarfile.FilterError:
            found.dropped.append((relative, _left_out(member)))
            continue
        if member.mode & (stat.S_ISUID | stat.S_ISGID):
            found.cleared.append(relative)
        yield relative


def _left_out(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return f"a link to {member.linkname!r}, outside the workspace"
    if member.isfifo():
        return "a FIFO"
    if member.ischr() or member.isblk():
        return "a device node"
    return "a path outside the workspace"


class _Helper:
    """A created, never started container with the volume at /workspace, removed on exit."""

    def __init__(self, client: docker.DockerClient, volume: str, run_id: str, read_only: bool) -> None:
        self.client, self.volume, self.run_id, self.read_only = client, volume, run_id, read_only
        self.id: str | None = None

    def __enter__(self) -> str:
        api = self.client.api
        host = api.create_host_config(
            network_mode="none",
            mounts=[Mount("/workspace", self.volume, type="volume", read_only=self.read_only)],
        )
        labels = {
            LABEL_MANAGED: "1",
            LABEL_WORKSPACE: "1",
            LABEL_RUN: self.run_id,
            LABEL_OWNER: current_owner(),
        }
        try:
            created = api.create_container(
                DEFAULT_IMAGE,
                command=["true"],
                name=f"toka-workspace-{secrets.token_hex(4)}",
                labels=labels,
                network_disabled=True,
                host_config=host,
            )
        except ImageNotFound as exc:
            raise SandboxError(
                f"image {DEFAULT_IMAGE!r} is not on the Docker engine at {engine_url()}: build it "
                "there with `toka sandbox build` (with DOCKER_HOST set to that engine)"
            ) from exc
        except ENGINE_ERRORS as exc:
            raise SandboxError(
                f"could not reach the workspace volume {self.volume}: {engine_said(exc)}"
            ) from exc
        self.id = created["Id"]
        return self.id

    def __exit__(self, *exc_info: object) -> None:
        if self.id is not None:
            # Gone already is fine; one left behind carries the owner label for the next sweep.
            with contextlib.suppress(*ENGINE_ERRORS):
                self.client.api.remove_container(self.id, force=True)


def _tar(*members: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for member in members:
            archive.addfile(member)
    return buffer.getvalue()


def _engine_call(doing: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return call(*args, **kwargs)
    except ENGINE_ERRORS as exc:
        raise SandboxError(f"Docker engine error while {doing}: {engine_said(exc)}") from exc
