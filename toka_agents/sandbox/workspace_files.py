"""The files of a finished workspace that a run hands back, found and read from the host.

What an agent leaves in its workspace is its own: links anywhere, names of any length, loops.
So the files `outputs:` name are found by walking the workspace without following links
(`os.walk`), matched against the outputs' globs as text, and opened component by component
from the workspace's own directory with `O_NOFOLLOW` at every step: a path that passes through
a link is refused by the kernel itself, whatever the path's text says. At most `MAX_FILES`
files are handed back; the rest are named in a warning.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from toka_agents.config.workspace import Output

MAX_FILES = 100
"""Files handed back as artifacts, over all outputs."""


@dataclass(frozen=True)
class OutputFile:
    """One file an output matched: its path relative to the workspace, and its size."""

    output: Output
    relative: str
    size: int

    @property
    def title(self) -> str:
        return self.output.title or self.relative


def output_files(workspace: Path, outputs: tuple[Output, ...]) -> tuple[list[OutputFile], list[str]]:
    """The regular files of `workspace` that `outputs` match (each once, in the outputs' order,
    none reached through a link), and a warning per output that matched none and for files
    past `MAX_FILES`."""
    found: list[OutputFile] = []
    warnings: list[str] = []
    seen: set[str] = set()
    listing: list[str] | None = None
    over = 0
    for output in outputs:
        if any(char in output.path for char in "*?["):
            listing = _every_file(workspace) if listing is None else listing
            pattern = _glob_pattern(output.path)
            candidates = [path for path in listing if pattern.fullmatch(path)]
        else:
            candidates = [os.path.normpath(output.path)]
        matched = False
        for relative in candidates:
            size = regular_file_size(workspace, relative)
            if size is None:
                continue
            matched = True
            if relative in seen:
                continue
            if len(found) >= MAX_FILES:
                over += 1
                continue
            seen.add(relative)
            found.append(OutputFile(output, relative, size))
        if not matched:
            warnings.append(f"output {output.path!r}: no such file in the workspace")
    if over:
        warnings.append(f"{over} more output file(s) not handed back: at most {MAX_FILES} are")
    return found, warnings


def outputs_present(workspace: Path, outputs: tuple[Output, ...]) -> list[str]:
    """The paths of the files `outputs` match in `workspace` (none when it is not a directory
    of this machine: a volume on a remote engine)."""
    if not workspace.is_dir():
        return []
    return [file.relative for file in output_files(workspace, outputs)[0]]


def open_inside(workspace: Path, relative: str) -> int:
    """A read-only file descriptor of the regular file `relative` of `workspace`, reached
    without following any link; `OSError` when it is not one (a link on the way, `..`, a FIFO)."""
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise OSError(f"{relative!r} is not a file of the workspace")
    directory = os.open(workspace, os.O_PATH | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=directory)
            os.close(directory)
            directory = inner
        if not stat.S_ISREG(os.stat(parts[-1], dir_fd=directory, follow_symlinks=False).st_mode):
            raise OSError(f"{relative!r} is not a regular file")
        return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=directory)
    finally:
        os.close(directory)


def regular_file_size(workspace: Path, relative: str) -> int | None:
    """The size of the regular file `relative` of `workspace` (see `open_inside`), or None."""
    try:
        descriptor = open_inside(workspace, relative)
    except OSError:
        return None
    try:
        return os.fstat(descriptor).st_size
    finally:
        os.close(descriptor)


def _every_file(workspace: Path) -> list[str]:
    """The relative paths of the workspace's regular files, links not followed, sorted."""
    files = []
    for directory, _, names in os.walk(workspace):
        base = os.path.relpath(directory, workspace)
        files += [name if base == "." else f"{base}/{name}" for name in names]
    return sorted(files)


def _glob_pattern(glob: str) -> re.Pattern[str]:
    """A shell glob as a regular expression over relative paths: `*` and `?` within a name,
    `**/` any number of directories, `[...]` a class."""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        elif glob[i] == "[" and (end := glob.find("]", i + 2)) != -1:
            inner = glob[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + inner[1:] if inner[0] in "!^" else inner) + "]")
            i = end + 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out))
