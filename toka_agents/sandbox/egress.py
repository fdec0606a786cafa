"""Limited network: an internal Docker network per allow list, and the egress proxy on it.

A limited-network sandbox container joins only an internal network (the engine forwards
nothing from it to any other network, and the host's side of its bridge has no address, see
`NO_HOST_SIDE`) that it shares with one proxy container of toka-agents' own (`egress_proxy.py`
run in the sandbox image). The proxy's other side joins the upstream network (the run's
`sandbox.network`), and it lets through only the allowed hosts. The sandbox reaches the
proxy by its IP address (`HTTP_PROXY`/`HTTPS_PROXY`), so it needs no DNS, and its DNS is
refused (`REFUSED_DNS`): its one DNS server is 127.0.0.1 in its
own network namespace, where nothing answers. (On engine 20.10 the embedded DNS of an
internal network may otherwise forward outside names to the host's servers; this setting is
what stops it.)

The network and the proxy carry the sandbox's labels (owner and run), so the run's end
removes them with its containers (`remove_networks` after the containers) and the sweep of a
killed process's leftovers (`remove_orphaned_networks`) finds them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources

import docker
from docker.errors import ImageNotFound, NotFound

from toka_agents.config.models import DEFAULT_IMAGE
from toka_agents.errors import SandboxError
from toka_agents.sandbox.engine import ENGINE_ERRORS
from toka_agents.sandbox.owners import LABEL_OWNER, is_orphaned

LABEL_EGRESS = "org.toka-agents.egress"
"""Carried by the internal networks and proxy containers of limited-network sandboxes."""
PROXY_IMAGE = DEFAULT_IMAGE
"""The proxy needs Python: it runs in the Python sandbox image, whatever image the task uses."""
PROXY_PORT = 3128
PROXY_USER = "10001:10001"
PROXY_MEMORY = 64 * 1024 * 1024
PROXY_PIDS = 64
START_BOUND = 15.0
"""Seconds the proxy may take to listen before it counts as failed (it takes well under one)."""
REFUSED_DNS = {"dns": ["127.0.0.1"], "dns_opt": ["timeout:1", "attempts:1"]}
"""Host settings that refuse a container DNS: its one server is its own loopback (the engine's
embedded DNS forwards to a `--dns 127.0.0.x` inside the container's namespace), where
nothing listens, tried once for a second, so every lookup fails soon."""
NO_HOST_SIDE = {"com.docker.network.bridge.inhibit_ipv4": "true"}
"""Bridge options of the internal network: the host's side of the bridge gets no IPv4 address.
The engine still writes a gateway into the network's settings (and a default route via it into
each container), but no address of the host answers there, so a sandbox on the network reaches
the proxy and nothing else: not the host, nor any other network through it. (Its IPv6 is off:
the engine disables it in containers of a network without IPv6, and `NO_IPV6` says so again.)"""
NO_IPV6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
"""Sysctls of a limited-network sandbox: no IPv6 at all, so the bridge's link-local address on
the host's side is out of reach too."""
LIMITED_SANDBOX = {**REFUSED_DNS, "sysctls": NO_IPV6}
"""The host settings of a limited-network sandbox container, beside its internal network."""
PROXY_SOURCE = resources.files("toka_agents.sandbox").joinpath("egress_proxy.py").read_text()

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Egress:
    """A running proxy: the internal network a sandbox joins, and the proxy's URL on it."""

    network: str
    proxy_url: str
    container_id: str

    @property
    def env(self) -> dict[str, str]:
        """What points the code's HTTP clients at the proxy (both spellings: tools differ)."""
        names = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
        return {name: self.proxy_url for name in names}


def start_egress(
    client: docker.DockerClient, labels: dict[str, str], upstream: str, allow: Iterable[str]
) -> Egress:
    """Create an internal network and start a proxy on it and on `upstream` that lets through
    only `allow`. Raises `SandboxError` (one line) and leaves nothing behind when it cannot."""
    allow = sorted(allow)
    name = f"toka-egress-{secrets.token_hex(4)}"
    marked = {**labels, LABEL_EGRESS: "1"}
    api = client.api
    network_id = container_id = None
    try:
        network_id = api.create_network(
            name, driver="bridge", internal=True, options=NO_HOST_SIDE, labels=marked
        )["Id"]
        container_id = api.create_container(
            PROXY_IMAGE,
            command=["python3", "-I", "-c", PROXY_SOURCE, json.dumps(allow)],
            user=PROXY_USER,
            labels=marked,
            name=name,
            host_config=api.create_host_config(
                network_mode=upstream,
                mem_limit=PROXY_MEMORY,
                memswap_limit=PROXY_MEMORY,
                pids_limit=PROXY_PIDS,
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            ),
        )["Id"]
        api.connect_container_to_network(container_id, network_id)
        api.start(container_id)
        address = _wait_listening(client, container_id, name)
    except BaseException as exc:
        _remove_quietly(client, container_id, network_id)
        if isinstance(exc, SandboxError):
            raise
        if isinstance(exc, ImageNotFound):
            raise SandboxError(
                f"the egress proxy runs in {PROXY_IMAGE!r}, which is not on the Docker engine: "
                "build it with `toka sandbox build`"
            ) from exc
        if isinstance(exc, ENGINE_ERRORS):
            said = getattr(exc, "explanation", None) or str(exc)
            raise SandboxError(
                f"could not start the egress proxy on network {upstream!r}: {said.splitlines()[0][:300]}"
            ) from exc
        raise
    logger.info("egress proxy %s on %s allows %s", name, upstream, ", ".join(allow))
    return Egress(network=name, proxy_url=f"http://{address}:{PROXY_PORT}", container_id=container_id)


def _wait_listening(client: docker.DockerClient, container_id: str, network: str) -> str:
    """The proxy's address on `network`, once it says it listens."""
    deadline = time.monotonic() + START_BOUND
    while True:
        state = client.api.inspect_container(container_id)
        logs = client.api.logs(container_id).decode("utf-8", "replace")
        if "listening" in logs:
            return state["NetworkSettings"]["Networks"][network]["IPAddress"]
        if not state["State"]["Running"] or time.monotonic() > deadline:
            last = (logs.strip().splitlines() or ["no output"])[-1][:300]
            raise SandboxError(f"the egress proxy {network} did not start: {last}")
        time.sleep(0.05)


def _remove_quietly(
    client: docker.DockerClient, container_id: str | None, network_id: str | None
) -> None:
    if container_id is not None:
        with contextlib.suppress(*ENGINE_ERRORS):
            client.api.remove_container(container_id, force=True)
    if network_id is not None:
        with contextlib.suppress(*ENGINE_ERRORS):
            client.api.remove_network(network_id)


def remove_networks(client: docker.DockerClient, labels: dict[str, str]) -> int:
    """Remove the egress networks that carry all of `labels` (their containers must be gone
    first); return how many were removed. Never raises: a network left is logged, and the
    next sweep (`remove_orphaned_networks`) tries again."""
    wanted = [f"{LABEL_EGRESS}=1", *(f"{key}={value}" for key, value in labels.items())]
    return sum(_remove_network(client, n) for n in _networks(client, wanted))


def remove_orphaned_networks(client: docker.DockerClient) -> int:
    """Remove the egress networks (and proxies) of toka-agents processes on this host that
    were killed before they could clean up; return how many networks were removed."""
    removed = 0
    for network in _networks(client, [f"{LABEL_EGRESS}=1"]):
        owner = (network.get("Labels") or {}).get(LABEL_OWNER)
        if owner is None or not is_orphaned(owner):
            continue
        filters = {"label": [f"{LABEL_EGRESS}=1", f"{LABEL_OWNER}={owner}"]}
        with contextlib.suppress(*ENGINE_ERRORS):
            for container in client.api.containers(all=True, filters=filters):
                client.api.remove_container(container["Id"], force=True)
        removed += _remove_network(client, network)
    return removed


def _networks(client: docker.DockerClient, labels: list[str]) -> list[dict]:
    try:
        return client.api.networks(filters={"label": labels})
    except ENGINE_ERRORS as exc:
        logger.warning("could not list egress networks: %s", exc)
        return []


def _remove_network(client: docker.DockerClient, network: dict) -> bool:
    try:
        client.api.remove_network(network["Id"])
        return True
    except NotFound:
        return False
    except ENGINE_ERRORS as exc:
        logger.warning("could not remove egress network %s: %s", network.get("Name"), exc)
        return False
