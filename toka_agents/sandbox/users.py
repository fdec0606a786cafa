"""Which user a run's code runs as: a uid of its own for each flow run.

Files a sandbox writes belong to the user its code runs as. Were that one user for every run,
a file one run's code left behind and someone ran (a setuid program, say) would own what every
other run's code wrote. So each run's code runs as a user of its own, `RUN_UIDS` picked by the
flow run's id: a resumed run (the same id) is the same user again and can write its first
attempt's files. The uids lie below 65,536, which rootless and user-namespace-remapped engines
map; a uid that a live run on the engine already uses is passed over for the next free one.
"""

from __future__ import annotations

import hashlib

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

RUN_UIDS = range(20000, 60000)
"""The uids (each with the gid of the same number) that runs' code runs as."""
LABEL_USER = "org.toka-agents.user"
"""Carried by a run's sandbox containers: the `uid:gid` its code runs as."""


def user_of(uid: int) -> str:
    return f"{uid}:{uid}"


def preferred_uid(run_id: str) -> int:
    """The uid a run's id points at in `RUN_UIDS`."""
    digest = hashlib.sha256(run_id.encode()).digest()
    return RUN_UIDS.start + int.from_bytes(digest[:8], "big") % len(RUN_UIDS)


def run_user(run_id: str, client: docker.DockerClient | None = None, *, label: str = "") -> str:
    """The `uid:gid` the code of run `run_id` runs as: its preferred uid, or the next one that no
    live sandbox container of another run on the engine uses (`label`: the key of the run
    label those containers carry). Without an engine to ask, the preferred one."""
    uid = preferred_uid(run_id)
    taken = _users_of_other_runs(client, run_id, label) if client is not None and label else set()
    while user_of(uid) in taken:
        uid = RUN_UIDS.start + (uid - RUN_UIDS.start + 1) % len(RUN_UIDS)
    return user_of(uid)


def _users_of_other_runs(client: docker.DockerClient, run_id: str, label: str) -> set[str]:
    try:
        containers = client.api.containers(all=True, filters={"label": [LABEL_USER]})
    except (DockerException, RequestException, OSError):
        return set()  # the engine's trouble is for the sandbox to report, at its first call
    return {
        labels[LABEL_USER]
        for container in containers
        if (labels := container.get("Labels") or {}).get(label) != run_id
    }
