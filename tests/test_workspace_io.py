"""A run's material in and its results out: a workspace seeded from a directory or a git
repository, declared outputs as artifacts of the flow run, and the whole workspace archived in
Prefect's result storage for `toka workspace get`. Real Prefect server, real Docker engine, a
real git repository made here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest
from conftest import run_toka, write_config
from test_flows import artifacts
from test_outputs_handed_on import READS_WHAT_WORK_HANDS_ON

from toka_agents import run
from toka_agents.orchestration.reporting.outputs import TABLE_ROWS

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


@pytest.fixture(autouse=True)
def seeds_from_the_tests_directory(tmp_path, monkeypatch):
    """Seeds may come from the test's own directory (by default only the current one)."""
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))


SEEDED = (
    """
name: seeded
inputs:
  material: {type: path}
workspace: {from: "{material}", exclude: [__pycache__, "data/*.log"]}
outputs:
  - {path: report.md, title: The report}
  - {path: "tables/*.csv", title: Counts}
  - notes.txt
  - long.log
  - blob.bin
  - missing.md
agents:
  - name: work
    capabilities: [filesystem-write]
    outputs: [report.md, "tables/*.csv", nothing.txt]
    tasks:
      - name: write
        code:
          language: python
          source: |
            import csv, os
            seeded = sorted(os.path.join(d, f)[2:] for d, _, fs in os.walk(".") for f in fs)
            print("seeded:", seeded)
            st = os.stat("data/input.txt")
            print("owner:", st.st_uid == os.getuid(), "link:", os.readlink("link"))
            with open("data/input.txt", "a") as f:
                f.write("changed by the agent\\n")
            with open("report.md", "w") as f:
                f.write("# Findings\\n\\nAll **good**. <img src=x onerror=alert(1)> "
                        "[click](javascript:alert(2)) `<kept>`\\n")
            os.makedirs("tables", exist_ok=True)
            with open("tables/counts.csv", "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["n", "square"])
                w.writerows([i, i * i] for i in range(1205))
            with open("tables/names.csv", "w") as f:
                f.write("name,<b>link</b>\\n<img src=x onerror=alert(1)>,[c](javascript:alert(3))\\n")
            os.link("report.md", "same-report.md")
            with open("long.log", "w") as f:
                f.write("a line of the log\\n" * 20000)
            with open("notes.txt", "w") as f:
                f.write("a note with ``` fences\\n")
            with open("blob.bin", "wb") as f:
                f.write(bytes(range(256)) * 4)
"""
    + READS_WHAT_WORK_HANDS_ON
)


def make_material(directory: Path) -> Path:
    material = directory / "material"
    (material / "data").mkdir(parents=True)
    (material / "data" / "input.txt").write_text("the team's material\n")
    (material / "top.txt").write_text("top\n")
    (material / "link").symlink_to("data/input.txt")
    os.mkfifo(material / "pipe")
    (material / "__pycache__").mkdir()
    (material / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (material / "data" / "noise.log").write_text("excluded\n")
    return material


def test_a_seeded_run_hands_back_its_outputs_as_artifacts_and_its_workspace_archive(
    tmp_path, workspace_root
):
    material = make_material(tmp_path)
    before = {p: p.read_bytes() for p in material.rglob("*") if p.is_file() and not p.is_symlink()}
    config = write_config(tmp_path, SEEDED)

    result = run(config, inputs={"material": str(material)}, workspace_root=workspace_root)

    assert result.ok, result.state.message
    stdout = result.outcomes[0].stdout_tail
    # Copied in, files and links, the FIFO left out; the files are the run's user's.
    assert "seeded: ['data/input.txt', 'link', 'top.txt']" in stdout
    assert "owner: True link: data/input.txt" in stdout
    # Copied, never mounted: the agent's write did not reach the source.
    assert {p: p.read_bytes() for p in before} == before
    # The files of its declared outputs that it wrote are named to the agent after it.
    assert (
        "handed on: ['report.md', 'tables/counts.csv', 'tables/names.csv']"
        in result.outcomes[1].stdout_tail
    )
    assert result.warnings == [
        "output 'missing.md': no such file in the workspace",
        "output 'nothing.txt': no such file in the workspace",
    ]

    found = {a.key: a for a in artifacts(result.flow_run_id) if a.key and a.key.startswith("output-")}
    report = found["output-seeded-report-md"]
    assert report.type == "markdown" and report.description == "The report"
    assert "# Findings" in report.data and "All **good**." in report.data
    # What the agent wrote is its own text: no HTML, no script links, code spans as they are.
    assert "<img" not in report.data and "&lt;img" in report.data
    assert "javascript:alert(2))" not in report.data.replace("#blocked-javascript:alert(2))", "")
    assert "`<kept>`" in report.data

    table = found["output-seeded-tables-counts-csv"]
    assert table.type == "table"
    assert table.description == f"Counts; first {TABLE_ROWS:,} of 1,205 rows"
    rows = json.loads(table.data)
    assert len(rows) == TABLE_ROWS and rows[7] == {"n": "7", "square": "49"}

    # The UI renders a table's cells as Markdown: they are made inert too.
    [names] = json.loads(found["output-seeded-tables-names-csv"].data)
    assert names == {
        "name": "&lt;img src=x onerror=alert(1)>",
        "&lt;b>link&lt;/b>": "[c](#blocked-javascript:alert(3))",
    }

    notes = found["output-seeded-notes-txt"]
    assert "````\na note with ``` fences\n\n````" in notes.data
    long = found["output-seeded-long-log"].data
    assert long.endswith("\n```\n\n*(cut: the first 200KB of 351.6KB shown)*"), long[-100:]
    binary = found["output-seeded-binary-outputs"]
    assert "blob\\.bin | 1KB |" in binary.data

    # The whole workspace is in the result storage: `toka workspace get` needs no worker's disk.
    shutil.rmtree(result.workspace)
    destination = tmp_path / "fetched"
    got = run_toka("workspace", "get", str(result.flow_run_id), str(destination))
    assert got.returncode == 0, got.stderr
    assert "from the result storage" in got.stdout
    assert (
        destination / "data" / "input.txt"
    ).read_text() == "the team's material\nchanged by the agent\n"
    assert (destination / "tables" / "counts.csv").read_text().count("\n") == 1206
    assert os.readlink(destination / "link") == "data/input.txt"
    assert (destination / "same-report.md").read_text() == (destination / "report.md").read_text()


def make_repository(directory: Path) -> Path:
    repository = directory / "repo"
    repository.mkdir()

    def git(*args: str) -> None:
        env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org"}
        env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org"}
        subprocess.run(["git", "-C", str(repository), *args], check=True, env=env, capture_output=True)

    git("init", "--quiet", "--initial-branch", "main")
    (repository / "VERSION").write_text("one\n")
    git("add", "VERSION")
    git("commit", "--quiet", "-m", "one")
    git("tag", "v1")
    (repository / "VERSION").write_text("two\n")
    git("commit", "--quiet", "-am", "two")
    return repository


def test_a_workspace_cloned_from_git_at_the_ref_an_input_names(tmp_path, workspace_root):
    repository = make_repository(tmp_path)
    config = write_config(
        tmp_path,
        textwrap.dedent(
            f"""
            name: cloned
            inputs:
              ref: {{type: string, default: main}}
            workspace: {{git: "{repository}", ref: "{{ref}}"}}
            agents:
              - name: read
                tasks:
                  - name: version
                    code: {{language: shell, source: "cat VERSION; test -d .git && echo has-history"}}
            """
        ),
    )
    first = run(config, inputs={"ref": "v1"}, workspace_root=workspace_root)
    latest = run(config, workspace_root=workspace_root)

    assert first.ok and latest.ok, (first.state.message, latest.state.message)
    assert first.outcomes[0].stdout_tail.split() == ["one", "has-history"]
    assert latest.outcomes[0].stdout_tail.split() == ["two", "has-history"]


def test_a_seed_that_cannot_be_had_refuses_the_run_before_any_task(tmp_path, workspace_root):
    big = tmp_path / "big"
    big.mkdir()
    with open(big / "sparse.bin", "wb") as handle:
        handle.truncate(20 * 1024**2)  # 20MB that take no disk
    body = """
        name: seedless
        inputs:
          material: {type: path}
        workspace: {from: "{material}"}
        defaults: {limits: {workspace: 10MB}}
        agents:
          - name: a
            tasks:
              - {name: t, code: {language: shell, source: "true"}}
        """
    config = write_config(tmp_path, textwrap.dedent(body))
    too_big = run(config, inputs={"material": str(big)}, workspace_root=workspace_root)
    missing = run(config, inputs={"material": str(tmp_path / "nowhere")}, workspace_root=workspace_root)
    not_git = write_config(
        tmp_path,
        textwrap.dedent(body).replace('{from: "{material}"}', "{git: " + str(big) + "}"),
        "git.yaml",
    )
    no_repository = run(not_git, inputs={"material": "x"}, workspace_root=workspace_root)
    # Whoever fills the run form names the seed: only directories of the seed roots, only
    # transports that run nothing.
    elsewhere = run(config, inputs={"material": "/etc"}, workspace_root=workspace_root)
    fd_transport = write_config(
        tmp_path, textwrap.dedent(body).replace('{from: "{material}"}', "{git: 'fd::0'}"), "fd.yaml"
    )
    no_transport = run(fd_transport, inputs={"material": "x"}, workspace_root=workspace_root)

    assert too_big.state.is_failed() and too_big.outcomes == []
    assert too_big.state.message == (
        f"refused before starting any task: the workspace seed {big} holds 20MB, more than the "
        "workspace's limit of 10MB (limits.workspace)"
    )
    assert missing.state.message == (
        f"refused before starting any task: the workspace seed {tmp_path / 'nowhere'} does not "
        "exist on this machine"
    )
    assert elsewhere.state.message == (
        "refused before starting any task: the workspace seed /etc is outside the directories "
        f"seeds may come from ({tmp_path}); TOKA_SEED_ROOTS on the machine that runs the flow "
        "names them"
    )
    assert no_transport.state.message == (
        "refused before starting any task: could not clone the workspace seed fd::0: fatal: "
        "transport 'fd' not allowed"
    )
    assert no_repository.state.is_failed()
    assert no_repository.state.message.startswith(
        f"refused before starting any task: could not clone the workspace seed {big}: fatal:"
    )


ESCAPES = """
name: escapes
outputs: [report.md, s1/s2/evil/passwd, "*.md"]
agents:
  - name: work
    capabilities: [filesystem-write]
    tasks:
      - name: build
        code:
          language: python
          source: |
            import os
            open("report.md", "w").write("# the real report\\n")
            os.symlink("zloop.md", "zloop.md")  # a link to itself
            with open("holes.bin", "wb") as f:
                f.truncate(2 * 1024**3)  # 2GB of holes, on a 1GB disk
            # Links whose text stays short while the path they make passes 4096 characters:
            # a check of the path's text would call it inside; the kernel follows it to /etc.
            root, name = os.getcwd(), "d" * 250
            for _ in range(17):
                os.mkdir(name)
                os.chdir(name)
            os.symlink("/etc", "evil")
            os.chdir(root)
            os.symlink("/".join([name] * 8), "s1")
            os.chdir("/".join([name] * 8))
            os.symlink("/".join([name] * 9), "s2")
"""


def test_outputs_are_read_through_no_link_however_the_paths_are_built(tmp_path, workspace_root):
    result = run(write_config(tmp_path, ESCAPES), workspace_root=workspace_root)
    assert result.ok, result.state.message
    assert result.warnings == [
        "output 's1/s2/evil/passwd': no such file in the workspace",
        "left out of the workspace's archive, being mostly holes: holes.bin (2GB)",
    ]
    found = {a.key: a for a in artifacts(result.flow_run_id) if a.key and a.key.startswith("output-")}
    assert set(found) == {"output-escapes-report-md"}
    assert "root:" not in json.dumps([a.data for a in found.values()])
    # The workspace was released from its disk and archived; nothing of it leads out.
    destination = tmp_path / "fetched"
    got = run_toka("workspace", "get", str(result.flow_run_id), str(destination))
    assert got.returncode == 0, got.stderr
    assert not (destination / "s1" / "s2" / "evil").exists()
    assert (destination / "report.md").read_text() == "# the real report\n"
