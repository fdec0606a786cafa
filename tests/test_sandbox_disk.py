"""The workspace's size limit (issue 13, point 4), on the real engine and real loop disks: a
write past it fails in the container with ENOSPC and the task says `workspace full (SIZE)`,
the host's disk holds at most the limit for the run, the files stay when the run ends, and
the disk of a SIGKILLed process is released by the sweep."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from conftest import run_toka
from support import sandbox_spec

from toka_agents.sandbox import Sandbox, create_workspace, remove_orphans
from toka_agents.sandbox.disk import DISK_SUFFIX, WorkspaceDisk, disk_file, mounted_disks

MB = 1024**2
pytestmark = pytest.mark.usefixtures("no_leftover_containers")

FILL = """
import os
written = 0
try:
    with open("/workspace/big", "wb") as out:
        while True:
            out.write(b"x" * 1024 * 1024)
            out.flush()
            written += 1
except OSError as exc:
    print("wrote", written, "MB before", exc.strerror)
    raise
"""


@pytest.fixture
def workspace(tmp_path) -> Path:
    return create_workspace(tmp_path, "disk")


@pytest.fixture
def spec(sandbox_image, workspace):
    return functools.partial(
        sandbox_spec, memory=128 * MB, cpus=1, timeout=30, workspace=workspace, workspace_limit=16 * MB
    )


def test_a_write_past_the_limit_fails_with_enospc_and_the_task_says_workspace_full(
    docker_client, spec, workspace
):
    with Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)}) as sandbox:
        result = sandbox.run(spec(FILL))
        print(result.failure, "|", result.stdout)
        assert result.failure == (
            "workspace full (16MB): exit code 1: OSError: [Errno 28] No space left on device"
        )
        assert result.workspace_full and result.workspace_limit == 16 * MB
        assert "No space left on device" in result.stdout
        written = int(result.stdout.split()[1])
        assert 15 <= written <= 17  # the limit, give or take ext4's own blocks
        # The host's disk holds the run's blocks, no more: the disk file is sparse.
        assert os.path.ismount(workspace)
        assert disk_file(workspace).stat().st_blocks * 512 <= 18 * MB
        neighbour = sandbox.run(spec("open('/workspace/small', 'w').write('x' * 2**21)"))
        assert neighbour.failure.startswith("workspace full (16MB): exit code 1")
    # The run is over: its files are in a plain directory, the disk is gone.
    assert not os.path.ismount(workspace)
    assert (workspace / "big").stat().st_size >= 15 * MB
    assert not disk_file(workspace).exists()
    assert all(disk.file != disk_file(workspace) for disk in mounted_disks())


def test_files_already_in_the_workspace_are_kept(docker_client, spec, workspace):
    (workspace / "before.txt").write_text("from an earlier run\n")
    with Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)}) as sandbox:
        result = sandbox.run(
            spec("cat before.txt; echo added > after.txt; df -k . | tail -1", language="shell")
        )
        print(result.stdout)
        assert result.ok, result.failure
        assert result.stdout.startswith("from an earlier run\n")
        assert int(result.stdout.split("\n")[1].split()[1]) < 20 * 1024  # df: its own small disk
    assert (workspace / "before.txt").read_text() == "from an earlier run\n"
    assert (workspace / "after.txt").read_text() == "added\n"


KILLED_OWNER = """
import os, secrets, signal, sys
from pathlib import Path
from toka_agents.sandbox import Sandbox, SandboxSpec, connect
workspace = Path(sys.argv[1])
sandbox = Sandbox(connect(), {"org.toka-agents.test": secrets.token_hex(4)})
result = sandbox.run(SandboxSpec(
    image=sys.argv[2], language="shell", source="echo kept > kept.txt", memory=64 * 2**20,
    cpus=0.5, pids=32, timeout=30, workspace=workspace, workspace_writable=True,
    workspace_limit=16 * 2**20,
))
assert result.ok, result.failure
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_disk_of_a_sigkilled_process_is_released_by_the_sweep(
    docker_client, sandbox_image, workspace
):
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_OWNER, str(workspace), sandbox_image],
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    assert os.path.ismount(workspace)  # left behind
    remove_orphans(docker_client)
    assert not os.path.ismount(workspace)
    assert (workspace / "kept.txt").read_text() == "kept\n"
    assert not list(workspace.parent.glob(f"*{DISK_SUFFIX}"))


@pytest.mark.alone  # its orphans must wait for its own sweep
def test_a_killed_runners_disk_is_released_from_another_toka_home_after_its_folder_went(
    sandbox_image, tmp_path
):
    """The disk of a runner SIGKILLed under one TOKA_HOME, whose run folder was deleted since,
    is found from the mount table by `toka sandbox clean` under another TOKA_HOME, and
    unmounted: its space is freed."""
    workspace = create_workspace(tmp_path / "home-a" / "runs", "killed")
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_OWNER, str(workspace), sandbox_image],
        capture_output=True,
        text=True,
        env={**os.environ, "TOKA_HOME": str(tmp_path / "home-a")},
    )
    assert killed.returncode == -9, killed.stderr
    assert os.path.ismount(workspace)
    shutil.rmtree(workspace.parent, ignore_errors=True)  # all but the busy mount point
    [left] = [disk for disk in mounted_disks() if disk.mount_point == workspace]
    assert left.file_deleted and not left.file.exists()

    cleaned = run_toka("sandbox", "clean", env={"TOKA_HOME": str(tmp_path / "home-b")})
    assert cleaned.returncode == 0, cleaned.stderr
    assert all(disk.mount_point != workspace for disk in mounted_disks())
    assert f" {workspace} " not in Path("/proc/self/mountinfo").read_text()
    assert not any(left.file.name in line for line in _loop_devices())


def _loop_devices() -> list[str]:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()


def test_without_root_the_workspace_is_unlimited_and_a_warning_says_so():
    # Outside pytest's tmp_path, which only root may enter; the user's Prefect home too.
    home = Path(tempfile.mkdtemp(prefix="toka-nonroot-"))
    workspace = home / "workspace"
    workspace.mkdir()
    for path in (home, workspace):
        path.chmod(0o777)
    probe = textwrap.dedent(
        f"""
        import logging, sys
        from pathlib import Path
        from toka_agents.sandbox.disk import WorkspaceDisk
        logging.basicConfig(format="%(levelname)s %(message)s")  # unless Prefect set it up
        print(WorkspaceDisk.attach(Path({str(workspace)!r}), 16 * 2**20))
        """
    )
    done = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "HOME": str(home), "PREFECT_HOME": str(home)},
    )
    shutil.rmtree(home, ignore_errors=True)
    print(done.stdout, done.stderr)
    assert done.stdout == "None\n"
    assert "WARNING" in done.stderr
    assert (
        f"the workspace {workspace} has no size limit (16MB wanted): mounting a disk of its own "
        "needs root"
    ) in done.stderr
    assert not os.path.ismount(workspace)


def test_attach_and_release_keep_a_directory_at_the_path(tmp_path):
    workspace = tmp_path / "plain" / "workspace"
    workspace.mkdir(parents=True)
    disk = WorkspaceDisk.attach(workspace, 8 * MB)
    assert disk is not None and os.path.ismount(workspace)
    assert list(workspace.iterdir()) == []  # the agents see an empty workspace, no lost+found
    stats = os.statvfs(workspace)
    assert 7.5 * MB <= stats.f_bavail * stats.f_frsize <= 9 * MB  # about the limit, for files
    (workspace / "note").write_text("hi")
    disk.release()
    assert not os.path.ismount(workspace) and (workspace / "note").read_text() == "hi"
    assert [entry.name for entry in workspace.iterdir()] == ["note"]


def test_a_workspace_already_past_the_limit_stays_as_it_was_without_a_disk(tmp_path, caplog):
    workspace = tmp_path / "big" / "workspace"
    workspace.mkdir(parents=True)
    (workspace / "large").write_bytes(b"x" * 12 * MB)
    assert WorkspaceDisk.attach(workspace, 8 * MB) is None
    assert "has no size limit (8MB wanted)" in caplog.text
    assert not os.path.ismount(workspace) and (workspace / "large").stat().st_size == 12 * MB
    assert sorted(p.name for p in workspace.parent.iterdir()) == ["workspace"]
