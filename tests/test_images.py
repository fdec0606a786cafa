"""The sandbox images (issue 13, point 9): `toka sandbox build` builds the Python and the shell
image, an image with an extra Debian package is built offline over the local shell image, and
an orchestration picks images per agent and records each task's image id."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import run_toka, write_config
from support import sandbox_spec

from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.sandbox import Sandbox
from toka_agents.sandbox.images import IMAGES, SHELL_IMAGE, build_image, image_status

MB = 1024**2
EXTRA_IMAGE = "toka-test-with-tree:1"
pytestmark = pytest.mark.usefixtures("no_leftover_run_containers")


@pytest.fixture(scope="session")
def shell_image(docker_client) -> str:
    build_image(docker_client, SHELL_IMAGE, IMAGES[SHELL_IMAGE], log=lambda line: None)
    return SHELL_IMAGE


EXTRA_PACKAGE = "tree"


@pytest.fixture(scope="session")
def image_with_tree(docker_client, shell_image, tmp_path_factory) -> str:
    """The shell image plus one Debian package, built offline once per session (and not at all
    while its definition is unchanged: the image stays current): a Dockerfile over the local
    shell image that installs the package's .deb, taken from the host's apt cache or fetched
    from the Debian mirror with `apt-get download`, as README's example does."""
    definition = tmp_path_factory.mktemp("definitions") / "with-tree"
    debs = definition / "debs"
    debs.mkdir(parents=True)
    cached = sorted(Path("/var/cache/apt/archives").glob(f"{EXTRA_PACKAGE}_*.deb"))
    if cached:
        shutil.copy(cached[-1], debs)
    else:
        subprocess.run(["apt-get", "download", EXTRA_PACKAGE], cwd=debs, check=True, capture_output=True)
    (definition / "Dockerfile").write_text(
        f"FROM {shell_image}\n"
        "USER 0:0\n"
        "COPY debs/ /tmp/debs/\n"
        "RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs\n"
        "USER 10001:10001\n"
    )
    build_image(docker_client, EXTRA_IMAGE, definition, log=print)
    assert image_status(docker_client, EXTRA_IMAGE, definition) == "current"
    return EXTRA_IMAGE


def test_toka_sandbox_build_builds_both_images(shell_image, sandbox_image):
    done = run_toka("sandbox", "build")
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert f"sandbox image {DEFAULT_IMAGE} is current" in done.stdout
    assert f"sandbox image {SHELL_IMAGE} is current" in done.stdout


def test_the_shell_image_runs_shell_tasks_measured_without_a_full_python(
    docker_client, shell_image, tmp_path
):
    source = "echo hello from $(cat /etc/debian_version | cut -d. -f1); python3 -c 'import json'"
    with Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)}) as sandbox:
        result = sandbox.run(sandbox_spec(source, image=shell_image, language="shell", pids=32))
    print(result.failure, result.stdout, result.stderr)
    assert result.stdout == "hello from 12\n"
    assert result.failure == "exit code 1: ModuleNotFoundError: No module named 'json'"
    # The supervisor measures there as anywhere (it does without json, termios and resource).
    assert result.peak_memory > 0 and result.cpu_seconds > 0 and result.peak_pids >= 2
    assert result.image_digest == docker_client.images.get(shell_image).id


@pytest.mark.usefixtures("prefect_api", "sandbox_image")
def test_an_image_with_an_extra_debian_package_is_used_per_agent_and_its_id_recorded(
    docker_client, image_with_tree, tmp_path: Path, workspace_root
):
    from toka_agents import run

    path = write_config(
        tmp_path,
        f"""\
name: images-{uuid.uuid4().hex[:8]}
defaults: {{image: {SHELL_IMAGE}}}
agents:
  - name: with-tree
    image: {image_with_tree}
    tasks: [{{name: look, code: {{language: shell, source: "mkdir -p /tmp/a/b && tree --noreport /tmp/a"}}}}]
  - name: plain-shell
    tasks:
      - {{name: look, code: {{language: shell, source: "command -v tree || echo no tree here"}}}}
      - {{name: tree, image: {image_with_tree}, code: {{language: shell, source: "command -v tree"}}}}
  - name: python
    image: {DEFAULT_IMAGE}
    tasks: [{{name: json, code: {{language: python, source: "import json; print(json.dumps([1]))"}}}}]
""",
    )
    result = run(path, workspace_root=workspace_root)
    outcomes = {outcome.task_id: outcome for outcome in result.outcomes}
    for outcome in outcomes.values():
        print(outcome.task_id, outcome.status, outcome.message, outcome.stdout_tail, outcome.image)
    assert result.state.is_completed(), result.state.message
    assert outcomes["with-tree/look"].stdout_tail == "/tmp/a\n└── b\n"
    assert outcomes["plain-shell/look"].stdout_tail == "no tree here\n"
    assert outcomes["plain-shell/tree"].stdout_tail == "/usr/bin/tree\n"  # the task's own image
    assert outcomes["python/json"].stdout_tail == "[1]\n"
    for task, image in (
        ("with-tree/look", image_with_tree),
        ("plain-shell/look", SHELL_IMAGE),
        ("plain-shell/tree", image_with_tree),
        ("python/json", DEFAULT_IMAGE),
    ):
        assert outcomes[task].image == image
        assert outcomes[task].image_digest == docker_client.images.get(image).id
