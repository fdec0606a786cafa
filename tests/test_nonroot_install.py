"""Installing where Docker already runs: an ordinary user in the `docker` group, with a venv of
their own, pip-installs toka-agents from the repository and runs an orchestration on the engine
the suite uses, against the session's Prefect server. Nothing of it runs as root.

The test has no package index, so the user's venv sees the suite's installed dependencies
through a `.pth` file (a directory of links to them, without toka-agents itself), and pip
installs toka-agents from a copy of the repository with `--no-index --no-deps`. The venv's
interpreter is Debian's `/usr/bin/python3`: the suite's own lives under /root, out of reach.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, write_config
from test_flows import unique

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

SYSTEM_PYTHON = "/usr/bin/python3"
SOURCE_IGNORED = shutil.ignore_patterns(
    ".venv", ".git", "__pycache__", "*.egg-info", "build", ".pytest_cache", ".hypothesis", "test-output"
)


@dataclass(frozen=True)
class User:
    name: str
    home: Path

    def run(
        self, *command: str, env: dict[str, str] | None = None, timeout: float = 240
    ) -> subprocess.CompletedProcess[str]:
        """`command` as this user, with a login-like environment of their own."""
        environment = {
            "HOME": str(self.home),
            "PATH": f"{self.home / 'venv' / 'bin'}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        return subprocess.run(
            [
                "runuser",
                "-u",
                self.name,
                "--",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in environment.items()),
                *command,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
        )


@pytest.fixture
def docker_user() -> Iterator[User]:
    """A throwaway user in the `docker` group, with a home of its own; removed afterwards."""
    assert os.geteuid() == 0, "this test creates a user: run the suite as root (CI does)"
    name = f"toka-{uuid.uuid4().hex[:8]}"
    home = Path(tempfile.mkdtemp(prefix="toka-nonroot-"))
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", str(home), "--groups", "docker", name],
        check=True,
        capture_output=True,
    )
    try:
        shutil.chown(home, name, name)
        yield User(name, home)
    finally:
        subprocess.run(["userdel", name], capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def shared_dependencies(user: User) -> Path:
    """Links to the suite's installed packages, toka-agents left out, owned by the user."""
    deps = user.home / "deps"
    deps.mkdir()
    site = (
        Path(sys.prefix)
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    for entry in site.iterdir():
        if (
            entry.name.startswith(("toka_agents", "__editable__", "_toka_agents"))
            or entry.suffix == ".pth"
        ):
            continue
        (deps / entry.name).symlink_to(entry)
    subprocess.run(["chown", "-R", "-h", f"{user.name}:{user.name}", str(deps)], check=True)
    return deps


HELLO = """
name: {name}
agents:
  - name: writer
    capabilities: [filesystem-write]
    tasks:
      - {{name: write, code: {{language: python, source: "open('hello.txt', 'w').write('hi')"}}}}
  - name: reader
    requires: [writer]
    tasks:
      - {{name: read, code: {{language: shell, source: "cat hello.txt"}}}}
"""


def test_a_docker_group_user_pip_installs_and_orchestrates_in_their_own_venv(docker_user, prefect_api):
    user = docker_user
    deps = shared_dependencies(user)
    source = user.home / "src"
    shutil.copytree(REPO, source, ignore=SOURCE_IGNORED, symlinks=True)
    subprocess.run(["chown", "-R", f"{user.name}:{user.name}", str(source)], check=True)

    made = user.run(SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(user.home / "venv"))
    assert made.returncode == 0, made.stderr
    site = user.run(
        str(user.home / "venv" / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"
    )
    (Path(site.stdout.strip()) / "shared-deps.pth").write_text(f"{deps}\n")
    installed = user.run(
        "python", "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps", str(source)
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (user.home / "venv" / "bin" / "toka").is_file()

    # Reached as the user, and the installed package carries the image definitions it checks.
    checked = user.run("toka", "sandbox", "check")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.strip().endswith("image toka-sandbox:1 is current"), checked.stdout

    config = write_config(user.home, HELLO.format(name=unique("nonroot")))
    shutil.chown(config, user.name, user.name)
    env = {
        "PREFECT_API_URL": prefect_api,
        "PREFECT_HOME": str(user.home / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    ran = user.run("toka", "orchestrate", str(config), "--watch", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "reader/read: Completed" in ran.stdout.splitlines(), ran.stdout
    assert "Run: Completed: 2 agents, 2 of 2 tasks done" in ran.stdout, ran.stdout
    [workspace] = (user.home / ".toka" / "runs").glob("*/workspace")
    assert (workspace / "hello.txt").read_text() == "hi"
    removed = user.run("rm", "-rf", str(user.home / ".toka" / "runs"))
    assert removed.returncode == 0, f"the user cannot remove what their run wrote: {removed.stderr}"
