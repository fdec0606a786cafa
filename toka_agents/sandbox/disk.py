"""The workspace's size limit: a file system of its own, of the limit's size, for each run.

A run's workspace is a host directory bind-mounted at /workspace, so without a limit code
holding `filesystem-write` could fill the host's disk. `WorkspaceDisk.attach` makes a sparse
file next to the workspace, formats it ext4 (no journal, nothing reserved for root, its root
directory owned by the sandbox user) and loop-mounts it on the workspace directory before any
container mounts it: a write past the limit then fails inside the container with ENOSPC, and
the host's disk holds at most the limit's worth of blocks for the run.

When the run ends, `release` copies what the agents wrote into a plain directory at the
workspace's path (where the run's summary says its files are), unmounts the disk and deletes
its file. A process killed before it could release leaves an owner file beside the disk
file; `release_orphaned` (called with the container sweep, `remove_orphans`) releases the
disks of owners that are gone.

It needs root (mount), `mkfs.ext4` (Debian's e2fsprogs) and a workspace on this machine (an
engine elsewhere keeps it in a volume there); where one is missing, `attach` logs a warning
saying so and returns None: the workspace is then unlimited.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from toka_agents.config.limits import format_bytes
from toka_agents.sandbox.owners import current_owner, is_orphaned
from toka_agents.sandbox.spec import SANDBOX_USER

DISK_SUFFIX = ".workspace-disk"
"""The disk file of workspace `W` is `W` + this suffix; its owner file adds `.owner`."""
_MAX_INODES_RATIO = 64 * 1024
"""One inode per this many bytes: fewer inode tables than mkfs's default, less overhead."""

logger = logging.getLogger(__name__)


class DiskUnavailable(Exception):
    """A workspace disk cannot be made here; the message says why."""


@dataclass
class WorkspaceDisk:
    """A mounted workspace disk: `path` is the workspace, `size` its limit in bytes."""

    path: Path
    size: int

    @property
    def file(self) -> Path:
        return disk_file(self.path)

    @classmethod
    def attach(cls, path: Path, size: int) -> WorkspaceDisk | None:
        """Mount a file system of `size` bytes on the workspace `path`, keeping what the
        directory already holds; None (with a warning logged) where that cannot be done."""
        try:
            return cls._attach(path, size)
        except DiskUnavailable as exc:
            logger.warning(
                "the workspace %s has no size limit (%s wanted): %s", path, format_bytes(size), exc
            )
            return None

    @classmethod
    def _attach(cls, path: Path, size: int) -> WorkspaceDisk:
        if os.geteuid() != 0:
            raise DiskUnavailable("mounting a disk of its own needs root")
        mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
        if mkfs is None:
            raise DiskUnavailable("mkfs.ext4 is missing (apt-get install e2fsprogs)")
        if not path.is_dir():
            raise DiskUnavailable("it is not a directory of this machine (a remote engine's volume?)")
        if os.path.ismount(path):
            raise DiskUnavailable("something is mounted there already")
        disk = cls(path, size)
        disk.file.with_name(disk.file.name + ".owner").write_text(current_owner())
        try:
            with open(disk.file, "wb") as handle:
                handle.truncate(_image_size(size))  # sparse: blocks are used as they are written
            uid, gid = SANDBOX_USER.split(":")
            _run(
                mkfs,
                "-q", "-F", "-m", "0", "-N", str(max(size // _MAX_INODES_RATIO, 1024)),
                "-O", "^has_journal",
                "-E", f"nodiscard,lazy_itable_init=1,root_owner={uid}:{gid}",
                str(disk.file),
            )  # fmt: skip
            kept = _set_aside(path)
            try:
                _run("mount", "-o", "loop,nosuid,nodev", str(disk.file), str(path))
                # mkfs's lost+found is no file of the agents' (nothing will fsck this disk)
                with contextlib.suppress(OSError):
                    (path / "lost+found").rmdir()
            except BaseException:
                if kept is not None:  # put the files back where they were
                    path.rmdir()
                    kept.rename(path)
                raise
            if kept is not None:
                try:
                    _copy_into(kept, path)  # fails when the files exceed the limit
                except BaseException:
                    _unmount(path)
                    shutil.rmtree(path)
                    kept.rename(path)
                    raise
                shutil.rmtree(kept)
        except BaseException:
            disk.release()
            raise
        return disk

    def release(self) -> None:
        """Put what the workspace holds in a plain directory at its path, unmount the disk and
        delete its file. Never raises: what cannot be done is logged."""
        try:
            if os.path.ismount(self.path):
                out = self.path.with_name(self.path.name + ".out")
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                _copy_into(self.path, out)
                _unmount(self.path)
                self.path.rmdir()
                out.rename(self.path)
        except (OSError, DiskUnavailable) as exc:
            logger.warning("could not release the workspace disk of %s: %s", self.path, exc)
            return
        for leftover in (self.file, self.file.with_name(self.file.name + ".owner")):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def disk_file(workspace: Path) -> Path:
    return workspace.with_name(workspace.name + DISK_SUFFIX)


def mounted_disks() -> list[Path]:
    """The workspace disk files that back a loop device now."""
    found = []
    for backing in glob.glob("/sys/block/loop*/loop/backing_file"):
        with contextlib.suppress(OSError):
            name = Path(backing).read_text().strip().removesuffix(" (deleted)")
            if name.endswith(DISK_SUFFIX):
                found.append(Path(name))
    return found


def release_orphaned() -> list[Path]:
    """Release the workspace disks whose owner process is gone (killed before it could);
    return their workspaces. Never raises."""
    released = []
    for file in mounted_disks():
        try:
            owner = file.with_name(file.name + ".owner").read_text().strip()
        except OSError:
            continue  # not one of ours, or it is being released now
        if is_orphaned(owner):
            workspace = file.with_name(file.name.removesuffix(DISK_SUFFIX))
            WorkspaceDisk(workspace, 0).release()
            released.append(workspace)
    return released


def _image_size(limit: int) -> int:
    """A disk file size whose ext4 gives about `limit` bytes to files: ext4 keeps up to 2%
    (at most 16MB) back for delayed allocation, and its inode tables and bitmaps take ~1%."""
    return limit + min(limit // 50, 16 * 1024**2) + limit // 90 + 512 * 1024


def _set_aside(path: Path) -> Path | None:
    """Move a non-empty workspace's files aside (to be copied onto its disk); None if empty."""
    if not any(path.iterdir()):
        return None
    aside = path.with_name(path.name + ".before")
    path.rename(aside)
    path.mkdir()
    shutil.copystat(aside, path)
    return aside


def _copy_into(source: Path, target: Path) -> None:
    _run("cp", "-a", "--", f"{source}/.", f"{target}/")


def _unmount(path: Path, attempts: int = 20) -> None:
    """Unmount; a container that still holds it (being removed) lets go within moments, and
    a lazy unmount is the last resort (the loop device goes with its last user)."""
    for _ in range(attempts):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode == 0:
            return
        time.sleep(0.1)
    _run("umount", "--lazy", str(path))


def _run(*argv: str) -> None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True)
    except OSError as exc:
        raise DiskUnavailable(f"{argv[0]}: {exc.strerror}") from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip().splitlines()
        raise DiskUnavailable(f"{' '.join(argv[:2])} failed: {said[-1] if said else done.returncode}")
