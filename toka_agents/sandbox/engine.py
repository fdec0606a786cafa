"""The connection to the Docker engine, with an error that says how to get one."""

from __future__ import annotations

import os

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from toka_agents.errors import SandboxError


def connect(*, pool_size: int = 10, timeout: float = 60) -> docker.DockerClient:
    """A client for the engine in `DOCKER_HOST` (default: the local socket), checked with a ping."""
    where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        client = docker.from_env(timeout=int(timeout), max_pool_size=max(pool_size, 10))
        client.ping()
    except (DockerException, RequestException, OSError) as exc:
        raise SandboxError(
            f"cannot reach the Docker engine at {where}: {_reason(exc)}. "
            "Start it (scripts/setup installs and starts one) or point DOCKER_HOST at one."
        ) from exc
    return client


def _reason(exc: BaseException) -> str:
    text = str(exc)
    if "No such file or directory" in text or "FileNotFoundError" in text:
        return "no engine is listening there"
    if "Permission denied" in text:
        return "permission denied (run as root or join the docker group)"
    return text.splitlines()[0][:200] if text else type(exc).__name__
