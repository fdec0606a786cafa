"""A second Docker engine of the test's own: its own dockerd, socket, data root, exec root and
bridge, so a test can stop it, start it again and throw it away without touching the engine
that other tests (and other sessions) use.

Never `--bridge=none`: a dockerd started that way deletes the host's `docker0`, the bridge of
the main engine's default network. This one gets a bridge interface of its own instead.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

DEFAULT_IMAGE = "toka-sandbox:1"


class SecondEngine:
    """A dockerd listening on `url` (unix socket), started and stopped by the test."""

    def __init__(self) -> None:
        # Short: a unix socket's path is limited to 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="toka-eng-", dir="/tmp"))
        self.socket = self.root / "docker.sock"
        self.url = f"unix://{self.socket}"
        self.bridge = f"toka-e{self.root.name[-6:]}"[:15]
        self.subnet = random.randrange(20, 250)
        self.process: subprocess.Popen[bytes] | None = None
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"10.213.{self.subnet}.1/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    @property
    def log(self) -> str:
        path = self.root / "dockerd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, deadline: float = 60) -> None:
        assert not self.running, "already running"
        with open(self.root / "dockerd.log", "ab") as log:
            self.process = subprocess.Popen(
                [
                    "dockerd",
                    f"--host={self.url}",
                    f"--data-root={self.root / 'data'}",
                    f"--exec-root={self.root / 'exec'}",
                    f"--pidfile={self.root / 'docker.pid'}",
                    f"--bridge={self.bridge}",
                    "--iptables=false",
                    "--ip-masq=false",
                    "--shutdown-timeout=2",  # a stop kills the containers after 2 s, not 10
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        until = time.monotonic() + deadline
        while True:
            try:
                with self.client() as client:
                    client.ping()
                return
            except docker.errors.DockerException:
                pass
            if self.process.poll() is not None or time.monotonic() > until:
                raise RuntimeError(f"the second dockerd did not start: {self.log}")
            time.sleep(0.2)

    def stop(self, deadline: float = 60) -> None:
        """SIGTERM, as an operator's `kill` or a service manager's stop would; wait for its end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=deadline)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    @contextlib.contextmanager
    def client(self) -> Iterator[docker.DockerClient]:
        client = docker.DockerClient(base_url=self.url, timeout=60)
        try:
            yield client
        finally:
            client.close()

    def has_image(self, name: str = DEFAULT_IMAGE) -> bool:
        with self.client() as client:
            try:
                client.api.inspect_image(name)
            except docker.errors.ImageNotFound:
                return False
        return True

    def load_image(self, name: str = DEFAULT_IMAGE) -> None:
        """Copy `name` from the main engine (no registry here)."""
        if self.has_image(name):
            return
        save = subprocess.Popen(["docker", "save", name], stdout=subprocess.PIPE)
        loaded = subprocess.run(
            ["docker", "-H", self.url, "load", "--quiet"], stdin=save.stdout, capture_output=True
        )
        assert save.stdout is not None
        save.stdout.close()
        assert save.wait() == 0 and loaded.returncode == 0, loaded.stderr.decode()

    def close(self) -> None:
        self.stop()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "delete", self.bridge)
        # What dockerd left mounted under its roots (it unmounts its own on a clean stop).
        with open("/proc/mounts") as mounts:
            points = [line.split()[1] for line in mounts if str(self.root) in line.split()[1]]
        for point in sorted(points, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def second_engine() -> Iterator[SecondEngine]:
    """A running second engine for the module, without images (tests load what they need)."""
    engine = SecondEngine()
    try:
        engine.start()
        yield engine
    finally:
        engine.close()
