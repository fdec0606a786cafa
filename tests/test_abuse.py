"""Hostile code against the real engine (issue 13, point 6): each case is contained, its task
ends with the reason named, a neighbour agent of the same run completes unharmed, and no
container is left. One run holds every case and the neighbour, side by side; the 50-task
case is a run of its own. (The network cases are in test_network.py and test_egress.py.)"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest
from conftest import write_config
from own_runs import run_containers

pytestmark = pytest.mark.usefixtures("prefect_api", "sandbox_image", "no_leftover_run_containers")

SECRET = "host-secret-" + uuid.uuid4().hex

CASES = {
    # agent: (limits and capabilities, language, code)
    "fork-bomb": (
        "limits: {pids: 64, timeout: 20s}",
        "shell",
        "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived",
    ),
    "memory-bomb": (
        "limits: {memory: 64MB}",
        "python",
        "chunks = []\\nwhile True:\\n    chunks.append(bytearray(10 * 1024 * 1024))",
    ),
    "cpu-spin": ("limits: {timeout: 2s}", "python", "while True:\\n    pass"),
    "stdout-flood": ("{}", "shell", "head -c 314572800 /dev/zero"),
    "tmp-fill": ("{}", "shell", "dd if=/dev/zero of=/tmp/fill bs=1M count=200"),
    "workspace-fill": (
        "capabilities: [filesystem-write]",
        "shell",
        # most of the run's 64MB at once (blocks allocated, not written), then a write past the rest
        "fallocate -l 56M /workspace/fill && dd if=/dev/zero of=/workspace/more bs=1M count=32",
    ),
    "root-fs-write": ("{}", "shell", "touch /usr/bin/planted"),
    "host-read": ("{}", "shell", "cat {secret_file}"),
    "setuid-root": (
        "{}",
        "shell",
        "grep NoNewPrivs /proc/self/status; ls -l /usr/bin/su; echo id | /usr/bin/su root -c id",
    ),
}


def case_agents(secret_file: Path) -> str:
    lines = []
    for name, (settings, language, code) in CASES.items():
        code = code.replace("{secret_file}", str(secret_file))
        extra = "" if settings == "{}" else f"\n    {settings}"
        lines.append(
            f'  - name: {name}{extra}\n    tasks: [{{name: abuse, code: {{language: {language}, source: "{code}"}}}}]'
        )
    return "\n".join(lines)


def test_each_abuse_is_contained_named_and_its_neighbour_completes(
    tmp_path, workspace_root, docker_client
):
    from toka_agents import run

    secret_file = tmp_path / "host-only.txt"
    secret_file.write_text(SECRET)
    path = write_config(
        tmp_path,
        f"""\
name: abuse-{uuid.uuid4().hex[:8]}
max_concurrent_agents: {len(CASES) + 1}
sandbox: {{pool_size: 0}}
defaults: {{limits: {{workspace: 64MB}}}}  # the run's workspace
agents:
{case_agents(secret_file)}
  - name: neighbour
    capabilities: [filesystem-write]
    tasks:
      - name: compute
        code: {{language: python, source: "import time\\nfor i in range(20):\\n    print(i * i, flush=True)\\n    time.sleep(0.2)"}}
""",
    )
    result = run(path, workspace_root=workspace_root)
    outcomes = {outcome.agent: outcome for outcome in result.outcomes}
    for outcome in outcomes.values():
        print(f"{outcome.agent}: {outcome.status}: {outcome.message}")
    try:
        neighbour = outcomes["neighbour"]
        assert neighbour.status == "completed", neighbour.message
        assert neighbour.stdout_tail == "".join(f"{i * i}\n" for i in range(20))

        def ended(agent: str) -> tuple[str, str]:
            return outcomes[agent].status, outcomes[agent].message

        status, message = ended("fork-bomb")
        assert "pids limit 64 hit" in message and outcomes["fork-bomb"].peak_pids == 64
        assert "survived" not in outcomes["fork-bomb"].stdout_tail or status == "completed"

        assert ended("memory-bomb") == ("failed", "killed: memory limit 64MB exceeded")
        assert ended("cpu-spin") == ("failed", "timed out after 2s")

        status, message = ended("stdout-flood")
        assert status == "completed" and message.endswith("(stdout cut at 1MB of 300MB)")
        assert outcomes["stdout-flood"].stdout_bytes == 300 * 1024**2

        status, message = ended("tmp-fill")
        assert status == "failed"
        assert message.startswith("/tmp full (64MB): exit code 1: ")
        assert "No space left on device" in outcomes["tmp-fill"].stderr_tail

        status, message = ended("workspace-fill")
        assert status == "failed"
        assert message.startswith("workspace full (64MB): exit code 1: ")
        assert "No space left on device" in outcomes["workspace-fill"].stderr_tail
        assert 1 * 1024**2 < outcomes["workspace-fill"].disk_written <= 32 * 1024**2

        assert ended("root-fs-write") == (
            "failed",
            "exit code 1: touch: cannot touch '/usr/bin/planted': Read-only file system",
        )
        assert ended("host-read") == (
            "failed",
            f"exit code 1: cat: {secret_file}: No such file or directory",
        )
        status, message = ended("setuid-root")
        assert status == "failed" and message.startswith("exit code 1: ")
        assert "NoNewPrivs:\t1" in outcomes["setuid-root"].stdout_tail  # setuid bits do nothing
        assert SECRET not in "".join(o.stdout_tail + o.stderr_tail for o in outcomes.values())
        assert result.state.is_failed()
        assert run_containers(docker_client, result.flow_run_id) == []
    finally:
        if result.workspace is not None:  # a 1GB file: not for pytest's kept temp directories
            shutil.rmtree(result.workspace, ignore_errors=True)


def test_fifty_tasks_at_once_with_a_pool_of_four(tmp_path, workspace_root, docker_client):
    from toka_agents import run

    agents = "\n".join(
        f'  - {{name: a{n:02d}, tasks: [{{name: t, code: {{language: shell, source: "echo $TOKA_AGENT"}}}}]}}'
        for n in range(50)
    )
    path = write_config(
        tmp_path,
        f"""\
name: fifty-{uuid.uuid4().hex[:8]}
max_concurrent_agents: 50
sandbox: {{pool_size: 4}}
agents:
{agents}
""",
    )
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_completed(), result.state.message
    assert sorted(o.stdout_tail for o in result.outcomes) == [f"a{n:02d}\n" for n in range(50)]
    assert len({o.task_id for o in result.outcomes}) == 50
    assert run_containers(docker_client, result.flow_run_id) == []
