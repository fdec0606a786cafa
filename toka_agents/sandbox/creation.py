"""Making a sandbox container: its settings from a `SandboxSpec`, and the engine's create call.

A container's settings come from its spec and nowhere else: no network unless asked,
memory/cpu/pids limits, a read-only root file system with a tmpfs /tmp, no-new-privileges, no
capabilities but the supervisor's three. Its process is the supervisor (`bootstrap.py`), which
waits on stdin for the code (see `attach`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

import docker
from docker.errors import ImageNotFound
from docker.types import LogConfig, Mount

from toka_agents.errors import SandboxError
from toka_agents.sandbox.egress import LIMITED_SANDBOX
from toka_agents.sandbox.engine import ENGINE_ERRORS, EngineUnreachable, engine_said
from toka_agents.sandbox.spec import SandboxSpec

BOOTSTRAP = resources.files("toka_agents.sandbox").joinpath("bootstrap.py").read_text()
SUPERVISOR_USER = "0:0"
"""The supervisor (PID 1) runs as another user than the code, so the code cannot reach its
memory or file descriptors (and through them the output cap and the report)."""
SUPERVISOR_CAPABILITIES = ["SETUID", "SETGID", "KILL"]
"""All the supervisor keeps of root: enough to start the code as `SandboxSpec.user` and to
kill it at its time limit (and what it leaves running, at its end). No other capability (not
even reading files it does not own), and the code has none at all."""
IDLE_LIMIT = 3600
"""Seconds a container waits for its code before its supervisor ends it: a warm container
of a process that forgot it (without dying, which closes its socket) does not wait forever."""


@dataclass(frozen=True)
class Container:
    """A container a sandbox created: its id, and the name `docker ps` shows."""

    id: str
    name: str | None = None

    def __str__(self) -> str:
        return f"{self.name} ({self.id[:12]})" if self.name else self.id[:12]


def create_container(
    client: docker.DockerClient,
    image_id: str,
    spec: SandboxSpec,
    labels: dict[str, str],
    name: str | None,
    command: list[str] | None = None,
) -> Container:
    """Create (not start) a container of `image_id` with `spec`'s settings; `SandboxError` in
    one line when the engine refuses. Its process is the supervisor, or `command` (a server
    that speaks on its stdin and stdout) run as the spec's user with the spec's env and no
    capability at all."""
    own = command is not None
    try:
        created = client.api.create_container(
            image_id,
            # -I: the supervisor, root, imports nothing from its working directory, the workspace
            command=command if own else ["python3", "-I", "-c", BOOTSTRAP, str(IDLE_LIMIT)],
            user=spec.user if own else SUPERVISOR_USER,
            environment=spec.env if own else None,
            stdin_open=True,  # with detach=False the SDK also sets StdinOnce
            labels=labels,
            name=name,
            working_dir="/workspace" if spec.workspace else "/tmp",
            network_disabled=spec.network is None,
            host_config=client.api.create_host_config(
                **host_settings(spec, capabilities=[] if own else SUPERVISOR_CAPABILITIES)
            ),
        )
    except ImageNotFound as exc:
        raise SandboxError(image_missing(spec.image)) from exc
    except EngineUnreachable:  # its message already says it all
        raise
    except ENGINE_ERRORS as exc:
        what = f"container {name}" if name else f"a container of {spec.image}"
        raise SandboxError(f"the Docker engine refused to create {what}: {engine_said(exc)}") from exc
    return Container(created["Id"], name)


def image_missing(image: str) -> str:
    return (
        f"sandbox image {image!r} is not on the Docker engine: build it with "
        "`toka sandbox build` (scripts/setup does), or set `image:` to one you have"
    )


@contextlib.contextmanager
def engine_errors(doing: str, container: Container) -> Iterator[None]:
    """Turn an error of the engine (or of the connection to it) into a one-line `SandboxError`
    saying what the engine said, doing what, to which container."""
    try:
        yield
    except ENGINE_ERRORS as exc:
        raise SandboxError(
            f"Docker engine error while {doing} container {container}: {engine_said(exc)}"
        ) from exc


def host_settings(
    spec: SandboxSpec, capabilities: list[str] = SUPERVISOR_CAPABILITIES
) -> dict[str, Any]:
    """The Docker host config of a spec: where every limit and permission reaches the container."""
    mounts = []
    if spec.workspace is not None:
        mounts.append(
            Mount(
                target="/workspace",
                source=str(spec.workspace),
                type="bind",
                read_only=not spec.workspace_writable,
            )
        )
    return {
        "network_mode": spec.network or "none",
        "mem_limit": spec.memory,
        "memswap_limit": spec.memory,  # no swap: the memory limit is the limit
        "nano_cpus": int(spec.cpus * 1e9),
        "pids_limit": spec.pids,
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={spec.tmp_size},mode=1777"},
        "cap_drop": ["ALL"],
        "cap_add": capabilities,
        "security_opt": ["no-new-privileges"],
        "mounts": mounts,
        **(LIMITED_SANDBOX if spec.refuse_dns else {}),
        # Output is read from the attach socket; keeping a log file too would only use disk.
        "log_config": LogConfig(type=LogConfig.types.NONE),
    }
