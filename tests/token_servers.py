"""HTTP servers that sandboxes try to reach: containers of a test's own on an internal Docker
network the test made (no way out), each serving one file that holds a token nobody else knows.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from own_runs import TEST_LABEL, THIS_SESSION

PORT = 8000
START_DEADLINE = 30.0


@dataclass(frozen=True)
class TokenServer:
    network: str
    host: str
    address: str
    token: str


@contextlib.contextmanager
def token_servers(docker_client, image: str, roles: Sequence[str]) -> Iterator[list[TokenServer]]:
    """One server per role, on one new internal network; all removed on the way out."""
    suffix = uuid.uuid4().hex[:8]
    name = f"toka-test-net-{suffix}"
    network = docker_client.networks.create(name, internal=True, labels={TEST_LABEL: THIS_SESSION})
    started = []
    try:
        for role in roles:
            token = uuid.uuid4().hex
            serve = (
                f"mkdir /tmp/site && echo {token} > /tmp/site/token.txt && "
                f"exec python3 -u -m http.server {PORT} --directory /tmp/site"
            )
            container = docker_client.containers.run(
                image,
                ["sh", "-c", serve],
                name=f"toka-test-{role}-{suffix}",
                detach=True,
                network=name,
                user="10001:10001",
                labels={TEST_LABEL: THIS_SESSION},  # not a toka-agents container: removed below
            )
            started.append((container, token))
        yield [_serving(container, token, name) for container, token in started]
    finally:
        for container, _ in started:
            container.remove(force=True)
        network.remove()


def _serving(container, token: str, network: str) -> TokenServer:
    deadline = time.monotonic() + START_DEADLINE
    while b"Serving HTTP" not in container.logs():
        assert time.monotonic() < deadline, f"the HTTP server did not start: {container.logs()!r}"
        time.sleep(0.1)
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    return TokenServer(network=network, host=container.name, address=address, token=token)
