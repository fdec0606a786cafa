"""The built wheel carries every file the package needs, not only its Python modules: the
image definitions of `sandboxes/` too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from conftest import REPO


def test_the_wheel_holds_every_file_of_the_package(tmp_path: Path):
    # Built from a copy of the repository's files, so no earlier build/ folder can fill gaps.
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    source = tmp_path / "source"
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
    )
    [wheel] = (tmp_path / "dist").glob("toka_agents-*.whl")
    packaged = set(zipfile.ZipFile(wheel).namelist())
    package = [name for name in files if name.startswith("toka_agents/")]
    # The image definitions, at the repository's top, travel inside the package.
    definitions = [
        "toka_agents/sandbox/definitions/" + name.removeprefix("sandboxes/")
        for name in files
        if name.startswith("sandboxes/")
    ]
    assert "toka_agents/config/schemas/toka-agent-spec.yaml" in package
    assert "toka_agents/sandbox/definitions/python/Dockerfile" in definitions
    assert sorted(set(package + definitions) - packaged) == []
