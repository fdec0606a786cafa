"""A workspace's material going in, and the whole workspace going out as one archive.

`seed_workspace` fills a new run's workspace before its first task: with a copy of a directory
of this machine (never mounted, so nothing the agents do reaches it) or with a clone of a git
repository (made here, then copied in). Regular files, directories and symbolic links are
copied; FIFOs, sockets and device nodes are left out. The files become the run's sandbox user's,
as if its code had written them, and the seed counts against the workspace's size limit: one
larger than the limit is refused before anything is copied, naming both sizes.

`archive_workspace` packs a workspace directory into a `.tar.gz`, links kept as links, for the
run's result storage.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from toka_agents.config.limits import format_bytes
from toka_agents.config.workspace import WorkspaceSeed
from toka_agents.errors import SandboxError
from toka_agents.sandbox.engine import connect
from toka_agents.sandbox.spec import SANDBOX_USER
from toka_agents.sandbox.workspace import put_into_volume, workspace_mode

GIT_TIMEOUT = 600.0
"""Seconds a clone may take before the run is refused."""
SEED_ROOTS_ENV = "TOKA_SEED_ROOTS"
"""Directories (separated by `:`) that seeds may come from, on the machine that runs the flow;
by default its current directory. A seed's path may come from a run's inputs, which anyone with
the run form gives: without a bound, `/etc` or `/root` would be theirs to copy in."""
_PROTOCOLS = ("https", "http", "ssh", "git", "file")
"""The only transports a clone may use: not `ext::` or `fd::`, which run commands or read
this process's own descriptors."""


@dataclass(frozen=True)
class Seeded:
    """What a seed put in the workspace."""

    source: str
    files: int
    size: int
    left_out: tuple[str, ...] = ()
    """Paths (relative) of what is no file, directory or link, so was not copied."""

    def describe(self) -> str:
        what = f"{self.files:,} file(s), {format_bytes(self.size)}"
        skipped = f"; left out (not files): {', '.join(self.left_out[:10])}" if self.left_out else ""
        return f"seeded the workspace from {self.source}: {what}{skipped}"


def seed_workspace(
    workspace: Path, seed: WorkspaceSeed, limit: int, *, run_id: str, user: str = SANDBOX_USER
) -> Seeded:
    """Put `seed`'s material in the new workspace `workspace` (a directory, or in `volume` mode
    the run's volume, see `workspace`), its files `user`'s (`uid:gid`). Raises `SandboxError`
    in one line when the source is missing or out of bounds (`TOKA_SEED_ROOTS`), a clone fails
    or the material exceeds `limit` bytes."""
    try:
        return _seed(workspace, seed, limit, run_id, user)
    except (OSError, ValueError) as exc:  # a file gone or unreadable mid-copy, a NUL in a ref
        raise SandboxError(f"could not seed the workspace from {seed.source}: {exc}") from None


def _seed(workspace: Path, seed: WorkspaceSeed, limit: int, run_id: str, user: str) -> Seeded:
    with _source_directory(seed) as source:
        entries, left_out = _entries(source, seed.exclude)
        size = sum(info.st_size for _, info in entries if stat.S_ISREG(info.st_mode))
        if size > limit:
            raise SandboxError(
                f"the workspace seed {seed.source} holds {format_bytes(size)}, more than the "
                f"workspace's limit of {format_bytes(limit)} (limits.workspace)"
            )
        if workspace_mode() == "volume":
            with tempfile.TemporaryFile() as archive:
                _pack(source, entries, archive, user)
                archive.seek(0)
                put_into_volume(connect(), run_id, archive)
        else:
            _copy(source, entries, workspace, user)
        files = sum(1 for _, info in entries if not stat.S_ISDIR(info.st_mode))
        return Seeded(seed.source, files, size, tuple(left_out))


@contextmanager
def _source_directory(seed: WorkspaceSeed) -> Iterator[Path]:
    if seed.from_ is not None:
        source = Path(seed.from_)
        if not source.is_dir():
            found = "does not exist" if not source.exists() else "is not a directory"
            raise SandboxError(f"the workspace seed {seed.from_} {found} on this machine")
        yield _within_roots(source, seed.from_)
        return
    assert seed.git is not None
    if (local := _local_repository(seed.git)) is not None:
        _within_roots(local, seed.git)
    with tempfile.TemporaryDirectory(prefix="toka-seed-") as scratch:
        clone = Path(scratch) / "clone"
        _git("clone", "--quiet", "--no-hardlinks", "--", seed.git, str(clone), seed=seed)
        if seed.ref is not None:
            _git("-C", str(clone), "checkout", "--quiet", seed.ref, seed=seed)
        yield clone


def _local_repository(url: str) -> Path | None:
    """The path of a repository of this machine that `url` names (`/srv/repo`, `file:///srv/repo`,
    `repo`), or None for a remote one (`https://...`, `host:path`)."""
    if url.startswith("file://"):
        return Path(url.removeprefix("file://"))
    if "://" in url or (":" in url.split("/", 1)[0] and not url.startswith("/")):
        return None
    return Path(url)


def seed_roots() -> list[Path]:
    """The directories seeds may come from (`TOKA_SEED_ROOTS`, by default the current one)."""
    given = os.environ.get(SEED_ROOTS_ENV, "")
    return [Path(part).resolve() for part in given.split(os.pathsep) if part] or [Path.cwd().resolve()]


def _within_roots(path: Path, shown: str) -> Path:
    real = path.resolve()
    roots = seed_roots()
    if not any(real == root or real.is_relative_to(root) for root in roots):
        allowed = ", ".join(str(root) for root in roots)
        raise SandboxError(
            f"the workspace seed {shown} is outside the directories seeds may come from "
            f"({allowed}); {SEED_ROOTS_ENV} on the machine that runs the flow names them"
        )
    return real


def _git(*args: str, seed: WorkspaceSeed) -> None:
    git = shutil.which("git")
    if git is None:
        raise SandboxError("cloning the workspace seed needs git on this machine (apt-get install git)")
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true", "SSH_ASKPASS": "true"}
    allowed = [part for name in _PROTOCOLS for part in ("-c", f"protocol.{name}.allow=always")]
    command = [git, "-c", "protocol.allow=never", *allowed, *args]
    try:
        done = subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise SandboxError(f"cloning {seed.source} took more than {GIT_TIMEOUT:.0f}s") from None
    if done.returncode != 0:
        said = " ".join(done.stderr.split()) or f"exit code {done.returncode}"
        raise SandboxError(f"could not clone the workspace seed {seed.source}: {said}")


def _entries(source: Path, exclude: list[str]) -> tuple[list[tuple[str, os.stat_result]], list[str]]:
    """Every file, directory and link under `source` (relative path, lstat) that `exclude`
    does not name, parents first, and the relative paths of what is none of those."""
    entries: list[tuple[str, os.stat_result]] = []
    left_out: list[str] = []
    pending = [""]
    while pending:
        relative = pending.pop()
        with os.scandir(source / relative if relative else source) as found:
            for entry in sorted(found, key=lambda e: e.name):
                path = f"{relative}/{entry.name}" if relative else entry.name
                if any(
                    fnmatch.fnmatchcase(entry.name, p) or fnmatch.fnmatchcase(path, p) for p in exclude
                ):
                    continue
                info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    entries.append((path, info))
                    pending.append(path)
                elif stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode):
                    entries.append((path, info))
                else:
                    left_out.append(path)
    return entries, left_out


def _copy(source: Path, entries: list[tuple[str, os.stat_result]], workspace: Path, user: str) -> None:
    uid, gid = (int(part) for part in user.split(":"))
    as_root = os.geteuid() == 0
    for relative, info in entries:
        src, dst = source / relative, workspace / relative
        if stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(src), dst)
        elif stat.S_ISDIR(info.st_mode):
            dst.mkdir()
        else:
            _copy_bytes(src, dst, info.st_size)
        if not stat.S_ISLNK(info.st_mode):
            # Without root the files stay ours: let the sandbox's user write them, as the
            # workspace directory itself does (see `create_workspace`).
            mode = stat.S_IMODE(info.st_mode) & 0o755 | 0o600
            os.chmod(
                dst, mode if as_root else mode | 0o666 | (0o111 if stat.S_ISDIR(info.st_mode) else 0)
            )
            os.utime(dst, ns=(info.st_atime_ns, info.st_mtime_ns))
        if as_root:
            os.lchown(dst, uid, gid)


def _copy_bytes(source: Path, target: Path, size: int) -> None:
    """At most `size` bytes of `source`, the size it was counted at: a file that grows while it
    is copied (or a /proc file, which says 0) cannot take more than its share of the limit."""
    with open(source, "rb") as reader, open(target, "xb") as writer:
        sent = 0
        while sent < size:
            done = os.sendfile(writer.fileno(), reader.fileno(), sent, min(size - sent, 1 << 30))
            if done == 0:
                break
            sent += done


def _pack(
    source: Path, entries: list[tuple[str, os.stat_result]], archive: IO[bytes], user: str
) -> None:
    """A tar of the entries under `workspace/`, owned by `user`, for a volume."""
    uid, gid = (int(part) for part in user.split(":"))
    linked: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=archive, mode="w") as tar:
        top = tarfile.TarInfo("workspace")  # else the engine hands the volume's top to root
        top.type, top.mode, top.uid, top.gid = tarfile.DIRTYPE, 0o755, uid, gid
        tar.addfile(top)
        for relative, info in entries:
            member = _member(source / relative, f"workspace/{relative}", info, linked)
            if member is not None:
                member.uid, member.gid = uid, gid
                member.mode = member.mode & 0o755 | 0o600
                _add(tar, member, source / relative)


def archive_workspace(workspace: Path, archive: IO[bytes]) -> list[str]:
    """Write `workspace`'s tree to `archive` as a `.tar.gz` (paths relative to it, symbolic and
    hard links kept as links; FIFOs, sockets and devices left out); return what was left out
    for being sparse, each as `path (size)`.

    A sparse file is mostly holes: a tar holds its holes as zeros, so a 1GB workspace could
    hold a file of terabytes that takes hours to pack and fills the disk of whoever unpacks it.
    A file of more than `SPARSE_BYTES` whose blocks on disk are under a quarter of its size is
    left out."""
    left_out: list[str] = []
    linked: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=archive, mode="w:gz", compresslevel=6) as tar:
        for directory, subdirectories, files in os.walk(workspace):
            subdirectories.sort()
            for name in [*subdirectories, *sorted(files)]:
                path = Path(directory, name)
                relative = str(path.relative_to(workspace))
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode) and _sparse(info):
                    left_out.append(f"{relative} ({format_bytes(info.st_size)})")
                    continue
                member = _member(path, relative, info, linked)
                if member is not None:
                    _add(tar, member, path)
    return left_out


SPARSE_BYTES = 16 * 1024**2


def _sparse(info: os.stat_result) -> bool:
    return info.st_size > SPARSE_BYTES and info.st_blocks * 512 * 4 < info.st_size


def _member(
    path: Path, name: str, info: os.stat_result, linked: dict[tuple[int, int], str]
) -> tarfile.TarInfo | None:
    """The tar header of a file, directory or link at `path` (None for anything else): made
    here rather than by `gettarinfo`, which looks up the owner's user and group names, slowly
    for the sandbox's nameless uids, and writes a pax header for sub-second times."""
    member = tarfile.TarInfo(name)
    member.mode, member.uid, member.gid = stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid
    member.mtime = int(info.st_mtime)
    if stat.S_ISREG(info.st_mode):
        first = linked.setdefault((info.st_dev, info.st_ino), name) if info.st_nlink > 1 else name
        if first != name:
            member.type, member.linkname = tarfile.LNKTYPE, first
        else:
            member.size = info.st_size
    elif stat.S_ISDIR(info.st_mode):
        member.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(info.st_mode):
        member.type, member.linkname = tarfile.SYMTYPE, os.readlink(path)
    else:
        return None
    return member


def _add(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path) -> None:
    if member.isreg():
        with open(path, "rb") as data:
            tar.addfile(member, data)
    else:
        tar.addfile(member)
