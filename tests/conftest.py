"""Shared test fixtures: a real Prefect server, the real Docker engine, and leak checks.

Nothing here is mocked. Flow tests run against a `prefect server start` process (with its UI)
that the session starts on 127.0.0.1; sandbox tests run containers on the local Docker engine and
fail (never skip) when it is missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
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

import pytest  # noqa: E402
from support import sandbox_spec, start_prefect_server, stop_process_group  # noqa: E402

pytest_plugins = ["own_runs"]
"""Its `no_leftover_run_containers` fixture, for the modules that start runs, without an import."""

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "flows" / "examples"
TOKA = str(Path(sys.executable).with_name("toka"))
QUICKSTART_TASKS = [
    "generate/make-data",
    "describe/summarize",
    "outliers/find-outliers",
    "outliers/top-readings",
    "report/write-report",
    "review/check-report",
]
"""The quickstart's task runs, in plan order."""
LABEL = "org.toka-agents.managed=1"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "alone: runs while no other test process runs a test (it counts or sweeps what every "
        "process's runs leave on the engine)",
    )


@pytest.fixture(autouse=True)
def _engine_turn(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[None]:
    """Under pytest-xdist, a test marked `alone` waits until no other worker runs a test, and
    keeps them waiting while it runs; other tests share the engine. A reader-writer lock of
    `flock`s in the workers' common folder: the turnstile makes a waiting `alone` test go
    before tests that ask later."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    import fcntl

    folder = tmp_path_factory.getbasetemp().parent
    alone = request.node.get_closest_marker("alone") is not None
    with open(folder / "engine-turns.lock", "a") as turnstile, open(folder / "engine.lock", "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """A real Prefect server (with its UI) for the whole session; its API URL is set for this
    process."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server, url = start_prefect_server(Path(_PREFECT_HOME) / "server.log")
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            _drain_prefect_workers()
    finally:
        stop_process_group(server)


class BackgroundProcesses:
    """Long-running processes a test starts (Prefect workers, servers), ended at teardown with
    every process they started.

    Prefect's process worker starts each flow run in a new session of its own, so killing a
    worker's process group leaves its flow runs running (a stopped worker's orphaned
    `prefect.engine` processes once grew to 13 GB). Every process started here carries a marker
    in its environment, which its children inherit; `stop_all` kills whatever still carries it.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.marker = f"toka-test-{uuid.uuid4().hex}"
        self.processes: list[subprocess.Popen] = []

    def start(
        self, name: str, args: list[str], env: dict[str, str] | None = None, cwd: Path = REPO
    ) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "w") as log:
            process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env={**os.environ, **(env or {}), _MARKER: self.marker},
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.log_dir / f"{name}.log").read_text()

    def marked_pids(self) -> list[int]:
        """Live processes that carry this family's marker (its members and all they started)."""
        needle = f"{_MARKER}={self.marker}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue  # gone meanwhile, or not ours to read
            if needle in environ.split(b"\0"):
                pids.append(int(entry.name))
        return pids

    def stop_all(self) -> None:
        for process in self.processes:
            stop_process_group(process, grace=10)
        deadline = time.monotonic() + 15
        while (left := self.marked_pids()) and time.monotonic() < deadline:
            for pid in left:
                for kill in (os.killpg, os.kill):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        assert not self.marked_pids(), f"processes outlived their test: {self.marked_pids()}"


_MARKER = "TOKA_TEST_PROCESS_FAMILY"


@pytest.fixture
def background(tmp_path: Path) -> Iterator[BackgroundProcesses]:
    """Start long-running processes; all of them, and all they started, end at teardown."""
    family = BackgroundProcesses(tmp_path)
    try:
        yield family
    finally:
        family.stop_all()


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


TIME_SERVER = "mcp-server-time==2026.10.19"
"""The reference MCP server from the package index that MCP tests run (and whose image, which
has the `mcp` SDK, runs their probe servers)."""


@pytest.fixture(scope="session")
def time_image(docker_client, sandbox_image) -> str:
    """`toka-mcp-server-time:1`, built once per session (as `toka sandbox build --mcp` does)."""
    from toka_agents.sandbox.images import build_mcp_image

    return build_mcp_image(docker_client, TIME_SERVER, log=lambda line: None)


def toka_containers(client) -> list[str]:
    return [c["Id"] for c in client.api.containers(all=True, filters={"label": [LABEL]})]


def own_labels(*more: str) -> dict[str, list[str]]:
    """A container filter for this process's toka-agents containers (its owner label), and
    `more` labels: other test processes and runs share the engine."""
    from toka_agents.sandbox.owners import LABEL_OWNER, current_owner

    return {"label": [LABEL, f"{LABEL_OWNER}={current_owner()}", *more]}


def own_containers(client) -> list[str]:
    """This process's toka-agents containers: what its in-process runs made. Leak checks never
    count all toka containers."""
    return [c["Id"] for c in client.api.containers(all=True, filters=own_labels())]


@pytest.fixture
def no_leftover_containers(docker_client) -> Iterator[None]:
    """Fails the test if its in-process runs leave any container behind."""
    before = set(own_containers(docker_client))
    yield
    left = set(own_containers(docker_client)) - before
    assert not left, f"containers left behind: {sorted(left)}"


LLM_KEY_ENV = "TOKA_TEST_LLM_KEY"
"""The environment variable LLM test configs name as their `api_key_env`."""


@pytest.fixture
def api_key(monkeypatch) -> str:
    """A planted API key, set in `LLM_KEY_ENV` for the test: the scripted model server asks
    for it, and tests look for it where it must never be."""
    key = f"sk-planted-{os.urandom(8).hex()}"
    monkeypatch.setenv(LLM_KEY_ENV, key)
    return key


@pytest.fixture
def workspace_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def spec(sandbox_image, tmp_path):
    """Makes `SandboxSpec`s of small limits (`support.sandbox_spec`) whose code runs in a
    writable workspace of the test's own; a test module narrows them with a fixture of its own
    (`functools.partial(spec, memory=...)`)."""
    from toka_agents.sandbox import create_workspace

    workspace = create_workspace(tmp_path, "test")

    def make(source: str, language: str = "python", **settings):
        return sandbox_spec(source, language=language, workspace=workspace, **settings)

    return make


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


def run_prefect(
    *args: str, api: str, cwd: Path = REPO, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """The real `prefect` command in a subprocess, against the API at `api`, run from `cwd`
    (also as `$PWD`, which `prefect deploy` records for the pull step)."""
    return subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "PREFECT_API_URL": api, "PWD": str(cwd)},
    )


def start_toka(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The real `toka` command in a subprocess of its own, its output piped, left running."""
    return subprocess.Popen(
        [TOKA, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=REPO,
    )


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
