"""Issue 23's containment of stdio MCP servers, each seen from inside the server's own process
and against the real Docker engine and the session's Prefect server: the reference
`mcp-server-git` from the package index reads a repository of the seeded workspace; a server of an
agent with `network_allow` reaches only that host; its memory and processes count against the
agent's limits; other runs' workspaces and the host's files are not there; and the server
container of a `toka orchestrate` killed with SIGKILL is removed by the next run's sweep.

The probe server is the test's own (`PROBE`, written with the `mcp` SDK that every MCP image
holds, its source handed over in its env); the model is the scripted one of `llm_server`, on
127.0.0.1. The only other addresses reached are containers on a Docker network the test made
(`token_servers`).

Each was seen to fail without what it tests, by breaking `tool_servers.server_spec` on purpose:
no workspace for the server (git), no `network_allow` (egress), no memory or no pids limit
(limits), the runs' root mounted and the server run as root (workspaces), another owner's label
(the sweep).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import docker
import pytest
from conftest import REPO, TOKA, run_toka, write_config
from llm_server import scripted_server, tool_call
from own_runs import flow_run_id_of, remove_run_containers, run_containers
from test_egress import egress_networks
from test_flows import task_runs
from test_llm_runs import llm_config, prompts
from token_servers import token_servers

from toka_agents import run

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

MB = 1024**2
GIT_SERVER = "mcp-server-git==2026.10.19"
GIT_IMAGE = "toka-test-mcp-server-git:1"


@pytest.fixture(scope="session")
def git_image(docker_client, sandbox_image) -> str:
    """An image with `mcp-server-git` and the `git` binary it drives (GitPython refuses to
    import without one), built as a user builds it: `toka sandbox build --mcp ... --deb git`.
    Here, with no registry, the sandbox image's definition plus `git` is built offline once
    (kept while the definition is unchanged, by its digest label)."""
    built = run_toka(
        "sandbox", "build", "--mcp", GIT_SERVER, "--deb", "git", "--name", GIT_IMAGE, timeout=900
    )
    assert built.returncode == 0, built.stderr
    assert f"built {GIT_IMAGE} with {GIT_SERVER}" in built.stdout
    return GIT_IMAGE


PROBE = '''
import os
import pathlib
import socket
import subprocess
import time
import urllib.request

from mcp.server.mcpserver import MCPServer

server = MCPServer("probe")


@server.tool()
def interfaces() -> str:
    """The network interfaces this process sees."""
    return " ".join(sorted(os.listdir("/sys/class/net")))


@server.tool()
def fetch(url: str) -> str:
    """GET a URL, through the proxy the environment names if any."""
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return "fetched: " + answer.read().decode().strip()
    except OSError as exc:
        return f"failed: {exc}"


@server.tool()
def connect(address: str, port: int) -> str:
    """Open a TCP connection straight to an address, past any proxy."""
    try:
        socket.create_connection((address, port), timeout=3).close()
        return "connected"
    except OSError as exc:
        return f"failed: {exc.strerror or exc}"


@server.tool()
def cgroup_limits() -> str:
    """The memory and pids limits of this process's cgroup."""
    memory = pathlib.Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").read_text().strip()
    pids = pathlib.Path("/sys/fs/cgroup/pids/pids.max").read_text().strip()
    return f"memory {memory} pids {pids}"


@server.tool()
def spawn(count: int) -> str:
    """Start `count` sleeping processes at once; say how many started and what refused the rest."""
    started, refused = [], ""
    try:
        for _ in range(count):
            started.append(subprocess.Popen(["sleep", "60"]))
    except OSError as exc:
        refused = f", then refused: {exc.strerror}"
    finally:
        for process in started:
            process.kill()
            process.wait()
    return f"started {len(started)}{refused}"


@server.tool()
def hog(megabytes: int) -> str:
    """Hold `megabytes` of memory, every page touched."""
    block = bytearray(megabytes * 1024 * 1024)
    for at in range(0, len(block), 4096):
        block[at] = 1
    return f"held {megabytes} MB"


@server.tool()
def find(root: str, needle: str) -> str:
    """The files under `root` (not /proc, /sys or /dev) whose first MB holds `needle`."""
    hits = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = [
            name for name in subdirectories
            if os.path.join(directory, name) not in ("/proc", "/sys", "/dev")
        ]
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, "rb") as file:
                    if needle.encode() in file.read(1 << 20):
                        hits.append(path)
            except OSError:
                pass
    return " ".join(hits) or "nowhere"


@server.tool()
def exists(path: str) -> str:
    """Whether a path exists, as this process sees it."""
    return str(pathlib.Path(path).exists())


@server.tool()
def wait(seconds: float) -> str:
    """Say so in the workspace, then sleep."""
    pathlib.Path("/workspace/waiting").write_text(str(os.getpid()))
    time.sleep(seconds)
    return "waited"


server.run()
'''


def seeded(tmp_path: Path, monkeypatch, **files: str) -> Path:
    """A seed directory holding `files`; seeds may come from `tmp_path`."""
    seed = tmp_path / "seed"
    seed.mkdir()
    monkeypatch.setenv("TOKA_SEED_ROOTS", str(tmp_path))
    (seed / "README.txt").write_text("The workspace of a test run.\n")
    for name, content in files.items():
        (seed / name).write_text(content)
    return seed


def probe_config(tmp_path: Path, server, agents: str, *, name: str, seed: Path, top: str = "") -> Path:
    """An LLM orchestration of `agents` whose workspace is seeded from `seed` (plus `top`-level
    lines)."""
    config = llm_config(tmp_path, server, agents, name=name)
    config.write_text(
        config.read_text().replace("agents:", f"{top}workspace: {{from: {seed}}}\nagents:", 1)
    )
    return config


def probe_agent(image: str, *, name: str = "prober", extra: str = "") -> str:
    """An agent whose MCP server is `PROBE`, its source handed over in its env (so that it
    needs nothing of the workspace)."""
    command = json.dumps(["python3", "-c", "import os; exec(os.environ['PROBE_SOURCE'])"])
    return f"""
- name: {name}{extra}
  mcp_servers:
    - name: probe
      image: {image}
      command: {command}
      env: {{PROBE_SOURCE: {json.dumps(PROBE)}}}
  tasks: [{{name: look, instruction: Look around.}}]
"""


def tool_results(sent: list[list[dict]]) -> list[str]:
    """What the model read back of each tool call: the last tool message of every request after
    the first."""
    return [[m for m in request if m.get("role") == "tool"][-1]["content"] for request in sent[1:]]


def git(repository: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repository), "-c", "user.name=Test", "-c", "user.email=test@example.invalid",
         *args],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip()


def test_the_reference_git_server_reads_a_repository_of_the_workspace(
    tmp_path, workspace_root, api_key, git_image, monkeypatch
):
    seed = seeded(tmp_path, monkeypatch)
    repository = seed / "repo"
    repository.mkdir()
    git(repository, "init", "--quiet", "--initial-branch=main")
    (repository / "notes.txt").write_text("first line\n")
    git(repository, "add", "notes.txt")
    git(repository, "commit", "--quiet", "-m", "Add the notes")
    commit = git(repository, "rev-parse", "HEAD")
    (repository / "notes.txt").write_text("first line\nsecond line, not committed\n")
    (repository / "scratch.txt").write_text("untracked\n")

    agents = f"""
- name: reviewer
  mcp_servers:
    - {{name: git, image: {git_image}, command: [python3, -m, mcp_server_git]}}
  tasks: [{{name: review, instruction: Say what the repository holds.}}]
"""
    script = (
        tool_call("git__git_status", repo_path="/workspace/repo"),
        tool_call("git__git_log", repo_path="/workspace/repo", max_count=5),
        tool_call("git__git_diff_unstaged", repo_path="/workspace/repo"),
        # The host's own repository (this checkout) is not in the sandbox.
        tool_call("git__git_status", repo_path=str(REPO)),
        tool_call("finish", success=True, summary="One commit, one change, one new file."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = probe_config(tmp_path, server, agents, name="mcp-git", seed=seed)
        result = run(config, workspace_root=workspace_root)
        sent = prompts(server)
        offered = {t["function"]["name"]: t for t in server.requests[0].body["tools"]}
    assert result.ok, result.state.message
    assert {"git__git_status", "git__git_log", "git__git_diff_unstaged"} <= set(offered)
    assert "repo_path" in offered["git__git_log"]["function"]["parameters"]["properties"]

    status, log, diff, host = tool_results(sent)
    assert status.startswith("Repository status:\nOn branch main\n"), status
    assert "modified:   notes.txt" in status and "scratch.txt" in status
    assert f"Commit: {commit}" in log and "Message: Add the notes" in log
    assert log.count("Commit: ") == 1
    assert "-first line" not in diff
    assert "+second line, not committed" in diff and " first line" in diff
    assert "scratch.txt" not in diff  # untracked: not a change git diffs
    assert host.startswith("error: ") and "Repository status" not in host, host
    names = {r.name for r in task_runs(result.flow_run_id).values()}
    assert "reviewer/review · git__git_diff_unstaged 1" in names


def test_a_server_of_a_limited_agent_reaches_only_its_listed_host(
    tmp_path, workspace_root, api_key, time_image, sandbox_image, docker_client, monkeypatch
):
    seed = seeded(tmp_path, monkeypatch)
    with token_servers(docker_client, sandbox_image, ("listed", "unlisted")) as (listed, unlisted):
        agents = probe_agent(
            time_image,
            extra=f'\n  capabilities: [network-access-limited]\n  network_allow: ["{listed.host}:8000"]',
        )
        script = (
            tool_call("probe__interfaces"),
            tool_call("probe__fetch", url=f"http://{listed.host}:8000/token.txt"),
            tool_call("probe__fetch", url=f"http://{unlisted.host}:8000/token.txt"),
            tool_call("probe__connect", address=listed.address, port=8000),
            tool_call("probe__connect", address=unlisted.address, port=8000),
            tool_call("finish", success=True, summary="Looked."),
        )
        with scripted_server(*script, api_key=api_key) as server:
            config = probe_config(
                tmp_path,
                server,
                agents,
                name=f"mcp-egress-{uuid.uuid4().hex[:8]}",
                seed=seed,
                top=f"sandbox: {{network: {listed.network}, pool_size: 0}}\n",
            )
            result = run(config, workspace_root=workspace_root)
            sent = prompts(server)
    assert result.ok, result.state.message
    seen, allowed, refused, direct_listed, direct_unlisted = tool_results(sent)
    assert seen == "eth0 lo"
    # Through the run's egress proxy: the listed host answers, the other is refused by name.
    assert allowed == f"fetched: {listed.token}"
    assert refused == (
        f"failed: HTTP Error 403: {unlisted.host}:8000 is not in network_allow (toka egress proxy)"
    )
    # And no way around the proxy, to either.
    blocked = ("timed out", "No route to host", "Network is unreachable")
    assert direct_listed.startswith("failed: ") and direct_listed.endswith(blocked), direct_listed
    assert direct_unlisted.startswith("failed: ") and direct_unlisted.endswith(blocked)
    assert unlisted.token not in json.dumps(sent)
    # The run's end took the proxy and its internal network with the server's container.
    assert egress_networks(docker_client, result.flow_run_id) == []


def test_a_servers_memory_and_processes_count_against_the_agents_limits(
    tmp_path, workspace_root, api_key, time_image, monkeypatch
):
    seed = seeded(tmp_path, monkeypatch)
    agents = probe_agent(time_image, extra="\n  limits: {memory: 160MB, pids: 24}")
    script = (
        tool_call("probe__cgroup_limits"),
        tool_call("probe__spawn", count=64),
        tool_call("probe__hog", megabytes=16),
        tool_call("probe__hog", megabytes=400),
        tool_call("finish", success=True, summary="Pushed."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = probe_config(tmp_path, server, agents, name="mcp-limits", seed=seed)
        result = run(config, workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    limits, spawned, small, large = tool_results(sent)
    # The server's own threads count too: it gets fewer than 24 children, then a refusal.
    started = int(spawned.split()[1].rstrip(","))
    assert 0 < started < 24, spawned
    assert spawned.endswith(", then refused: Resource temporarily unavailable"), spawned
    assert small == "held 16 MB"
    # More than limits.memory: the kernel kills the server (SIGKILL, 128 + 9) and the call fails.
    assert large.startswith(
        "error: mcp server 'probe' was killed by the memory limit (limits.memory)"
    ), large
    # Both are the server container's cgroup limits, the agent's.
    assert limits == f"memory {160 * MB} pids 24"


def test_other_runs_workspaces_and_the_hosts_files_are_not_in_a_servers_sandbox(
    tmp_path, workspace_root, api_key, time_image, monkeypatch
):
    host_token, neighbour_token, own_token = (uuid.uuid4().hex for _ in range(3))
    # A file of the host's, beside the seed (outside every workspace).
    host_file = tmp_path / "host-secret.txt"
    host_file.write_text(host_token)
    # A neighbour run, in the same workspace root, leaves a file in its workspace.
    neighbour = write_config(
        tmp_path,
        f"name: mcp-neighbour\nagents:\n  - name: writer\n    capabilities: [filesystem-write]\n"
        f"    tasks: [{{name: write, code: {{language: shell, source: 'echo {neighbour_token} > "
        "secret.txt'}}]\n",
        name="neighbour.yaml",
    )
    before = run(neighbour, workspace_root=workspace_root)
    assert before.ok, before.state.message
    neighbour_file = before.workspace / "secret.txt"
    assert neighbour_file.read_text().strip() == neighbour_token

    seed = seeded(tmp_path, monkeypatch, **{"own.txt": own_token})
    script = (
        tool_call("probe__find", root="/", needle=own_token),
        tool_call("probe__find", root="/", needle=neighbour_token),
        tool_call("probe__find", root="/", needle=host_token),
        tool_call("probe__exists", path=str(neighbour_file)),
        tool_call("probe__exists", path=str(host_file)),
        tool_call("finish", success=True, summary="Looked."),
    )
    with scripted_server(*script, api_key=api_key) as server:
        config = probe_config(tmp_path, server, probe_agent(time_image), name="mcp-alone", seed=seed)
        result = run(config, workspace_root=workspace_root)
        sent = prompts(server)
    assert result.ok, result.state.message
    assert result.workspace.parent.parent == before.workspace.parent.parent  # neighbours indeed
    own, neighbours, hosts, neighbour_there, host_there = tool_results(sent)
    assert neighbours == "nowhere" and hosts == "nowhere"
    assert neighbour_there == "False" and host_there == "False"
    assert own == "/workspace/own.txt"  # the search does see what it may see


KILL_BOUND = 60.0
"""Seconds the next run (its start's sweep included) may take to leave nothing of the killed one."""


@pytest.mark.alone  # its orphans must wait for its own sweep
def test_the_server_container_of_a_runner_killed_outright_is_removed_by_the_next_run(
    tmp_path, workspace_root, api_key, time_image, docker_client, prefect_api, monkeypatch
):
    seed = seeded(tmp_path, monkeypatch)
    name = f"mcp-killed-{uuid.uuid4().hex[:8]}"
    agents = probe_agent(time_image, extra="\n  capabilities: [filesystem-write]")
    with scripted_server(tool_call("probe__wait", seconds=600), api_key=api_key) as server:
        config = probe_config(tmp_path, server, agents, name=name, seed=seed)
        process = subprocess.Popen(
            [TOKA, "orchestrate", str(config), "--workspace-dir", str(workspace_root)],
            env={**os.environ, "PREFECT_API_URL": prefect_api},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        flow_run_id = None
        try:
            deadline = time.monotonic() + 120
            while not list(workspace_root.glob("*/workspace/waiting")):
                assert process.poll() is None, f"toka orchestrate ended early: {process.returncode}"
                assert time.monotonic() < deadline, "the server's tool call never started"
                time.sleep(0.1)
            flow_run_id = flow_run_id_of(name)
            servers = [
                c for c in run_containers(docker_client, flow_run_id) if is_server(docker_client, c)
            ]
            assert len(servers) == 1, servers
            assert docker_client.api.inspect_container(servers[0])["State"]["Running"]
            process.send_signal(signal.SIGKILL)
            process.wait()
            assert is_server(docker_client, servers[0])  # nothing removed it on the way out

            # Nobody is left to remove it (it is still there): the next run on this host does,
            # before it starts.
            other = write_config(
                tmp_path,
                f"name: next-{uuid.uuid4().hex[:6]}\nagents:\n"
                "  - name: one\n    tasks: [{name: echo, code: {language: shell, source: 'echo hi'}}]\n",
                name="next.yaml",
            )
            started = time.monotonic()
            following = run(other, workspace_root=workspace_root)
            assert following.ok, following.state.message
            while (left := run_containers(docker_client, flow_run_id)) and (
                time.monotonic() - started < KILL_BOUND
            ):
                time.sleep(0.2)
            assert left == [], f"the killed run's containers outlived the next run: {left}"
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            if flow_run_id is not None:
                remove_run_containers(docker_client, flow_run_id)


def is_server(docker_client, container_id: str) -> bool:
    with contextlib.suppress(docker.errors.NotFound):
        name = docker_client.api.inspect_container(container_id)["Name"]
        return name.startswith("/toka-mcp-probe-")
    return False
