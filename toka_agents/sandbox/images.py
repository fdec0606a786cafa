"""The sandbox images: built from their definitions (the repository's `sandboxes/`) with a
registry, or offline without one.

Two come with toka-agents (`IMAGES`): the Python image (`sandboxes/python`, the default) and
the shell image (`sandboxes/shell`: Debian's essential tools, and python3-minimal only for the
supervisor). A definition is a directory with a Dockerfile, for machines that can pull, and
for the offline build either a `build-offline.sh` of its own or a `packages` file (Debian
packages, one per line) for `sandboxes/build-offline.sh`; an image with extra Debian packages
is a copy of `sandboxes/shell` with more lines in `packages`.

A checkout has them at its top, `sandboxes/`; a wheel carries them inside the package as
`toka_agents/sandbox/definitions/` (pyproject.toml maps the one onto the other), so that a
plain `pip install` builds and checks the images too.

Each image carries a label with a digest of its definition, so a second build finds the
image current and does nothing, and a changed definition rebuilds it.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import docker
from docker.errors import BuildError, DockerException, ImageNotFound
from requests.exceptions import RequestException

from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.errors import SandboxError


def _definitions() -> Path:
    """Where the image definitions are: inside an installed wheel, else the checkout's."""
    packaged = Path(__file__).resolve().parent / "definitions"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parents[2] / "sandboxes"


SANDBOXES = _definitions()
DEFINITION = SANDBOXES / "python"
SHELL_IMAGE = "toka-sandbox-shell:1"
"""The shell image built from `sandboxes/shell`."""
IMAGES = {DEFAULT_IMAGE: DEFINITION, SHELL_IMAGE: SANDBOXES / "shell"}
"""The images `toka sandbox build` builds, by name, and their definitions."""
OFFLINE_BUILD = SANDBOXES / "build-offline.sh"
"""The offline build of a definition without a `build-offline.sh` of its own."""
LABEL_DIGEST = "org.toka-agents.definition"

ImageStatus = Literal["current", "stale", "missing"]


def definition_digest(directory: Path = DEFINITION) -> str:
    """A digest of every file of an image definition, names and contents."""
    digest = hashlib.sha256()
    for file in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(file.relative_to(directory).as_posix().encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def image_status(
    client: docker.DockerClient, name: str = DEFAULT_IMAGE, directory: Path = DEFINITION
) -> ImageStatus:
    try:
        image = client.images.get(name)
    except ImageNotFound:
        return "missing"
    labels = image.labels or {}
    return "current" if labels.get(LABEL_DIGEST) == definition_digest(directory) else "stale"


def build_images(
    client: docker.DockerClient, *, force: bool = False, log: Callable[[str], None] = print
) -> dict[str, str]:
    """Make sure every image of `IMAGES` is built; return what was done, by image."""
    return {
        name: build_image(client, name, directory, force=force, log=log)
        for name, directory in IMAGES.items()
    }


def build_image(
    client: docker.DockerClient,
    name: str = DEFAULT_IMAGE,
    directory: Path = DEFINITION,
    *,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> str:
    """Make sure `name` is built from `directory`; return what was done."""
    if not (directory / "Dockerfile").is_file():
        raise SandboxError(f"no sandbox image definition at {directory} (expected a Dockerfile)")
    status = image_status(client, name, directory)
    if status == "current" and not force:
        log(f"sandbox image {name} is current")
        return "current"
    digest = definition_digest(directory)
    log(f"building sandbox image {name} ({'missing' if status == 'missing' else 'out of date'})")
    try:
        client.images.build(path=str(directory), tag=name, labels={LABEL_DIGEST: digest}, rm=True)
        log(f"built {name} from {directory / 'Dockerfile'}")
        return "built"
    except (BuildError, DockerException, RequestException) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        log(f"registry build failed ({reason[:160]}); building offline instead")
    own = directory / "build-offline.sh"
    argv = (
        ["bash", str(own), name] if own.is_file() else ["bash", str(OFFLINE_BUILD), name, str(directory)]
    )
    run = subprocess.run([*argv, f"{LABEL_DIGEST}={digest}"], capture_output=True, text=True)
    if run.returncode != 0:
        raise SandboxError(
            f"offline build of {name} failed: {(run.stderr or run.stdout).strip()[-800:]}"
        )
    if image_status(client, name, directory) != "current":
        raise SandboxError(
            f"offline build of {name} finished but the image lacks its {LABEL_DIGEST} label"
        )
    log(run.stdout.strip())
    return "built offline"
