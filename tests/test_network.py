"""The `network` capability end to end: an orchestration's agents against an HTTP server in a
container of the test's own, on a Docker network the test made (`sandbox: {network: NAME}`)."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import Iterator

import pytest
from conftest import run_toka, write_config
from token_servers import TokenServer, token_servers

from toka_agents import run

runs_containers = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


@pytest.fixture
def http_server(docker_client, sandbox_image) -> Iterator[TokenServer]:
    with token_servers(docker_client, sandbox_image, ("http",)) as (server,):
        yield server


FETCH = """
import os, socket, sys, urllib.request
print("interfaces:", " ".join(sorted(os.listdir("/sys/class/net"))))
try:
    with urllib.request.urlopen("http://{host}:8000/token.txt", timeout=10) as answer:
        print("fetched:", answer.read().decode().strip())
except OSError as exc:
    print("fetch failed:", exc)
try:
    socket.create_connection(("{address}", 8000), timeout=10).close()
    print("connected")
except OSError as exc:
    print("connect failed:", exc.strerror)
"""


def orchestration(tmp_path, server: TokenServer):
    fetch = textwrap.indent(FETCH.format(host=server.host, address=server.address), " " * 12)
    # The same task twice: with the network capability and without it.
    agents = "".join(
        f"""
  - name: {agent}
    capabilities: {capabilities}
    tasks:
      - name: fetch
        code:
          language: python
          source: |
{fetch}"""
        for agent, capabilities in (("online", "[network]"), ("offline", "[]"))
    )
    return write_config(
        tmp_path,
        f"name: network-{uuid.uuid4().hex[:8]}\nsandbox: {{network: {server.network}}}\nagents:{agents}\n",
    )


@runs_containers
def test_an_agent_with_the_network_capability_reaches_a_server_on_the_configured_network(
    tmp_path, workspace_root, http_server
):
    result = run(orchestration(tmp_path, http_server), workspace_root=workspace_root)
    assert result.ok, result.state.message
    online, offline = (o.stdout_tail.splitlines() for o in result.outcomes)

    # By name: only a container on the test's own network can resolve and reach the server.
    assert online == [
        "interfaces: eth0 lo",
        f"fetched: {http_server.token}",
        "connected",
    ]
    # No network at all: only `lo`, and a connect fails at once (no route, not a timeout).
    assert offline[0] == "interfaces: lo"
    assert offline[1].startswith("fetch failed: <urlopen error [Errno -3] Temporary failure")
    assert offline[2] == "connect failed: Network is unreachable"


@runs_containers
def test_a_network_that_does_not_exist_fails_the_task_with_its_name(tmp_path, workspace_root):
    missing = f"toka-test-absent-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path,
        f"""\
name: no-such-network-{uuid.uuid4().hex[:8]}
sandbox: {{network: {missing}}}
agents:
  - name: online
    capabilities: [network]
    tasks: [{{name: fetch, code: {{language: shell, source: "true"}}}}]
""",
    )
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()
    [outcome] = result.outcomes
    assert outcome.status == "failed"
    assert outcome.message.startswith("sandbox error: ") and missing in outcome.message, outcome.message
    assert "\n" not in outcome.message


ONE_AGENT_EACH = """\
name: planned
{setting}
agents:
  - name: online
    capabilities: [network]
    tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
  - name: offline
    tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
"""


@pytest.mark.parametrize(
    ("setting", "network"), [("", "bridge"), ("sandbox: {network: team-net.2}", "team-net.2")]
)
def test_the_plan_gives_the_configured_network_to_network_capable_agents_only(
    tmp_path, setting, network
):
    path = write_config(tmp_path, ONE_AGENT_EACH.format(setting=setting))
    result = run_toka("plan", str(path), "--json")
    assert result.returncode == 0, result.stderr
    tasks = {
        task["id"]: (task["network"], task["docker_network"])
        for agent in json.loads(result.stdout)["agents"]
        for task in agent["tasks"]
    }
    assert tasks == {"online/t": (True, network), "offline/t": (False, None)}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "host",
            "network 'host' is refused: agents join a bridge network of their own, such as "
            "'bridge' (the default) or one made with `docker network create`",
        ),
        ("none", "network 'none' is refused: agents join a bridge network of their own"),
        (
            '"my net"',
            "'my net' is not a Docker network name: letters, digits, '_', '.' and '-', starting "
            "with a letter or digit",
        ),
        ("[bridge]", "Input should be a valid string"),
    ],
)
def test_validate_names_a_bad_network_setting(tmp_path, value, message):
    path = write_config(tmp_path, ONE_AGENT_EACH.format(setting=f"sandbox: {{network: {value}}}"))
    result = run_toka("validate", str(path))
    assert result.returncode == 1
    [problem, count] = result.stderr.splitlines()
    assert problem.startswith(f"{path}: sandbox.network: {message}"), problem
    assert count == "1 problem(s) found"


def test_the_schema_describes_the_sandbox_network():
    result = run_toka("schema")
    assert result.returncode == 0, result.stderr
    schema = json.loads(result.stdout)
    assert schema["properties"]["sandbox"]["default"]["network"] == "bridge"
    network = schema["$defs"]["SandboxSettings"]["properties"]["network"]
    assert network["default"] == "bridge" and "network capability" in network["description"]
