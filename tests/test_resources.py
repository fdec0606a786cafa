"""What a task used, measured in its container and not estimated (issue 13, point 3): peak
memory, cpu time, wall time, peak pids, bytes to stdout and stderr before any cut, bytes
written to the workspace; each cause of a failure named as what it is; and all of it in the
task's outcome, the run's summary table and one `toka.task.*` event per task."""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from conftest import write_config
from own_runs import flow_events

from toka_agents.sandbox import Sandbox

MB = 1024**2
pytestmark = pytest.mark.usefixtures("no_leftover_run_containers")


@pytest.fixture
def sandbox(docker_client):
    with Sandbox(docker_client, {"org.toka-agents.test": secrets.token_hex(4)}) as sandbox:
        yield sandbox


@pytest.fixture
def spec(spec):
    return functools.partial(spec, memory=128 * MB, cpus=1, output_limit=1 * MB)


USES_EVERYTHING = """
import os, subprocess, sys, time
sleepers = [subprocess.Popen(["sleep", "3"]) for _ in range(5)]   # 7 pids with us and PID 1
held = bytearray(40 * 1024 * 1024)                                 # 40MB resident
for i in range(0, len(held), 4096):
    held[i] = 1
end = time.process_time() + 0.4
while time.process_time() < end:                                   # 0.4s of cpu
    pass
with open("/workspace/three-mb", "wb") as out:                     # 3MB to the workspace
    out.write(os.urandom(3 * 1024 * 1024))
    out.flush()
    os.fsync(out.fileno())
sys.stdout.write("x" * (2 * 1024 * 1024))                          # 2MB to stdout, cap 1MB
sys.stderr.write("e" * 1000)
for sleeper in sleepers:
    sleeper.kill()
"""


def test_every_resource_is_measured(sandbox, spec):
    result = sandbox.run(spec(USES_EVERYTHING))
    print(result.model_dump(exclude={"stdout", "stderr", "stdout_tail", "stderr_tail"}))
    assert result.ok, result.failure
    assert 40 * MB < result.peak_memory <= 128 * MB
    assert result.cpu_seconds >= 0.4
    assert result.duration >= result.cpu_seconds - 0.1  # one core: no more cpu than time
    assert result.peak_pids >= 7
    assert result.refused_forks == 0
    assert result.stdout_bytes == 2 * MB and len(result.stdout) == 1 * MB  # counted before the cut
    assert result.stderr_bytes == 1000
    assert 3 * MB <= result.disk_written < 4 * MB
    assert result.image_digest and result.image_digest.startswith("sha256:")


def test_a_refused_fork_is_named_as_the_pids_limit(sandbox, spec):
    source = """
import subprocess
procs = []
try:
    while True:
        procs.append(subprocess.Popen(["sleep", "5"]))
except OSError as exc:
    print("refused after", len(procs), exc)
    raise SystemExit(3)
"""
    result = sandbox.run(spec(source, pids=12))
    print(result.failure, result.peak_pids, result.refused_forks)
    assert result.exit_code == 3
    assert result.refused_forks >= 1 and result.peak_pids == 12
    assert result.failure.startswith("exit code 3: refused after")
    assert result.causes == [f"pids limit 12 hit: {result.refused_forks} fork(s) refused"]


def test_a_timed_out_task_is_measured_too(sandbox, spec):
    spin = "import os\nos.fork()\nwhile True:\n    pass"  # two spinning processes
    result = sandbox.run(spec(spin, timeout=1.5))
    print(result.failure, result.cpu_seconds, result.peak_memory, result.peak_pids)
    assert result.failure == "timed out after 1.5s"
    assert result.cpu_seconds is not None and result.cpu_seconds > 0.1  # how much: the machine's load
    assert result.peak_memory is not None and result.peak_pids >= 3


def test_a_full_tmp_is_named(sandbox, spec):
    fill = "dd if=/dev/zero of=/tmp/fill bs=1M count=64"
    result = sandbox.run(spec(fill, language="shell", tmp_size=8 * MB))
    print(result.failure)
    assert result.tmp_full
    assert result.failure.startswith("/tmp full (8MB): exit code 1: ")
    assert "No space left on device" in result.stderr


@pytest.mark.usefixtures("prefect_api", "sandbox_image")
def test_each_task_emits_an_event_with_what_it_used_and_the_summary_shows_it(tmp_path, workspace_root):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from toka_agents import run

    name = f"usage-{uuid.uuid4().hex[:8]}"
    path = write_config(
        tmp_path,
        f"""\
name: {name}
defaults: {{capabilities: [filesystem-write]}}
agents:
  - name: writer
    tasks:
      - name: write
        code: {{language: shell, source: "head -c 2000000 /dev/zero > /workspace/w; echo done"}}
  - name: forker
    limits: {{pids: 10}}
    tasks:
      - name: fork
        code: {{language: shell, source: "for i in $(seq 30); do sleep 5 & done"}}
""",
    )
    since = datetime.now(UTC) - timedelta(seconds=5)
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_failed()
    events = flow_events(result.flow_run_id, since, "toka.task.", expected=2)
    seen = {event.resource.name: (event.event, event.payload) for event in events}
    print(seen)
    assert set(seen) == {"writer/write", "forker/fork"}

    kind, figures = seen["writer/write"]
    assert kind == "toka.task.completed"
    assert figures["status"] == "completed" and figures["exit_code"] == 0
    assert figures["stdout_bytes"] == 5 and figures["stderr_bytes"] == 0
    assert 2_000_000 <= figures["disk_written"] < 3_000_000
    assert figures["peak_memory"] > 0 and figures["cpu_seconds"] > 0 and figures["duration"] > 0
    assert figures["peak_pids"] >= 2
    assert figures["image"] == "toka-sandbox:1" and figures["image_digest"].startswith("sha256:")

    kind, figures = seen["forker/fork"]
    assert kind == "toka.task.failed"
    assert figures["peak_pids"] == 10
    # dash exits 2 when it cannot fork; the message names why it could not
    assert figures["exit_code"] == 2 and "pids limit 10 hit" in figures["message"]

    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"{name}-summary"])),
            limit=1,
        )
    rows = {row["task"]: row for row in json.loads(table.data)}
    print(rows)
    assert rows["writer/write"]["stdout / stderr"] == "5B / 0B"
    assert rows["writer/write"]["workspace written"].endswith("MB")
    assert rows["forker/fork"]["peak pids"] == "10"
