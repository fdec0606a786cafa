"""What the tests and the benchmarks set up alike: free ports, Prefect servers, waiting for a
flow run's end, work pools, throwaway PostgreSQL clusters, and sandbox specs.

Nothing here stands in for anything: each helper starts or reaches the real thing, on
127.0.0.1. The benchmarks import it with `tests/` on their path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx

MB = 1024**2


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_prefect_server(
    log_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen, str]:
    """`prefect server start` on a free port of 127.0.0.1, its UI pointed at its own API;
    returns the process (in a session of its own) and the API URL once `/health` answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PREFECT_UI_API_URL": url, **(env or {})},
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            stop_process_group(server)
            raise RuntimeError(f"prefect server did not start: {log_path.read_text()[-2000:]}")
        time.sleep(0.3)


def stop_process_group(process: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group that `process` leads, then SIGKILL it after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # what the leader left behind in its group


def wait_final(flow_run_id: UUID, seconds: float) -> Any:
    """The flow run once its state is final, or as it is after `seconds`."""
    from prefect import get_client

    deadline = time.monotonic() + seconds
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if (flow_run.state and flow_run.state.is_final()) or time.monotonic() > deadline:
                return flow_run
            time.sleep(0.5)


def process_pool(name: str) -> str:
    """A process work pool of that name on the current API (made if missing); its name."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=name, type="process"))
    return name


def postgres_binaries() -> Path | None:
    """The directory of PostgreSQL's server programs (Debian's `postgresql`), newest first."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda path: int(path.parts[-3])
    )
    return found[-1].parent if found else None


@contextlib.contextmanager
def postgres_cluster() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, no fsync) with a database
    `prefect`; yields its SQLAlchemy URL. Run as root, the cluster belongs to the `postgres`
    user, as initdb refuses root."""
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup (Debian package postgresql)")
    root = Path(tempfile.mkdtemp(prefix="toka-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        as_owner = ["runuser", "-u", "postgres", "--"]
    data, port = root / "data", free_port()

    def run(*args: str) -> None:
        done = subprocess.run([*as_owner, *args], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]}: {done.stdout}{done.stderr}")

    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "--no-sync")
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    run(
        str(binaries / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(root / "pg.log"),
        "-w",
        "start",
    )
    try:
        run(str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "prefect")
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        run(str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


def sandbox_spec(source: str = "", **settings: Any) -> Any:
    """A `SandboxSpec` with small limits (64MB, half a core, 64 pids, 20 s) of the default
    image, running Python; a `workspace` given is writable unless `workspace_writable` says."""
    from toka_agents.config.models import DEFAULT_IMAGE
    from toka_agents.sandbox import SandboxSpec

    base: dict[str, Any] = dict(
        image=DEFAULT_IMAGE,
        language="python",
        source=source,
        memory=64 * MB,
        cpus=0.5,
        pids=64,
        timeout=20,
        workspace_writable=settings.get("workspace") is not None,
    )
    return SandboxSpec(**{**base, **settings})
