"""Limited network (`network-access-limited` plus `network_allow`) end to end, against two HTTP
servers in containers on a Docker network the test made: the listed one answers through the
egress proxy, the unlisted one is refused by it, DNS is refused, and the sandbox has no route
around the proxy. No traffic goes anywhere but to the test's own containers and 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from conftest import write_config
from own_runs import TEST_LABEL, THIS_SESSION, run_containers
from token_servers import TokenServer, token_servers

from toka_agents import run, validate
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import remove_orphans
from toka_agents.sandbox.egress import LABEL_EGRESS

runs_containers = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")


@dataclass(frozen=True)
class Servers:
    network: str
    listed: TokenServer
    unlisted: TokenServer


@pytest.fixture
def servers(docker_client, sandbox_image) -> Iterator[Servers]:
    """Two token servers on a network of this test's own: one the config lists, one it does not."""
    with token_servers(docker_client, sandbox_image, ("listed", "unlisted")) as (listed, unlisted):
        yield Servers(network=listed.network, listed=listed, unlisted=unlisted)


PROBE = """
import http.client, os, socket, urllib.request
print("interfaces:", " ".join(sorted(os.listdir("/sys/class/net"))))
for role, host in (("listed", "{listed}"), ("unlisted", "{unlisted}")):
    try:
        with urllib.request.urlopen(f"http://{{host}}:8000/token.txt", timeout=10) as answer:
            print(f"{{role}} over http:", answer.read().decode().strip())
    except OSError as exc:
        print(f"{{role}} over http failed:", exc)
    proxy = urllib.parse.urlsplit(os.environ.get("HTTPS_PROXY", "http://127.0.0.1:9"))
    tunnel = http.client.HTTPConnection(proxy.hostname, proxy.port, timeout=10)
    tunnel.set_tunnel(host, 8000)
    try:
        tunnel.request("GET", "/token.txt")
        print(f"{{role}} over connect:", tunnel.getresponse().read().decode().strip())
    except OSError as exc:
        print(f"{{role}} over connect failed:", exc)
    finally:
        tunnel.close()
for name in ("example.com", "{unlisted}"):
    try:
        socket.getaddrinfo(name, 80)
        print(f"dns {{name}}: resolved")
    except OSError as exc:
        print(f"dns {{name}} failed:", exc.strerror)
for role, address in (("listed", "{listed_address}"), ("unlisted", "{unlisted_address}")):
    try:
        socket.create_connection((address, 8000), timeout=2).close()
        print(f"direct to {{role}}: connected")
    except OSError as exc:
        print(f"direct to {{role}} failed:", exc.strerror or exc)
"""


def orchestration(tmp_path, servers: Servers):
    probe = PROBE.format(
        listed=servers.listed.host,
        unlisted=servers.unlisted.host,
        listed_address=servers.listed.address,
        unlisted_address=servers.unlisted.address,
    )
    source = textwrap.indent(probe, " " * 12)
    return write_config(
        tmp_path,
        f"""\
name: egress-{uuid.uuid4().hex[:8]}
sandbox: {{network: {servers.network}, pool_size: 0}}
agents:
  - name: limited
    capabilities: [network-access-limited]
    network_allow: ["{servers.listed.host}:8000"]
    tasks:
      - name: probe
        code:
          language: python
          source: |
{source}
  - name: nothing-listed
    capabilities: [network-access-limited]
    tasks:
      - name: probe
        code:
          language: shell
          source: ls /sys/class/net | tr '\\n' ' '
""",
    )


def egress_networks(docker_client, run_id) -> list[str]:
    labels = [f"{LABEL_EGRESS}=1", f"{RUN_LABEL}={run_id}"]
    return [n["Name"] for n in docker_client.api.networks(filters={"label": labels})]


@runs_containers
def test_a_limited_agent_reaches_only_its_listed_host_through_the_proxy(
    tmp_path, workspace_root, servers, docker_client
):
    result = run(orchestration(tmp_path, servers), workspace_root=workspace_root)
    assert result.ok, result.state.message
    limited, nothing_listed = result.outcomes
    lines = limited.stdout_tail.splitlines()
    refusal = f"{servers.unlisted.host}:8000 is not in network_allow (toka egress proxy)"

    assert lines[0] == "interfaces: eth0 lo"
    # The listed server answers through the proxy, by plain HTTP and through a CONNECT tunnel.
    assert lines[1] == f"listed over http: {servers.listed.token}"
    assert lines[2] == f"listed over connect: {servers.listed.token}"
    # The unlisted one: the proxy refuses it (403, naming it), both ways.
    assert lines[3] == f"unlisted over http failed: HTTP Error 403: {refusal}"
    assert lines[4] == f"unlisted over connect failed: Tunnel connection failed: 403 {refusal}"
    # DNS is refused: no outside name, and not the unlisted server's either.
    assert lines[5] == "dns example.com failed: Temporary failure in name resolution"
    assert lines[6] == f"dns {servers.unlisted.host} failed: Temporary failure in name resolution"
    # No way around the proxy: the engine forwards nothing from the internal network.
    blocked = ("timed out", "No route to host", "Network is unreachable")
    assert lines[7].startswith("direct to listed failed: ") and lines[7].endswith(blocked), lines[7]
    assert lines[8].startswith("direct to unlisted failed: ") and lines[8].endswith(blocked), lines[8]
    assert servers.unlisted.token not in limited.stdout_tail

    # network-access-limited with nothing listed is no network at all, as without a capability.
    assert nothing_listed.stdout_tail.split() == ["lo"]

    # The run's end removed the proxy and the internal network with the sandbox containers.
    assert run_containers(docker_client, result.flow_run_id) == []
    assert egress_networks(docker_client, result.flow_run_id) == []


@runs_containers
def test_a_limited_agent_whose_upstream_network_does_not_exist_fails_naming_it(
    tmp_path, workspace_root, docker_client
):
    missing = f"toka-test-absent-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path,
        f"""\
name: egress-absent-{uuid.uuid4().hex[:8]}
sandbox: {{network: {missing}}}
agents:
  - name: limited
    capabilities: [network-access-limited]
    network_allow: [somewhere]
    tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
""",
    )
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()
    [outcome] = result.outcomes
    assert outcome.message == (
        f"sandbox error: could not start the egress proxy on network {missing!r}: "
        f"network {missing} not found"
    )
    assert run_containers(docker_client, result.flow_run_id) == []
    assert egress_networks(docker_client, result.flow_run_id) == []


KILLED_MIDWAY = """
import sys, time
from toka_agents.sandbox import Sandbox, SandboxSpec, connect
network, allowed, label, mark = sys.argv[1:]
sandbox = Sandbox(connect(), {label: mark})
spec = SandboxSpec(
    image="toka-sandbox:1", language="shell", source="true", memory=64 * 1024**2, cpus=0.5,
    pids=32, timeout=30, network=network, network_allow=(allowed,),
)
print("ran:", sandbox.run(spec).ok, flush=True)
time.sleep(600)
"""


@pytest.mark.alone  # its orphans must wait for its own sweep
@pytest.mark.usefixtures("sandbox_image")
def test_the_proxy_and_network_of_a_killed_process_are_swept(docker_client, servers):
    """A process SIGKILLed mid-run leaves its proxy and internal network: the next sweep (each
    run starts with one, as does `toka sandbox clean`) removes both."""
    mark = f"egress-sweep-{uuid.uuid4().hex[:8]}"
    labels = {"label": [f"{LABEL_EGRESS}=1", f"{TEST_LABEL}={mark}"]}
    allowed = f"{servers.listed.host}:8000"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MIDWAY, servers.network, allowed, TEST_LABEL, mark],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ran: True\n"
        # Its owner still runs, so no sweep touches them yet.
        assert len(docker_client.api.containers(all=True, filters=labels)) == 1
        assert len(docker_client.api.networks(filters=labels)) == 1
    finally:
        child.kill()
        child.wait()
        child.stdout.close()

    remove_orphans(docker_client, {TEST_LABEL: mark})

    assert docker_client.api.containers(all=True, filters=labels) == []
    assert docker_client.api.networks(filters=labels) == []


ONE_AGENT = """\
name: planned
sandbox: {{network: team-net}}
agents:
  - name: one
    capabilities: [{capabilities}]
    {allow}
    tasks: [{{name: t, code: {{language: shell, source: "true"}}}}]
"""


def test_the_plan_limits_the_network_to_the_allow_list(tmp_path):
    cases = [
        (
            "network-access-limited",
            '["api.example.com", "10.0.0.5:8000"]',
            ("api.example.com", "10.0.0.5:8000"),
        ),
        (
            "network-access",
            '["Api.Example.com"]',
            ("api.example.com",),
        ),  # the list is the narrower grant
        ("network-access-limited", None, None),
        ("network-access", None, None),
    ]
    found = []
    for number, (granted, allow, _) in enumerate(cases):
        path = write_config(
            tmp_path,
            ONE_AGENT.format(capabilities=granted, allow=f"network_allow: {allow}" if allow else ""),
            name=f"case{number}.yaml",
        )
        checked = validate([path])
        assert checked.ok, checked.issues
        [task] = checked.plan.tasks
        found.append((task.network, task.docker_network, task.network_allow))
    assert found == [
        (True, "team-net", cases[0][2]),
        (True, "team-net", cases[1][2]),
        (False, None, None),  # limited with nothing listed: no network at all
        (True, "team-net", None),  # full network, as before
    ]


def test_validate_names_a_bad_allow_list_entry(tmp_path):
    cases = [
        ('["http://api.example.com"]', "'http://api.example.com' is not a host to allow: a host name"),
        ('["api.example.com:99999"]', "'api.example.com:99999' is not a host to allow"),
        ('["-bad"]', "'-bad' is not a host to allow"),
        ("api.example.com", "Input should be a valid list"),
    ]
    for number, (value, message) in enumerate(cases):
        path = write_config(
            tmp_path,
            ONE_AGENT.format(capabilities="network-access-limited", allow=f"network_allow: {value}"),
            name=f"case{number}.yaml",
        )
        [problem] = [str(issue) for issue in validate([path]).issues]
        assert problem.startswith(f"{path}: agents.0.network_allow"), problem
        assert message in problem and "\n" not in problem, problem


ROUTES = r"""
import socket, struct
def address(hex_text):
    return socket.inet_ntoa(struct.pack("<I", int(hex_text, 16)))
for line in open("/proc/net/route").read().splitlines()[1:]:
    interface, destination, gateway = line.split()[:3]
    print("route", interface, address(destination), address(gateway))
print("ipv6", open("/proc/sys/net/ipv6/conf/all/disable_ipv6").read().strip(),
      len(open("/proc/net/if_inet6").read().split()))
"""


def host_ipv4_addresses(interface: str | None = None) -> set[str]:
    """This machine's IPv4 addresses (of one interface): read from its own configuration."""
    argv = ["ip", "-4", "-o", "addr", "show", *(["dev", interface] if interface else [])]
    listed = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return {line.split()[3].split("/")[0] for line in listed.splitlines()}


@pytest.mark.usefixtures("sandbox_image")
def test_the_limited_network_has_no_way_to_the_host(docker_client, servers):
    """The internal network's gateway, where a limited sandbox's default route points, is no
    address of the host's: the host's side of its bridge has none. Shown from the configuration
    inside the container and on the host, with no traffic sent anywhere."""
    from toka_agents.sandbox import Sandbox, SandboxSpec
    from toka_agents.sandbox.owners import LABEL_OWNER, current_owner

    spec = SandboxSpec(
        image="toka-sandbox:1", language="python", source=ROUTES, memory=64 * 1024**2, cpus=0.5,
        pids=32, timeout=30, network=servers.network, network_allow=(f"{servers.listed.host}:8000",),
    )  # fmt: skip
    with Sandbox(docker_client, {TEST_LABEL: THIS_SESSION}) as sandbox:
        result = sandbox.run(spec)
        assert result.ok, result.failure
        labels = [f"{LABEL_EGRESS}=1", f"{LABEL_OWNER}={current_owner()}"]
        [network] = docker_client.api.networks(filters={"label": labels})
        network = docker_client.api.inspect_network(network["Id"])
        gateway = network["IPAM"]["Config"][0]["Gateway"]
        bridge = f"br-{network['Id'][:12]}"
        # The container: one interface on the internal network, its default route via the
        # gateway; no IPv6 at all.
        routes = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("route")]
        assert ["eth0", "0.0.0.0", gateway] in routes, routes
        assert all(via in ("0.0.0.0", gateway) for _, _, via in routes)
        assert "ipv6 1 0" in result.stdout.splitlines()
        # The host: nothing holds the gateway address, its side of the bridge has no address.
        assert host_ipv4_addresses(bridge) == set()
        assert gateway not in host_ipv4_addresses()
