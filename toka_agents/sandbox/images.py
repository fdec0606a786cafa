"""The sandbox images: built from their definitions (the repository's `sandboxes/`) with a
registry, or offline without one.

Two come with toka-agents (`IMAGES`): the Python image (`sandboxes/python`, the default) and
the shell image (`sandboxes/shell`: Debian's essential tools, and python3-minimal only for the
supervisor). A definition is a directory with a Dockerfile, for machines that can pull, and
for the offline build either a `build-offline.sh` of its own or a `packages` file (Debian
packages, one per line) for `sandboxes/build-offline.sh`; an image with extra Debian packages
is a copy of `sandboxes/shell` with more lines in `packages`, as `build_with_debs` makes one of
the Python image for an MCP server that needs them (`toka sandbox build --mcp ... --deb git`).

A checkout has them at its top, `sandboxes/`; a wheel carries them inside the package as
`toka_agents/sandbox/definitions/` (pyproject.toml maps the one onto the other), so that a
plain `pip install` builds and checks the images too.

Each image carries a label with a digest of its definition, so a second build finds the
image current and does nothing, and a changed definition rebuilds it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import docker
from docker.errors import BuildError, DockerException, ImageNotFound
from packaging.requirements import InvalidRequirement, Requirement
from requests.exceptions import RequestException

from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.errors import SandboxError, one_line


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
LABEL_MCP = "org.toka-agents.mcp"
"""The requirement an MCP image was built with."""

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


MCP_SITE = "/opt/toka-mcp/site"
"""Where an MCP image keeps the packages it adds (on the image's PYTHONPATH)."""
_ARCHES = {"amd64": "x86_64", "arm64": "aarch64"}


def mcp_image_name(requirement: str) -> str:
    """The image `toka sandbox build --mcp REQUIREMENT` makes by default: `toka-mcp-PACKAGE:1`
    (`mcp-server-time`: `toka-mcp-server-time:1`)."""
    package = re.sub(r"[^a-z0-9.-]+", "-", Requirement(requirement).name.lower()).removeprefix("mcp-")
    return f"toka-mcp-{package}:1"


_DEBIAN_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]+")


def build_with_debs(
    client: docker.DockerClient, debs: Sequence[str], *, log: Callable[[str], None] = print
) -> str:
    """Make sure the sandbox image with the Debian packages `debs` added is built (the Python
    image's definition with them in `packages`, and installed by the Dockerfile for a registry
    build); return its name, `toka-sandbox-DEB[-DEB...]:1`. Raises `SandboxError` in one line."""
    for deb in debs:
        if not _DEBIAN_PACKAGE.fullmatch(deb):
            raise SandboxError(f"{deb!r} is not a Debian package name")
    wanted = sorted(set(debs))
    name = f"toka-sandbox-{'-'.join(wanted)}:1"
    with tempfile.TemporaryDirectory(prefix="toka-debs-") as work:
        definition = Path(work)
        for file in DEFINITION.iterdir():
            (definition / file.name).write_bytes(file.read_bytes())
        with (definition / "packages").open("a") as packages:
            packages.write("".join(f"{deb}\n" for deb in wanted))
        install = (
            "USER root\nRUN apt-get update && apt-get install -y --no-install-recommends "
            f"{' '.join(wanted)} && rm -rf /var/lib/apt/lists/*\n"
        )
        dockerfile = (DEFINITION / "Dockerfile").read_text()
        (definition / "Dockerfile").write_text(dockerfile.replace("\nUSER ", f"\n{install}USER ", 1))
        build_image(client, name, definition, log=log)
    return name


def build_mcp_image(
    client: docker.DockerClient,
    requirement: str,
    name: str | None = None,
    *,
    debs: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> str:
    """Build an image of the sandbox's (its supervisor, its user) with `requirement` (a pip
    requirement, `PACKAGE[==VERSION]`) installed for the image's Python, and the Debian
    packages `debs` the server needs (`mcp-server-git` needs `git`); return its name.

    The wheels are fetched and unpacked on this machine (`pip install --target`, for the
    image's Python and the engine's platform), so the engine itself needs no package index;
    the image is `FROM` the sandbox image (with `debs`, the one `build_with_debs` makes), which
    is built first if it is missing. Raises `SandboxError` in one line."""
    try:
        wanted = Requirement(requirement)
    except InvalidRequirement as exc:
        said = one_line(str(exc).splitlines()[0])
        raise SandboxError(f"{requirement!r} is not a package to install: {said}") from None
    name = name or mcp_image_name(requirement)
    if debs:
        base = build_with_debs(client, debs, log=log)
    else:
        build_image(client, log=log)
        base = DEFAULT_IMAGE
    arch = _ARCHES.get(str(client.version().get("Arch")), "x86_64")
    version = client.containers.run(
        DEFAULT_IMAGE,
        ["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        remove=True,
        network_disabled=True,
    )
    python = version.decode().strip()
    with tempfile.TemporaryDirectory(prefix="toka-mcp-") as work:
        log(f"fetching {wanted} and what it needs, for Python {python} on {arch}")
        fetched = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
                f"{work}/site",
                "--only-binary=:all:",
                "--implementation",
                "cp",
                "--python-version",
                python,
                "--platform",
                f"manylinux_2_28_{arch}",
                "--platform",
                f"manylinux_2_17_{arch}",
                "--platform",
                f"manylinux2014_{arch}",
                str(wanted),
            ],
            capture_output=True,
            text=True,
        )
        if fetched.returncode != 0:
            said = [line for line in fetched.stderr.splitlines() if line.startswith("ERROR")]
            raise SandboxError(
                f"could not fetch {wanted}: {(said or [fetched.stderr.strip()])[-1][-400:]}"
            )
        Path(work, "Dockerfile").write_text(
            f"FROM {base}\nCOPY site {MCP_SITE}\nENV PYTHONPATH={MCP_SITE}\n"
        )
        try:
            client.images.build(path=work, tag=name, rm=True, labels={LABEL_MCP: str(wanted)})
        except (BuildError, DockerException, RequestException) as exc:
            raise SandboxError(f"could not build {name}: {str(exc).strip()[-400:]}") from None
    log(f"built {name} with {wanted}")
    return name
