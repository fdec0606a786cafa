"""The warm pool of single-use sandbox containers, on the real engine: a claim runs the code in
a container started ahead of it, no container serves two tasks, the time limit counts from
the claim, the pool refills in the background, and a cancel, a run's end or a SIGKILL leaves
no pool container behind."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from conftest import write_config
from docker.errors import NotFound

from toka_agents import load, plan, run
from toka_agents.errors import SandboxError
from toka_agents.orchestration.flow import RUN_LABEL
from toka_agents.sandbox import Sandbox, SandboxCancelled, SandboxSpec, remove_orphans

MB = 1024**2
BOUND = 30.0
"""Seconds a behaviour may take (a pool filling, a container going) before a test calls it
missing; a working pool takes well under one."""
pytestmark = pytest.mark.usefixtures("sandbox_image", "no_leftover_containers")


def wait_until(check: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    deadline = time.monotonic() + bound
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {bound:.0f}s"
        time.sleep(0.05)


@pytest.fixture
def token() -> str:
    return secrets.token_hex(4)


@pytest.fixture
def make_sandbox(docker_client, token) -> Iterator[Callable[[int], Sandbox]]:
    made: list[Sandbox] = []

    def make(pool_size: int) -> Sandbox:
        made.append(Sandbox(docker_client, {"org.toka-agents.test": token}, pool_size=pool_size))
        return made[-1]

    yield make
    for sandbox in made:
        sandbox.close()


def labelled(docker_client, token: str) -> list[dict]:
    """This test's containers, running or not."""
    filters = {"label": [f"org.toka-agents.test={token}"]}
    return docker_client.api.containers(all=True, filters=filters)


def primed(sandbox: Sandbox, spec: SandboxSpec, ready: int) -> None:
    """Run `spec` once (the first claim creates its pool and runs cold) and wait until the
    pool holds `ready` containers."""
    first = sandbox.run(spec)
    assert first.ok and not first.warm, first
    wait_until(lambda: sandbox.warm_containers() >= ready, f"the pool never held {ready} containers")


def gone(docker_client, container_id: str) -> bool:
    try:
        docker_client.api.inspect_container(container_id)
    except NotFound:
        return True
    return False


def test_a_warm_claim_runs_the_code_and_its_container_is_gone_afterwards(
    make_sandbox, spec, docker_client, token
):
    sandbox = make_sandbox(1)
    primed(sandbox, spec("print('prime')"), ready=1)
    [waiting] = [c["Id"] for c in labelled(docker_client, token) if c["State"] == "running"]

    result = sandbox.run(spec("import os\nprint('warm', os.environ.get('TOKA_X'))", env={"TOKA_X": "1"}))
    print(result)
    assert result.ok, result.failure
    assert result.warm and result.container_id == waiting  # it ran in the container started before it
    assert result.stdout == "warm 1\n"
    wait_until(lambda: gone(docker_client, waiting), "the used container was not removed", bound=15)


def test_two_tasks_never_share_a_container(make_sandbox, spec):
    sandbox = make_sandbox(2)
    primed(sandbox, spec("print('prime')"), ready=2)
    first = sandbox.run(spec("open('/tmp/left-behind', 'w').write('secret')\nprint('wrote')"))
    second = sandbox.run(spec("import os\nprint(os.path.exists('/tmp/left-behind'))"))
    print(
        first.container_id[:12],
        first.warm,
        first.stdout,
        "|",
        second.container_id[:12],
        second.warm,
        second.stdout,
    )
    assert first.ok and second.ok, (first.failure, second.failure)
    assert first.warm and second.warm
    assert first.container_id != second.container_id
    assert second.stdout == "False\n"


def test_the_time_limit_counts_from_the_claim(make_sandbox, spec):
    sandbox = make_sandbox(1)
    primed(sandbox, spec("print('prime')"), ready=1)
    time.sleep(3)  # the waiting container is 3 s old: more than the task's whole limit
    result = sandbox.run(spec("import time\ntime.sleep(1.5)\nprint('done')", timeout=2))
    print(result.failure, result.warm, result.duration)
    assert result.warm
    assert result.ok, result.failure
    assert result.stdout == "done\n"


def test_pool_size_zero_starts_no_container_ahead_of_a_task(make_sandbox, spec, docker_client, token):
    sandbox = make_sandbox(0)
    since = int(time.time()) - 1
    results = [sandbox.run(spec("print(1)")) for _ in range(3)]
    time.sleep(1)  # what a pool would fill in meanwhile
    left = labelled(docker_client, token)
    until = int(time.time()) + 1
    filters = {"type": "container", "label": f"org.toka-agents.test={token}"}
    creates = [e for e in docker_client.events(since=since, until=until, filters=filters, decode=True)]
    creates = [e for e in creates if e["Action"] == "create"]
    print(f"{len(creates)} containers created for 3 tasks; {len(left)} exist after them")
    assert all(r.ok and not r.warm for r in results)
    assert left == []
    assert len(creates) == 3


def test_the_pool_refills_in_the_background(make_sandbox, spec):
    sandbox = make_sandbox(2)
    primed(sandbox, spec("print('prime')"), ready=2)
    used = [sandbox.run(spec("print(1)")) for _ in range(2)]  # empties the pool, quicker than it refills
    assert all(r.ok and r.warm for r in used)
    wait_until(lambda: sandbox.warm_containers() == 2, "the pool was not refilled")
    again = sandbox.run(spec("print(2)"))
    assert again.ok and again.warm
    assert len({r.container_id for r in [*used, again]}) == 3


@pytest.mark.parametrize("when", ["full", "filling"])
def test_after_a_cancel_no_pool_container_remains_or_starts_and_run_refuses(
    make_sandbox, spec, docker_client, token, when
):
    """`full`: the pool holds its containers; `filling`: its thread is making them."""
    sandbox = make_sandbox(3)
    since = int(time.time()) - 1
    if when == "full":
        primed(sandbox, spec("print('prime')"), ready=3)
    else:
        assert sandbox.run(spec("print('prime')")).ok  # the pool starts filling now
    sandbox.cancel()
    cancelled_at = time.time_ns()
    left = labelled(docker_client, token)
    time.sleep(1)  # a container a pool thread was still making would show up here
    left_later = labelled(docker_client, token)
    filters = {"type": "container", "label": f"org.toka-agents.test={token}"}
    events = docker_client.events(since=since, until=int(time.time()) + 1, filters=filters, decode=True)
    late_starts = [e for e in events if e["Action"] == "start" and e["timeNano"] > cancelled_at]
    print(
        f"left at cancel {len(left)}, a second later {len(left_later)}; starts after it {len(late_starts)}"
    )
    assert left == [] and left_later == []
    assert late_starts == []
    with pytest.raises(SandboxCancelled, match="cancelled"):
        sandbox.run(spec("print(1)"))


def test_a_cancel_kills_a_task_running_in_a_warm_container(make_sandbox, spec):
    sandbox = make_sandbox(1)
    primed(sandbox, spec("print('prime')"), ready=1)
    threading.Timer(1.0, sandbox.cancel).start()
    began = time.monotonic()
    result = sandbox.run(spec("import time\nprint('waiting', flush=True)\ntime.sleep(60)", timeout=20))
    took = time.monotonic() - began
    print(f"{result.failure} after {took:.1f}s, warm {result.warm}")
    assert result.warm
    assert result.cancelled and result.failure == "cancelled: the run was cancelled"
    assert took < 15  # the task would run to its 20 s limit


def test_the_task_env_reaches_the_code_and_not_the_containers_configuration(
    make_sandbox, spec, docker_client
):
    pooled, cold = make_sandbox(1), make_sandbox(0)
    primed(pooled, spec("print('prime')"), ready=1)
    source = "import os, time\nprint(os.environ['TOKA_TOKEN'], flush=True)\ntime.sleep(0.2)"
    for sandbox, expected_warm in ((pooled, True), (cold, False)):
        configured: list[str] = []

        def look(stream: str, data: bytes, sandbox=sandbox, configured=configured) -> None:
            [container_id] = sandbox._live
            configured.extend(docker_client.api.inspect_container(container_id)["Config"]["Env"] or [])

        result = sandbox.run(spec(source, env={"TOKA_TOKEN": "s3cret-value"}), on_output=look)
        print(result.warm, result.stdout, configured)
        assert result.ok and result.warm is expected_warm, result.failure
        assert result.stdout == "s3cret-value\n"
        assert configured and not any("s3cret-value" in entry for entry in configured)


@pytest.mark.alone  # its orphans must wait for its own sweep
def test_pool_containers_of_a_sigkilled_process_are_swept(docker_client, sandbox_image, token):
    program = textwrap.dedent(
        f"""
        import time
        from toka_agents.sandbox import Sandbox, SandboxSpec, connect
        spec = SandboxSpec(image={sandbox_image!r}, language="python", source="print(1)",
                           memory=64 * 2**20, cpus=0.5, pids=64, timeout=10)
        sandbox = Sandbox(connect(), {{"org.toka-agents.test": {token!r}}}, pool_size=2)
        sandbox.run(spec)
        while sandbox.warm_containers() < 2:
            time.sleep(0.05)
        print("ready", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        waiting = labelled(docker_client, token)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        removed = remove_orphans(docker_client, {"org.toka-agents.test": token})  # only ours
        print(f"{len(waiting)} pool containers before the SIGKILL; swept {len(removed)}")
        assert len(waiting) == 2
        assert {c["Id"] for c in waiting} <= set(removed)
        assert labelled(docker_client, token) == []
    finally:
        child.kill()
        for container in labelled(docker_client, token):
            docker_client.api.remove_container(container["Id"], force=True)


POOLED_RUN = """
name: pooled-{token}
max_concurrent_agents: 2
sandbox: {{pool_size: 2}}
agents:
  - name: first
    tasks:
{tasks}
  - name: second
    tasks:
{tasks}
"""


@pytest.mark.usefixtures("prefect_api")
def test_a_runs_pool_containers_carry_its_labels_and_go_when_it_ends(
    tmp_path, workspace_root, docker_client, token
):
    tasks = "\n".join(
        f"      - {{name: t{i}, code: {{language: shell, source: 'sleep 0.3; echo {i}'}}}}"
        for i in range(6)
    )
    path = write_config(tmp_path, POOLED_RUN.format(token=token, tasks=tasks))
    assert plan(load(path)).pool_size == 2
    since = int(time.time()) - 1
    result = run(path, workspace_root=workspace_root)
    assert result.state.is_completed(), result.state.message
    run_id = result.flow_run_id
    filters = {"type": "container", "label": f"{RUN_LABEL}={run_id}"}
    events = list(
        docker_client.events(since=since, until=int(time.time()) + 1, filters=filters, decode=True)
    )
    warm_started = {
        e["id"]
        for e in events
        if e["Action"] == "start" and "toka-warm-" in e["Actor"]["Attributes"]["name"]
    }
    left = docker_client.api.containers(all=True, filters={"label": [f"{RUN_LABEL}={run_id}"]})
    print(f"{len(warm_started)} pool containers of the run started; {len(left)} left after it")
    assert warm_started  # pool containers carry the run's label
    assert left == []


def test_pool_size_comes_from_the_orchestration(tmp_path):
    def planned(settings: str, tasks: int = 5) -> int:
        listed = ", ".join(
            f"{{name: t{i}, code: {{language: shell, source: 'true'}}}}" for i in range(tasks)
        )
        config = f"name: sizes\nmax_concurrent_agents: 3\n{settings}agents:\n  - name: a\n    tasks: [{listed}]\n"
        return plan(load(write_config(tmp_path, config))).pool_size

    assert planned("") == 3
    assert planned("", tasks=1) == 1  # no more warm containers than tasks to claim them
    assert planned("sandbox: {pool_size: 0}\n") == 0
    assert planned("sandbox: {pool_size: 5}\n") == 5
    with pytest.raises(Exception, match="pool_size"):
        planned("sandbox: {pool_size: -1}\n")


def test_a_pool_that_cannot_make_containers_says_why_in_one_line_and_still_closes(
    make_sandbox, spec, caplog
):
    sandbox = make_sandbox(1)
    with pytest.raises(SandboxError, match="toka-no-such-image:0"):
        sandbox.run(spec("print(1)", image="toka-no-such-image:0"))  # cold, and its pool starts
    wait_until(lambda: "could not start a container" in caplog.text, "the pool's failure was not logged")
    assert sandbox.run(spec("print(1)")).ok  # another pool's task is unharmed
    began = time.monotonic()
    sandbox.close()
    took = time.monotonic() - began
    failures = [
        r.getMessage() for r in caplog.records if "could not start a container" in r.getMessage()
    ]
    print(failures[0], f"; closed in {took:.1f}s")
    assert failures[0].startswith("warm pool 1 could not start a container (next try in 0.5s): ")
    assert "sandbox image 'toka-no-such-image:0' is not on the Docker engine" in failures[0]
    assert all("\n" not in message for message in failures)
    assert took < 15  # the pool's retry pause (up to 10 s) does not hold the close up
