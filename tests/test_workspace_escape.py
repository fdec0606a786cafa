"""Nothing of a sandbox's making gains privilege on the host (issue 20, point 1), on the real
engine: the probe a hostile agent author ran (a setuid shell, a link to /etc/shadow, a FIFO, a
socket in the workspace) leaves no setuid file, special file or outward link on the host, by
either way a workspace comes back (its disk copied back, or a plain directory cleaned where it
lies); the run folder is its user's alone; every run's code is a user of its own; and `toka
workspace get`'s extraction leaves out the same things."""

from __future__ import annotations

import io
import os
import secrets
import shutil
import stat
import subprocess
import tarfile
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import write_config
from own_runs import TEST_LABEL, THIS_SESSION
from prefect import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from support import sandbox_spec

from toka_agents import run
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import Sandbox
from toka_agents.sandbox.sanitize import Sanitized
from toka_agents.sandbox.users import LABEL_USER, RUN_UIDS, preferred_uid, run_user, user_of
from toka_agents.sandbox.workspace import _extract

MB = 1024**2
runs_containers = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

PROBE = r"""
set -e
cp /bin/sh suid_sh && chmod 6755 suid_sh
ln suid_sh hard_link
ln -s /etc/shadow l_shadow
mkfifo fifo
python3 -c "import socket; socket.socket(socket.AF_UNIX).bind('sock')"
ln -s suid_sh inner
mkdir -p d && ln -s ../inner d/up && ln -s d/up/../../.. climbs_out
mkdir setgid_dir && chmod 2777 setgid_dir
truncate -s 100G sparse
chmod 2777 /workspace
id -u
"""
LEFT_OUT = {"l_shadow", "fifo", "sock", "climbs_out"}


def entries(root: Path) -> dict[str, os.stat_result]:
    found = {}
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            path = Path(directory, name)
            found[str(path.relative_to(root))] = os.lstat(path)
    return found


def assert_nothing_acts_on_the_host(workspace: Path) -> None:
    found = entries(workspace)
    assert LEFT_OUT.isdisjoint(found), sorted(found)
    for name, info in [(".", os.lstat(workspace)), *found.items()]:
        if stat.S_ISLNK(info.st_mode):
            continue  # a link's own mode is always 777, and means nothing
        assert not info.st_mode & (stat.S_ISUID | stat.S_ISGID | stat.S_IWOTH), (name, oct(info.st_mode))
        assert stat.S_ISREG(info.st_mode) or stat.S_ISDIR(info.st_mode), name
    # What leads inside the workspace stays, links and hard links as they were.
    assert os.readlink(workspace / "inner") == "suid_sh"
    assert os.readlink(workspace / "d" / "up") == "../inner"
    assert found["hard_link"].st_ino == found["suid_sh"].st_ino
    # A sparse file stays sparse: its 100GB are not written onto the host's disk.
    assert found["sparse"].st_size == 100 * 1024**3 and found["sparse"].st_blocks * 512 < MB


def flow_run_logs(flow_run_id) -> list[str]:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A runs root that every user may pass through, unlike pytest's own (mode 700): only the
    run folder's own mode keeps others out of it."""
    root = Path(tempfile.mkdtemp(prefix="toka-escape-"))
    root.chmod(0o755)
    yield root / "runs"
    shutil.rmtree(root, ignore_errors=True)


@runs_containers
def test_the_probe_leaves_nothing_on_the_host_that_could_gain_privilege(tmp_path, open_root):
    path = write_config(
        tmp_path,
        f"""\
name: escape-{uuid.uuid4().hex[:8]}
agents:
  - name: hostile
    capabilities: [filesystem-write]
    tasks:
      - name: probe
        code:
          language: shell
          source: |
{textwrap.indent(PROBE.strip(), " " * 12)}
""",
    )
    result = run(path, workspace_root=open_root)
    assert result.ok, result.state.message
    workspace = result.workspace
    assert workspace is not None and not os.path.ismount(workspace)  # the disk was copied back
    assert_nothing_acts_on_the_host(workspace)

    # The code ran as the run's own user, which owns what it wrote.
    user = run_user(str(result.flow_run_id))
    uid = int(user.split(":")[0])
    assert uid in RUN_UIDS and result.outcomes[0].stdout_tail.strip() == str(uid)
    assert os.lstat(workspace / "suid_sh").st_uid == uid

    # The run folder is root's alone: another user of the machine cannot even look inside.
    assert stat.S_IMODE(os.stat(workspace.parent).st_mode) == 0o700
    looked = subprocess.run(
        ["runuser", "-u", "nobody", "--", "ls", str(workspace)], capture_output=True, text=True
    )
    assert looked.returncode != 0 and "Permission denied" in looked.stderr

    # One warning in the run's log names what was left out and what was changed.
    [warning] = [line for line in flow_run_logs(result.flow_run_id) if "could act on the host" in line]
    for name in (*LEFT_OUT, "setgid_dir"):
        assert repr(name) in warning, warning
    assert "'suid_sh'" in warning or "'hard_link'" in warning  # one name of the setuid inode
    assert "'/etc/shadow', outside the workspace" in warning


@pytest.mark.usefixtures("no_leftover_run_containers")
def test_a_plain_directory_workspace_is_cleaned_where_it_lies(docker_client, sandbox_image, tmp_path):
    """Without a workspace disk (no root, or no size limit) the sandbox writes the host's
    directory itself; the sandbox's end cleans it."""
    workspace = tmp_path / "plain"
    workspace.mkdir()
    os.chown(workspace, 10001, 10001)
    spec = sandbox_spec(
        PROBE, language="shell", memory=128 * MB, cpus=1, timeout=30, workspace=workspace
    )
    with Sandbox(docker_client, {TEST_LABEL: THIS_SESSION}) as sandbox:
        result = sandbox.run(spec)
        assert result.ok, result.failure
        assert os.lstat(workspace / "suid_sh").st_mode & stat.S_ISUID  # as written, until the end
        warnings = sandbox.remove_leftovers()
    assert_nothing_acts_on_the_host(workspace)
    [warning] = warnings
    assert all(repr(name) in warning for name in LEFT_OUT), warning


@pytest.mark.usefixtures("sandbox_image")
def test_every_run_is_a_user_of_its_own_and_a_taken_uid_is_passed_over(docker_client):
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    assert run_user(first) == run_user(first)  # a resumed run is the same user again
    assert {preferred_uid(first), preferred_uid(second)} <= set(RUN_UIDS)
    # A live container of another run holds the first run's uid: the first run takes the next.
    taken = user_of(preferred_uid(first))
    holder = docker_client.api.create_container(
        "toka-sandbox:1",
        command=["true"],
        labels={LABEL_USER: taken, RUN_LABEL: second, TEST_LABEL: THIS_SESSION},
        name=f"toka-test-uid-{secrets.token_hex(4)}",
    )
    try:
        chosen = run_user(first, docker_client, label=RUN_LABEL)
        assert chosen != taken and int(chosen.split(":")[0]) in RUN_UIDS
        assert run_user(second, docker_client, label=RUN_LABEL) == user_of(preferred_uid(second))
    finally:
        docker_client.api.remove_container(holder["Id"], force=True)


def test_workspace_get_leaves_out_what_could_act_on_the_host(tmp_path):
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        setuid = tarfile.TarInfo("./suid_sh")
        setuid.mode, setuid.size = 0o6755, 4
        tar.addfile(setuid, io.BytesIO(b"#!/x"))
        for name, kind, target in (
            ("./l_shadow", tarfile.SYMTYPE, "/etc/shadow"),
            ("./up", tarfile.SYMTYPE, "../../outside"),
            ("./inner", tarfile.SYMTYPE, "suid_sh"),
            ("./fifo", tarfile.FIFOTYPE, ""),
        ):
            member = tarfile.TarInfo(name)
            member.type, member.linkname = kind, target
            tar.addfile(member)
    archive.seek(0)
    found = Sanitized()
    with tarfile.open(fileobj=archive, mode="r|") as tar:
        copied = list(_extract(tar, tmp_path, found))
    assert copied == ["suid_sh", "inner"]
    assert not (tmp_path / "suid_sh").stat().st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert [name for name, _ in found.dropped] == ["l_shadow", "up", "fifo"]
    assert found.cleared == ["suid_sh"]
    assert "'l_shadow' (a link to '/etc/shadow', outside the workspace)" in found.warning("W")
