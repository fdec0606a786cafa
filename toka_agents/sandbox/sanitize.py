"""What of a sandbox's files may reach the host: regular files, directories and inward links.

The code in a sandbox writes the workspace as a user of its own, and anything it makes there
ends up on the host: copied back from the run's workspace disk, or left in place in a plain
directory. Kept as made, some of it would act on the host: a setuid program would hand its
owner's uid to whoever runs it, a link to `/etc/shadow` would lead a later reader (root) out of
the workspace, and FIFOs, sockets and device nodes are doors rather than files. So on its way
to the host (`copy_clean`) or where it lies (`clean_in_place`) the workspace keeps

- regular files and directories, without setuid, setgid and sticky bits, and without write
  permission for group and others (as `tarfile`'s "data" filter treats them);
- symbolic links that resolve inside the workspace; the others are dropped;

and drops FIFOs, sockets and device nodes. Copies keep holes (a sparse file stays sparse, so a
"10TB" file of a 1GB disk does not fill the host's disk), hard links (one copy per inode), owners
(as root) and modification times. What was dropped or changed is returned, for one warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

_PATH_MAX = 4000
"""Bytes of a path this side keeps clear of the kernel's 4096."""
KEPT_MODE_BITS = 0o755
"""Permission bits a file or directory keeps: no setuid/setgid/sticky, no group/other write."""
SHOWN_NAMES = 10
"""Names a warning lists of each kind; the rest are counted."""


@dataclass
class Sanitized:
    """What a copy or a clean left out of a workspace, and what it changed."""

    dropped: list[tuple[str, str]] = field(default_factory=list)
    """(path relative to the workspace, why), for each entry left out."""
    cleared: list[str] = field(default_factory=list)
    """Paths whose setuid or setgid bits were cleared."""

    def __bool__(self) -> bool:
        return bool(self.dropped or self.cleared)

    def warning(self, workspace: Path | str) -> str:
        """One line naming what was left out or changed, by path (`repr`, so a name with control
        characters stays one visible line)."""
        parts = []
        if self.dropped:
            shown = ", ".join(f"{path!r} ({why})" for path, why in self.dropped[:SHOWN_NAMES])
            more = len(self.dropped) - SHOWN_NAMES
            parts.append(f"left out {shown}" + (f" and {more} more" if more > 0 else ""))
        if self.cleared:
            shown = ", ".join(repr(path) for path in self.cleared[:SHOWN_NAMES])
            more = len(self.cleared) - SHOWN_NAMES
            more_text = f" and {more} more" if more > 0 else ""
            parts.append(f"cleared setuid/setgid bits of {shown}{more_text}")
        return f"workspace {workspace}: what could act on the host was not kept: " + "; ".join(parts)


def _kind(mode: int) -> str | None:
    """Why an entry of this mode is left out, or None when it is kept."""
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
        return None
    return "not a file"


def copy_clean(source: Path, target: Path) -> Sanitized:
    """Copy the tree under `source` into the existing directory `target`, keeping only what may
    reach the host (see the module). Raises `OSError` when a copy fails (a full disk)."""
    found = Sanitized()
    as_root = os.geteuid() == 0
    copied_inodes: dict[tuple[int, int], Path] = {}
    links: list[tuple[Path, str]] = []
    owners: dict[Path, tuple[int, int]] = {}  # of the links
    directories: list[tuple[Path, os.stat_result]] = []
    for directory, subdirectories, files in os.walk(source):
        relative = Path(directory).relative_to(source)
        for name in [*subdirectories, *files]:
            origin = Path(directory, name)
            copy = target / relative / name
            shown = str(relative / name)
            try:
                if len(os.fsencode(copy)) >= _PATH_MAX:
                    raise OSError(errno.ENAMETOOLONG, "too long", str(copy))
                info = os.lstat(origin)
            except OSError as exc:
                if exc.errno != errno.ENAMETOOLONG:
                    raise
                # Deeper than a path can name: left out, with all below it (os.walk cannot
                # list it either), so no link down there can lead a reader out.
                found.dropped.append((shown[:200], "a path too long to name"))
                if name in subdirectories:
                    subdirectories.remove(name)
                continue
            why = _kind(info.st_mode)
            if why is not None:
                found.dropped.append((shown, why))
            elif stat.S_ISLNK(info.st_mode):
                links.append((copy, os.readlink(origin)))
                owners[copy] = (info.st_uid, info.st_gid)
            elif stat.S_ISDIR(info.st_mode):
                os.mkdir(copy, 0o700)
                directories.append((copy, info))
                if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    found.cleared.append(shown)
            else:
                inode = (info.st_dev, info.st_ino)
                if info.st_nlink > 1 and inode in copied_inodes:
                    os.link(copied_inodes[inode], copy)
                    continue
                _copy_file(origin, copy, info, as_root)
                copied_inodes[inode] = copy
                if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                    found.cleared.append(shown)
    for copy, pointing in links:
        os.symlink(pointing, copy)
        if as_root:
            os.lchown(copy, *owners[copy])
    found.dropped += [(str(p.relative_to(target)), why) for p, why in _drop_outward_links(target, links)]
    for copy, info in reversed(directories):  # children first: their times are set already
        _settle(copy, info, as_root)
    return found


def _copy_file(origin: Path, copy: Path, info: os.stat_result, as_root: bool) -> None:
    """Copy a regular file's data segments only, so its holes stay holes."""
    source_fd = os.open(origin, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        target_fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            _copy_data(source_fd, target_fd, info.st_size)
            os.ftruncate(target_fd, info.st_size)
            if as_root:
                os.fchown(target_fd, info.st_uid, info.st_gid)
            os.fchmod(target_fd, info.st_mode & KEPT_MODE_BITS)
        finally:
            os.close(target_fd)
    finally:
        os.close(source_fd)
    os.utime(copy, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def _copy_data(source_fd: int, target_fd: int, size: int) -> None:
    position = 0
    while position < size:
        try:
            start = os.lseek(source_fd, position, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole from here on
                return
            raise
        end = os.lseek(source_fd, start, os.SEEK_HOLE)
        _copy_range(source_fd, target_fd, start, end)
        position = end


_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL}
"""Errors of `copy_file_range` between file systems it cannot copy between (or on kernels
without it): then the bytes go through this process."""
CHUNK = 1024 * 1024


def _copy_range(source_fd: int, target_fd: int, start: int, end: int) -> None:
    offset = start
    while offset < end:
        try:
            sent = os.copy_file_range(source_fd, target_fd, end - offset, offset, offset)
        except OSError as exc:
            if exc.errno not in _NO_COPY_RANGE:
                raise
            data = os.pread(source_fd, min(CHUNK, end - offset), offset)
            sent = os.pwrite(target_fd, data, offset) if data else 0
        if sent == 0:  # the file shrank meanwhile
            return
        offset += sent


def _settle(path: Path, info: os.stat_result, as_root: bool) -> None:
    if as_root:
        os.lchown(path, info.st_uid, info.st_gid)
    os.chmod(path, info.st_mode & KEPT_MODE_BITS)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)


def clean_in_place(root: Path) -> Sanitized:
    """Make the tree under `root` keep only what may reach the host (see the module), where it
    lies: for a workspace that was a plain directory of the host while the sandbox wrote it.
    What cannot be changed (not this process's to change) is left as it is."""
    found = Sanitized()
    links: list[tuple[Path, str]] = []
    with contextlib.suppress(OSError):
        _clean_mode(root, os.lstat(root), ".", found)
    too_deep: list[str] = []
    for directory, subdirectories, files in os.walk(root, onerror=_too_long_into(too_deep)):
        for name in [*subdirectories, *files]:
            path = Path(directory, name)
            shown = str(path.relative_to(root))
            try:
                info = os.lstat(path)
                why = _kind(info.st_mode)
                if why is not None:
                    os.unlink(path)
                    found.dropped.append((shown, why))
                elif stat.S_ISLNK(info.st_mode):
                    links.append((path, os.readlink(path)))
                else:
                    _clean_mode(path, info, shown, found)
            except OSError:
                continue
    found.dropped += [(str(p.relative_to(root)), why) for p, why in _drop_outward_links(root, links)]
    for path in too_deep:  # what no path can name is removed from its parent, by descriptor
        parent = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            shutil.rmtree(os.path.basename(path), dir_fd=parent)
            found.dropped.append((os.path.relpath(path, root)[:200], "a path too long to name"))
        except OSError:
            continue
        finally:
            os.close(parent)
    return found


def _too_long_into(paths: list[str]) -> Callable[[OSError], None]:
    def note(exc: OSError) -> None:
        if exc.errno == errno.ENAMETOOLONG and exc.filename:
            paths.append(os.fsdecode(exc.filename))

    return note


def _clean_mode(path: Path, info: os.stat_result, shown: str, found: Sanitized) -> None:
    if info.st_mode & ~KEPT_MODE_BITS & 0o7777:
        os.chmod(path, info.st_mode & KEPT_MODE_BITS)
        if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
            found.cleared.append(shown)


def _drop_outward_links(root: Path, links: list[tuple[Path, str]]) -> list[tuple[Path, str]]:
    """Remove the links that do not resolve inside `root` (the host's view: an absolute target
    is a path of the host), until every link left resolves inside; return those removed."""
    base = os.path.realpath(root)
    left = list(links)
    removed: list[tuple[Path, str]] = []
    while True:
        outward = [(path, target) for path, target in left if not _inside(os.path.realpath(path), base)]
        if not outward:
            return removed
        for path, target in outward:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            removed.append((path, f"a link to {target!r}, outside the workspace"))
        left = [link for link in left if link not in outward]


def _inside(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")
