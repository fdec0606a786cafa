# ruff: noqa: F811
"""Any engine by DOCKER_HOST: an orchestration runs on a second dockerd of the test's own (its own
socket, data root and exec root), its workspace a Docker volume on that engine, and
`toka workspace get` copies the report back out, from the run's archive in the result storage
or from that volume."""

from __future__ import annotations

import os
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import run_toka, write_config
from second_engine import second_engine  # noqa: F401 (the module's engine; tests name it: F811)

from toka_agents import run
from toka_agents.orchestration.flow import RUN_LABEL

pytestmark = pytest.mark.usefixtures("prefect_api")

REPORT = textwrap.dedent(
    """
    name: remote-{suffix}
    sandbox: {{pool_size: 0}}
    workspace: {{from: brief}}
    agents:
      - name: analyst
        capabilities: [filesystem-write]
        tasks:
          - name: report
            code:
              language: shell
              source: |
                mkdir -p /workspace/out
                echo "engine report {suffix}" > /workspace/out/report.txt
                cat /workspace/brief.txt >> /workspace/out/report.txt
                echo seen >> /workspace/brief.txt
                id -u > /workspace/who.txt
    """
)


def test_a_remote_engine_without_the_sandbox_image_refuses_the_run_saying_how_to_build_it(
    second_engine, tmp_path, workspace_root, monkeypatch
):
    assert not second_engine.has_image(), "this test runs before the module loads the image"
    monkeypatch.setenv("DOCKER_HOST", second_engine.url)
    (tmp_path / "brief").mkdir()
    result = run(
        write_config(tmp_path, REPORT.format(suffix=uuid.uuid4().hex[:8])), workspace_root=workspace_root
    )
    assert result.state.is_failed()
    assert result.state.message == (
        f"refused before starting any task: image 'toka-sandbox:1' is not on the Docker engine at "
        f"{second_engine.url}: build it there with `toka sandbox build` (with DOCKER_HOST set to "
        "that engine)"
    )
    with second_engine.client() as client:
        assert client.api.containers(all=True) == []


def test_a_run_on_a_remote_engine_keeps_its_workspace_in_a_volume_that_workspace_get_copies_out(
    second_engine, tmp_path, workspace_root, monkeypatch, prefect_api
):
    second_engine.load_image()
    suffix = uuid.uuid4().hex[:8]
    (tmp_path / "brief").mkdir()
    (tmp_path / "brief" / "brief.txt").write_text("the brief\n")  # seeds the volume, stays as it is
    monkeypatch.setenv("DOCKER_HOST", second_engine.url)
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))
    result = run(write_config(tmp_path, REPORT.format(suffix=suffix)), workspace_root=workspace_root)
    assert result.ok, result.state.message
    run_id = str(result.flow_run_id)
    assert not workspace_root.exists()  # nothing of the run's on this machine's side

    with second_engine.client() as client:
        [volume] = client.api.volumes(filters={"label": f"{RUN_LABEL}={run_id}"})["Volumes"]
        assert volume["Name"] == f"toka-ws-{run_id}"
        assert volume["Labels"]["org.toka-agents.workspace"] == "1"
        assert client.api.containers(all=True, filters={"label": f"{RUN_LABEL}={run_id}"}) == []

    assert (tmp_path / "brief" / "brief.txt").read_text() == "the brief\n"
    env = {"DOCKER_HOST": second_engine.url, "PREFECT_API_URL": prefect_api}
    uid = run_user(run_id).split(":")[0]
    for source in ("the result storage", "its workspace volume"):
        got = run_toka("workspace", "get", run_id, str(tmp_path / source), env=env)
        assert got.returncode == 0, got.stderr
        assert got.stdout.startswith("copied ") and f"from {source} to {tmp_path / source}" in got.stdout
        copy = tmp_path / source
        report = (copy / "out" / "report.txt").read_text()
        assert report == f"engine report {suffix}\nthe brief\n"
        assert (copy / "brief.txt").read_text() == "the brief\nseen\n"
        assert (copy / "who.txt").read_text() == f"{uid}\n"  # the run's own user wrote it
        assert not (copy / "lost+found").exists()  # no disk of this machine's over it
        archive = Path(os.environ["PREFECT_HOME"], "storage", "toka-workspaces", f"{run_id}.tar.gz")
        archive.unlink(missing_ok=True)  # next, the volume

    # The helper container that read the volume is gone; the volume stays until removed.
    with second_engine.client() as client:
        assert client.api.containers(all=True) == []
    removed = run_toka("workspace", "rm", run_id, env=env)
    assert (removed.returncode, removed.stdout.strip()) == (0, f"removed volume toka-ws-{run_id}")
    again = run_toka("workspace", "get", run_id, str(tmp_path / "again"), env=env)
    assert again.returncode == 1
    assert again.stderr.splitlines() == [
        f"error: no archive of run {run_id} in the result storage, and no workspace volume of flow run {run_id} on the Docker engine at {second_engine.url} "
        "(runs on this machine's own engine keep theirs in a directory: see `toka orchestrate`'s "
        f"output, or {_default_root()})"
    ]


def run_user(run_id: str) -> str:
    from toka_agents.sandbox.users import run_user

    return run_user(run_id)


def _default_root():
    from toka_agents.sandbox.workspace import default_root

    return default_root()


@pytest.mark.parametrize(
    ("environment", "mode"),
    [
        ({}, "bind"),
        ({"DOCKER_HOST": "unix:///var/run/docker.sock"}, "bind"),
        ({"DOCKER_HOST": "unix:///run/docker.sock"}, "bind"),
        ({"DOCKER_HOST": "unix:///tmp/other/docker.sock"}, "volume"),
        ({"DOCKER_HOST": "tcp://10.0.0.2:2376"}, "volume"),
        ({"DOCKER_HOST": "ssh://builder@host"}, "volume"),
        ({"DOCKER_HOST": "tcp://10.0.0.2:2376", "TOKA_WORKSPACE": "bind"}, "bind"),
        ({"TOKA_WORKSPACE": "volume"}, "volume"),
    ],
)
def test_the_workspace_is_a_volume_for_any_engine_but_the_local_default_socket(environment, mode):
    from toka_agents.sandbox.workspace import workspace_mode

    assert workspace_mode(environment) == mode


def test_a_bad_workspace_mode_is_one_line():
    from toka_agents.errors import SandboxError
    from toka_agents.sandbox.workspace import workspace_mode

    with pytest.raises(SandboxError) as raised:
        workspace_mode({"TOKA_WORKSPACE": "nfs"})
    assert str(raised.value) == "TOKA_WORKSPACE='nfs' is not one of bind, volume, auto"
