"""The workspace's size limit: a file system of its own, of the limit's size, for each run.

A run's workspace is a host directory bind-mounted at /workspace, so without a limit code
holding `filesystem-write` could fill the host's disk. `WorkspaceDisk.attach` makes a sparse
file next to the workspace, formats it ext4 (no journal, nothing reserved for root, its root
directory owned by the sandbox user) and loop-mounts it on the workspace directory before any
container mounts it: a write past the limit then fails inside the container with ENOSPC, and
the host's disk holds at most the limit's worth of blocks for the run.

When the run ends, `release` copies what the agents wrote into a plain directory at the
workspace's path (where the run's summary says its files are), keeping only what may reach the
host (`sanitize.copy_clean`: no setuid bits, FIFOs, sockets, devices or outward links),
unmounts the disk and deletes its file.

A process killed before it could release leaves its disk mounted. The disk file's name carries
its owner (`<workspace>.<pid>-<start>.workspace-disk`, see `owners`), and the loop devices and
the mount table say where every such disk is mounted, whichever `TOKA_HOME` it lives under and
even when its run folder was deleted since: `release_orphaned` (called with the container sweep,
`remove_orphans`, and by `toka sandbox clean`) releases the disks of owners that are gone.

It needs root (mount), `mkfs.ext4` (Debian's e2fsprogs) and a workspace on this machine (an
engine elsewhere keeps it in a volume there); where one is missing, `attach` logs a warning
saying so and returns None: the workspace is then unlimited.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from toka_agents.config.limits import format_bytes
from toka_agents.sandbox.owners import current_owner, is_orphaned
from toka_agents.sandbox.sanitize import KEPT_MODE_BITS, Sanitized, copy_clean
from toka_agents.sandbox.spec import SANDBOX_USER

DISK_SUFFIX = ".workspace-disk"
"""The disk file of workspace `W` is `W.<pid>-<start>` + this suffix: its owner process, whose
host is this one (a loop mount is of this host)."""
VOLUME_LABEL = "toka-workspace"
"""The ext4 label of every workspace disk, for people reading `lsblk -f`."""
_MAX_INODES_RATIO = 64 * 1024
"""One inode per this many bytes: fewer inode tables than mkfs's default, less overhead."""

logger = logging.getLogger(__name__)


class DiskUnavailable(Exception):
    """A workspace disk cannot be made here; the message says why."""


@dataclass
class WorkspaceDisk:
    """A mounted workspace disk: `path` is the workspace, `size` its limit in bytes, `file` the
    sparse file that holds it."""

    path: Path
    size: int
    file: Path

    @classmethod
    def attach(cls, path: Path, size: int, user: str = SANDBOX_USER) -> WorkspaceDisk | None:
        """Mount a file system of `size` bytes, its root owned by `user` (`uid:gid`), on the
        workspace `path`, keeping what the directory already holds; None (with a warning logged)
        where that cannot be done."""
        try:
            return cls._attach(path, size, user)
        except DiskUnavailable as exc:
            logger.warning(
                "the workspace %s has no size limit (%s wanted): %s", path, format_bytes(size), exc
            )
            return None

    @classmethod
    def _attach(cls, path: Path, size: int, user: str) -> WorkspaceDisk:
        if os.geteuid() != 0:
            raise DiskUnavailable("mounting a disk of its own needs root")
        mkfs = shutil.which("mkfs.ext4") or shutil.which("mkfs.ext4", path="/usr/sbin:/sbin")
        if mkfs is None:
            raise DiskUnavailable("mkfs.ext4 is missing (apt-get install e2fsprogs)")
        if not path.is_dir():
            raise DiskUnavailable("it is not a directory of this machine (a remote engine's volume?)")
        if os.path.ismount(path):
            raise DiskUnavailable("something is mounted there already")
        disk = cls(path, size, disk_file(path))
        try:
            with open(disk.file, "xb") as handle:
                handle.truncate(_image_size(size))  # sparse: blocks are used as they are written
            uid, gid = user.split(":")
            _run(
                mkfs,
                "-q", "-F", "-m", "0", "-N", str(max(size // _MAX_INODES_RATIO, 1024)),
                "-L", VOLUME_LABEL, "-O", "^has_journal",
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

    def release(self) -> Sanitized:
        """Put what the workspace holds in a plain directory at its path (keeping only what may
        reach the host, see `sanitize`), unmount the disk and delete its file; return what was
        left out. Never raises: what cannot be done is logged."""
        kept = Sanitized()
        try:
            if os.path.ismount(self.path):
                out = self.path.with_name(self.path.name + ".out")
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir(mode=0o700)
                kept = copy_clean(self.path, out)
                top = os.stat(self.path)  # the disk's root: the sandbox's user may chmod it
                os.chown(out, top.st_uid, top.st_gid)
                os.chmod(out, top.st_mode & KEPT_MODE_BITS)
                _unmount(self.path)
                self.path.rmdir()
                out.rename(self.path)
        except (OSError, DiskUnavailable) as exc:
            logger.warning("could not release the workspace disk of %s: %s", self.path, exc)
            return kept
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
        return kept


def disk_file(workspace: Path, owner: str | None = None) -> Path:
    """The disk file of `workspace` mounted by `owner` (by default this process)."""
    _, pid, start = (owner or current_owner()).rsplit(":", 2)
    return workspace.with_name(f"{workspace.name}.{pid}-{start}{DISK_SUFFIX}")


@dataclass(frozen=True)
class MountedDisk:
    """A workspace disk mounted on this host: where, its file, and the process that mounted it."""

    mount_point: Path
    file: Path
    owner: str
    file_deleted: bool


_DISK_NAME = re.compile(r"\.(?P<pid>[0-9]+)-(?P<start>[0-9]*)" + re.escape(DISK_SUFFIX) + "$")


def mounted_disks() -> list[MountedDisk]:
    """Every workspace disk mounted on this host now, found from the mount table and the loop
    devices behind it, whatever `TOKA_HOME` it lives under and even when its file was deleted."""
    found = []
    for source, mount_point in _mount_table():
        if not source.startswith("/dev/loop"):
            continue
        try:
            backing = Path(f"/sys/block/{Path(source).name}/loop/backing_file").read_text().strip()
        except OSError:
            continue
        deleted = backing.endswith(" (deleted)")
        file = Path(backing.removesuffix(" (deleted)"))
        named = _DISK_NAME.search(file.name)
        if named is None:
            continue  # not a workspace disk of ours
        owner = f"{socket.gethostname()}:{named['pid']}:{named['start']}"
        found.append(MountedDisk(Path(mount_point), file, owner, deleted))
    return found


def _mount_table() -> list[tuple[str, str]]:
    """(source, mount point) of every mount this process sees."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    mounts = []
    for line in lines:
        fields = line.split()
        separator = fields.index("-") if "-" in fields else -1
        if separator < 0 or len(fields) < separator + 3:
            continue
        mounts.append((_unescape(fields[separator + 2]), _unescape(fields[4])))
    return mounts


def _unescape(text: str) -> str:
    """The kernel writes space, tab, newline and backslash in mount table paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def release_orphaned() -> list[Path]:
    """Release the workspace disks whose owner process is gone (killed before it could);
    return their mount points. A disk whose file was deleted (its run folder removed) has
    nothing to keep: it is unmounted, which frees its space. Never raises."""
    released = []
    for disk in mounted_disks():
        if not is_orphaned(disk.owner):
            continue
        if disk.file_deleted:
            try:
                _unmount(disk.mount_point)
            except DiskUnavailable as exc:
                logger.warning("could not release the workspace disk at %s: %s", disk.mount_point, exc)
                continue
        else:
            kept = WorkspaceDisk(disk.mount_point, 0, disk.file).release()
            if kept:
                logger.warning("%s", kept.warning(disk.mount_point))
        released.append(disk.mount_point)
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
    """Copy files already in a workspace onto its disk; `DiskUnavailable` when they do not fit."""
    try:
        copy_clean(source, target)
    except OSError as exc:
        raise DiskUnavailable(f"its files do not fit: {exc.strerror or exc}") from exc


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
