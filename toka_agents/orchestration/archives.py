"""A run's workspace kept in Prefect's result storage, and fetched back from there.

When a run ends, its whole workspace is packed (`sandbox.seeding.archive_workspace`) and
written to the default result storage as `toka-workspaces/<flow run id>.tar.gz`: the storage
block the server or `PREFECT_DEFAULT_RESULT_STORAGE_BLOCK` names, or by default
`PREFECT_LOCAL_STORAGE_PATH`. `toka workspace get FLOW_RUN_ID DEST` reads it back on any machine
that shares the server and that storage, not only on the worker that ran the run.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

from prefect.filesystems import LocalFileSystem
from prefect.results import get_default_result_storage

from toka_agents.sandbox.sanitize import Sanitized
from toka_agents.sandbox.seeding import archive_workspace
from toka_agents.sandbox.workspace import extract_clean

ARCHIVE_FOLDER = "toka-workspaces"


def archive_key(flow_run_id: str) -> str:
    return f"{ARCHIVE_FOLDER}/{flow_run_id}.tar.gz"


def keep_workspace(workspace: Path, flow_run_id: str) -> tuple[str, int, list[str]]:
    """Pack `workspace` and write it to the result storage; return where it went (the storage's
    own name for it), the archive's size in bytes and what was left out of it (sparse files).
    A local storage gets the archive as it is packed; a block's `write_path` takes the
    archive's bytes whole."""
    storage = get_default_result_storage()
    key = archive_key(flow_run_id)
    if isinstance(storage, LocalFileSystem) and storage.basepath:
        target = Path(storage.basepath).expanduser() / key
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with open(partial, "wb") as archive:
            left_out = archive_workspace(workspace, archive)
            size = archive.tell()
        partial.replace(target)  # a reader never sees half an archive
        return str(target), size, left_out
    with tempfile.TemporaryFile() as archive:
        left_out = archive_workspace(workspace, archive)
        size = archive.tell()
        archive.seek(0)
        written = storage.write_path(key, archive.read())
    return str(written), size, left_out


def fetch_workspace(flow_run_id: str, destination: Path) -> tuple[list[str], Sanitized] | None:
    """Unpack flow run `flow_run_id`'s archived workspace into `destination` (made if missing);
    return the paths unpacked and what was left out, or None when the storage holds no archive
    of that run."""
    storage = get_default_result_storage()
    key = archive_key(flow_run_id)
    found = Sanitized()
    if isinstance(storage, LocalFileSystem) and storage.basepath:
        source = Path(storage.basepath).expanduser() / key
        if not source.is_file():
            return None
        destination.mkdir(parents=True, exist_ok=True)
        with tarfile.open(source, mode="r:gz") as archive:
            return extract_clean(archive, destination, found), found
    try:
        data = storage.read_path(key)
    except (ValueError, FileNotFoundError):
        return None
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        return extract_clean(archive, destination, found), found
