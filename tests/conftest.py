"""Shared test fixtures: a real Prefect server, the real Docker engine, and leak checks.

Nothing here is mocked. Flow tests run against a `prefect server start` process that the
session starts on 127.0.0.1; sandbox tests run containers on the local Docker engine and
fail (never skip) when it is missing.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Before Prefect is imported anywhere: keep the tests' Prefect state out of ~/.prefect.
_PREFECT_HOME = tempfile.mkdtemp(prefix="toka-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["TOKA_HOME"] = tempfile.mkdtemp(prefix="toka-tests-home-")
os.environ.pop("PREFECT_API_URL", None)
# No silent embedded server: a test that reaches Prefect must name the session's server
# (the `prefect_api` fixture) or turn the embedded one on itself.
os.environ["PREFECT_SERVER_EPHEMERAL_ENABLED"] = "false"

import httpx  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "flows" / "examples"
TOKA = str(Path(sys.executable).with_name("toka"))
LABEL = "org.toka-agents.managed=1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server for the whole session; its API URL is set for this process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    log = open(Path(_PREFECT_HOME) / "server.log", "w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PREFECT_UI_ENABLED": "false"},
    )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"prefect server did not start: {Path(log.name).read_text()[-2000:]}")
        time.sleep(0.3)
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            _drain_prefect_workers()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _drain_prefect_workers() -> None:
    """Send buffered logs and events while the server still answers."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@pytest.fixture(scope="session")
def docker_client():
    """The local Docker engine. A missing engine is an error: CI installs and starts one."""
    from toka_agents.sandbox import connect

    return connect()


@pytest.fixture(scope="session")
def sandbox_image(docker_client) -> str:
    from toka_agents.config.models import DEFAULT_IMAGE
    from toka_agents.sandbox import image_status

    status = image_status(docker_client)
    assert status == "current", f"sandbox image {DEFAULT_IMAGE} is {status}: run scripts/setup"
    return DEFAULT_IMAGE


def toka_containers(client) -> list[str]:
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": [LABEL]})]


def own_containers(client) -> list[str]:
    """This process's toka-agents containers (its owner label): what its in-process runs made.

    Other suites and runs share the engine, so leak checks never count all toka containers.
    """
    from toka_agents.sandbox.owners import LABEL_OWNER, current_owner

    labels = [LABEL, f"{LABEL_OWNER}={current_owner()}"]
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": labels})]


@pytest.fixture
def no_leftover_containers(docker_client) -> Iterator[None]:
    """Fails the test if its in-process runs leave any container behind."""
    before = set(own_containers(docker_client))
    yield
    left = set(own_containers(docker_client)) - before
    assert not left, f"containers left behind: {sorted(left)}"


@pytest.fixture
def workspace_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def run_toka(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real `toka` command in a subprocess."""
    return subprocess.run(
        [TOKA, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )
