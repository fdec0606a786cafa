"""Removing what the sandbox made: containers by id or by label, and after a SIGKILL what the
killed process left (its containers, workspace disks and egress networks).

Every container carries `LABEL_MANAGED` and its owner (`owners`), so a run's end, `toka agent
stop` and `toka sandbox clean` find them by label, and the sweep finds those of killed owners.
"""

from __future__ import annotations

import contextlib
import time

import docker
from docker.errors import APIError, NotFound

from toka_agents.errors import SandboxError
from toka_agents.sandbox.disk import release_orphaned
from toka_agents.sandbox.egress import remove_orphaned_networks
from toka_agents.sandbox.engine import ENGINE_ERRORS, engine_said
from toka_agents.sandbox.owners import LABEL_OWNER, is_orphaned

LABEL_MANAGED = "org.toka-agents.managed"
"""Carried by everything toka-agents makes on an engine."""


def kill(client: docker.DockerClient, container_id: str) -> None:
    with contextlib.suppress(*ENGINE_ERRORS):  # already stopped or gone: removal follows
        client.api.kill(container_id)


def remove(client: docker.DockerClient, container_id: str, attempts: int = 5) -> None:
    """Force-remove a container; gone already is fine. Raises `SandboxError` if it stays."""
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.api.remove_container(container_id, force=True, v=True)
            return
        except NotFound:
            return
        except APIError as exc:
            if exc.status_code == 409 and "in progress" in str(exc):
                _wait_until_removed(client, container_id)  # another remover's: gone when we return
                return
            last = exc
        except ENGINE_ERRORS as exc:
            last = exc
        time.sleep(0.2 * (attempt + 1))
    said = engine_said(last) if last else "no answer"
    raise SandboxError(f"could not remove container {container_id[:12]}: {said}")


def _wait_until_removed(client: docker.DockerClient, container_id: str, bound: float = 30.0) -> None:
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        try:
            client.api.inspect_container(container_id)
        except NotFound:
            return
        except ENGINE_ERRORS:
            return  # the engine's trouble is for the next caller to report
        time.sleep(0.05)


def remove_labeled(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove every container that carries all of `labels`; return how many there were."""
    found = list_labeled(client, labels)
    for container_id in found:
        remove(client, container_id)
    return len(found)


def list_labeled(client: docker.DockerClient, labels: dict[str, str]) -> list[str]:
    filters = {"label": [f"{key}={value}" for key, value in labels.items()]}
    return [c["Id"] for c in client.api.containers(all=True, filters=filters)]


def remove_orphans(client: docker.DockerClient, labels: dict[str, str] | None = None) -> list[str]:
    """Remove the containers of toka-agents processes on this host that were killed before
    they could clean up (see `owners`), only those carrying `labels` too when given, then
    release the workspace disks such processes left mounted; return the container ids
    removed. Never raises: what cannot be removed now is tried again by the next run."""
    wanted = [f"{LABEL_MANAGED}=1", *(f"{key}={value}" for key, value in (labels or {}).items())]
    try:
        found = client.api.containers(all=True, filters={"label": wanted})
    except ENGINE_ERRORS:
        found = []
    removed = []
    for container in found:
        owner = (container.get("Labels") or {}).get(LABEL_OWNER)
        if owner is not None and is_orphaned(owner):
            with contextlib.suppress(SandboxError):
                remove(client, container["Id"])
                removed.append(container["Id"])
    release_orphaned()
    remove_orphaned_networks(client)
    return removed
