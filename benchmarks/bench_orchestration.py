"""Benchmarks of toka-agents' orchestration cost, in two parts.

Part 1, `--part plan` (no Prefect server): an orchestration of A agents x T shell tasks with
a realistic dependency graph is built with the config models, written as a YAML file, and
timed through `toka_agents.load`, `toka_agents.plan` and `toka_agents.compile_flow` at four
sizes (A/8, A/4, A/2, A agents), the load of the largest against a 1 s target and plan +
compile against another. Times are medians of several rounds, each after a full garbage
collection; the collection a load leaves for later is timed apart. The peak memory of
plan + compile comes from a separate tracemalloc round, so tracing does not slow the timings.

Part 2, `--part run` (starts its own Prefect servers): N no-op shell tasks (`true`) in N/4
agents of 4 tasks, odd agents requiring the agent before them, at most 2 at a time, run
through `toka_agents.run_plan`, alternating with a hand-written Prefect flow of the same
DAG that runs the same sandbox specs through the same `Sandbox`, once plain and once with
the same task run names and agent/workstream/priority tags as toka-agents. Whole flow calls
are timed by wall clock; the ratio toka/baseline is toka-agents' run overhead. It runs on a
Prefect server with SQLite (Prefect's default) and, where PostgreSQL is installed, on one
with PostgreSQL: on SQLite, task runs with tags that start at the same moment make the
server answer 503 ("database is locked", PrefectHQ/prefect#18934) and the client retries
after about 2 s.

    .venv/bin/python benchmarks/bench_orchestration.py [--part plan|run|all]
"""

from __future__ import annotations

import os
import tempfile

# Before Prefect is imported: keep its state out of ~/.prefect, and its console quiet
# (flow and task run logs still go to the API at INFO).
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="toka-bench-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_UI_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "WARNING"
os.environ.pop("PREFECT_API_URL", None)

import argparse  # noqa: E402
import contextlib  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TypeVar  # noqa: E402
from uuid import UUID  # noqa: E402

import yaml  # noqa: E402
from prefect import flow, get_client, runtime, tags, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId  # noqa: E402
from prefect.events.worker import EventsWorker  # noqa: E402
from prefect.futures import PrefectFuture  # noqa: E402
from prefect.logging.handlers import APILogWorker  # noqa: E402
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

import toka_agents  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support: shared set-up
from support import (  # noqa: E402
    postgres_binaries,
    postgres_cluster,
    start_prefect_server,
    stop_process_group,
)

from toka_agents.config.models import (  # noqa: E402
    Agent,
    CodeSource,
    CodeTask,
    Limits,
    Orchestration,
    SandboxSettings,
)
from toka_agents.executor import ExecutionContext, sandbox_spec  # noqa: E402
from toka_agents.orchestration.flow import RUN_LABEL  # noqa: E402
from toka_agents.planning import Plan, PlannedTask  # noqa: E402
from toka_agents.sandbox import (  # noqa: E402
    LABEL_MANAGED,  # noqa: E402
    Sandbox,
    SandboxResult,
    SandboxSpec,
    connect,
    create_workspace,
)

T = TypeVar("T")
PRIORITIES = ("critical", "high", "medium", "medium", "low")  # medium is the commonest
PLAN_ROUNDS = 5
PLAN_TARGET_SECONDS = 1.0
LOAD_TARGET_SECONDS = 1.0
RUN_TARGET_RATIO = 1.15
CONCURRENCY = 2
TASKS_PER_RUN_AGENT = 4
MIB = 1024**2


# --- Configs ---------------------------------------------------------------------------


def shell_task(name: str, limits: Limits | None = None) -> CodeTask:
    return CodeTask(
        name=name, code=CodeSource(language="shell", source="true"), limits=limits or Limits()
    )


def plan_benchmark_config(agents: int, tasks_per_agent: int) -> Orchestration:
    """A agents x T tasks. Every tenth agent starts a chain; the others require one or two of
    the 20 agents before them. Priorities, workstreams, capabilities and limits vary."""
    rng = random.Random(agents * 1_000 + tasks_per_agent)
    built = []
    for i in range(agents):
        earlier = range(max(0, i - 20), i)
        required = [] if i % 10 == 0 else rng.sample(earlier, min(len(earlier), 1 + i % 2))
        built.append(
            Agent(
                name=f"agent-{i:05d}",
                description=f"Agent {i} of the benchmark",
                priority=rng.choice(PRIORITIES),
                workstream=f"stream-{i % 12}",
                requires=[f"agent-{j:05d}" for j in sorted(required)],
                capabilities=["filesystem-write"] if i % 4 == 0 else [],
                limits=Limits(memory="256MB") if i % 5 == 0 else Limits(),
                env={"STAGE": str(i % 3)},
                tasks=[
                    shell_task(f"step-{k}", Limits(timeout="2m") if k % 3 == 0 else None)
                    for k in range(tasks_per_agent)
                ],
            )
        )
    return Orchestration(name=f"bench-{agents}x{tasks_per_agent}", max_concurrent_agents=4, agents=built)


def run_benchmark_config(tasks: int, pool_size: int | None = None) -> Orchestration:
    """tasks/4 agents of 4 `true` tasks; odd agents require the agent before them. `pool_size`:
    the sandbox's warm pool (None: the default, `max_concurrent_agents`; 0: off)."""
    agents = [
        Agent(
            name=f"agent-{i:03d}",
            requires=[f"agent-{i - 1:03d}"] if i % 2 else [],
            tasks=[shell_task(f"step-{k}") for k in range(TASKS_PER_RUN_AGENT)],
        )
        for i in range(tasks // TASKS_PER_RUN_AGENT)
    ]
    return Orchestration(
        name="bench-run",
        max_concurrent_agents=CONCURRENCY,
        sandbox=SandboxSettings(pool_size=pool_size),
        agents=agents,
    )


def write_yaml(orchestration: Orchestration, directory: Path) -> Path:
    """The orchestration as a native config file, the form `toka_agents.load` reads."""
    document = orchestration.model_dump(mode="json", exclude_defaults=True, exclude={"sources"})
    path = directory / f"{orchestration.name}.yaml"
    path.write_text(yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=False))
    return path


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(header), *(len(row[i]) for row in rows)) for i, header in enumerate(headers)]
    for cells in (headers, ["-" * width for width in widths], *rows):
        line = "  ".join(cell.rjust(width) for cell, width in zip(cells, widths, strict=True))
        print(line.rstrip())


# --- Part 1: load, plan, compile -------------------------------------------------------


@dataclass
class PlanSize:
    tasks: int
    file_bytes: int
    load: float
    collect_after_load: float
    plan: float
    compile: float
    plan_and_compile: float
    peak_bytes: int

    @property
    def bytes_per_task(self) -> float:
        return self.peak_bytes / self.tasks


def timed_rounds(first: Callable[[], T], then: Callable[[T], object]) -> tuple[list[float], list[float]]:
    """The seconds of `first()` and of `then` on its result in each of the rounds, every round
    after a full garbage collection so that no round pays for the garbage of what ran before it."""
    firsts, thens = [], []
    for _ in range(PLAN_ROUNDS):
        gc.collect()
        started = time.perf_counter()
        result = first()
        first_done = time.perf_counter()
        then(result)
        firsts.append(first_done - started)
        thens.append(time.perf_counter() - first_done)
        del result
    return firsts, thens


def load_and_collect_seconds(path: Path) -> tuple[float, float]:
    """The median time of loading the file, and of the full garbage collection right after it.

    Loading pauses the cyclic collector (its objects hold no cycles), so the collection it
    would have run meanwhile is left for later: shown apart, so that no cost goes unseen."""
    loads, collections = timed_rounds(lambda: toka_agents.load(path), lambda _loaded: gc.collect())
    return statistics.median(loads), statistics.median(collections)


def measure_size(agents: int, tasks_per_agent: int, directory: Path) -> PlanSize:
    path = write_yaml(plan_benchmark_config(agents, tasks_per_agent), directory)
    load_seconds, collect_seconds = load_and_collect_seconds(path)
    orchestration = toka_agents.load(path)

    plan_times, compile_times = timed_rounds(
        lambda: toka_agents.plan(orchestration), toka_agents.compile_flow
    )

    gc.collect()
    tracemalloc.start()
    toka_agents.compile_flow(toka_agents.plan(orchestration))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    return PlanSize(
        tasks=agents * tasks_per_agent,
        file_bytes=path.stat().st_size,
        load=load_seconds,
        collect_after_load=collect_seconds,
        plan=statistics.median(plan_times),
        compile=statistics.median(compile_times),
        plan_and_compile=statistics.median(map(sum, zip(plan_times, compile_times, strict=True))),
        peak_bytes=peak,
    )


def part_plan(agents: int, tasks_per_agent: int) -> None:
    print(
        f"Part 1: load, plan and compile ({tasks_per_agent} shell tasks per agent, median of "
        f"{PLAN_ROUNDS} rounds; peak = tracemalloc peak of plan + compile)\n"
    )
    counts = sorted({max(1, agents // share) for share in (8, 4, 2, 1)})
    with tempfile.TemporaryDirectory(prefix="toka-bench-plan-") as directory:
        sizes = [measure_size(count, tasks_per_agent, Path(directory)) for count in counts]
    print_table(
        [
            "tasks",
            "MB",
            "load s",
            "then gc s",
            "plan s",
            "compile s",
            "plan+compile s",
            "peak MiB",
            "bytes/task",
        ],
        [
            [
                f"{size.tasks:,}",
                f"{size.file_bytes / 1e6:.1f}",
                f"{size.load:.3f}",
                f"{size.collect_after_load:.3f}",
                f"{size.plan:.3f}",
                f"{size.compile:.4f}",
                f"{size.plan_and_compile:.3f}",
                f"{size.peak_bytes / MIB:.1f}",
                f"{size.bytes_per_task:,.0f}",
            ]
            for size in sizes
        ],
    )
    smallest, largest = sizes[0], sizes[-1]
    ratio = largest.bytes_per_task / smallest.bytes_per_task
    growth = f"peak bytes per task, {largest.tasks:,} vs {smallest.tasks:,} tasks"
    print(f"\n{growth}: {ratio:.2f} (1.00 = linear)")
    for label, seconds in (("load", lambda size: size.load), ("plan", lambda size: size.plan)):
        per_task = seconds(largest) / largest.tasks / (seconds(smallest) / smallest.tasks)
        pair = f"{largest.tasks:,} vs {smallest.tasks:,} tasks"
        print(f"{label} time per task, {pair}: {per_task:.2f} (1.00 = linear)")
    verdict = "met" if largest.load < LOAD_TARGET_SECONDS else "MISSED"
    print(
        f"load of {largest.tasks:,} tasks ({largest.file_bytes / 1e6:.1f} MB): {largest.load:.3f} s "
        f"(target < {LOAD_TARGET_SECONDS:.0f} s: {verdict}; the collection it leaves for later: "
        f"{largest.collect_after_load:.3f} s)"
    )
    verdict = "met" if largest.plan_and_compile < PLAN_TARGET_SECONDS else "MISSED"
    print(
        f"plan+compile of {largest.tasks:,} tasks: {largest.plan_and_compile:.3f} s "
        f"(target < {PLAN_TARGET_SECONDS:.0f} s: {verdict})"
    )


# --- Part 2: the baseline, a hand-written Prefect flow ---------------------------------


@task(task_run_name="{label}", cache_policy=NO_CACHE)
def run_in_sandbox(label: str, sandbox: Sandbox, spec: SandboxSpec) -> SandboxResult:
    """One agent task in a fresh sandbox container; the task run fails when the code fails."""
    result = sandbox.run(spec)
    if not result.ok:
        raise RuntimeError(f"{label}: {result.failure}")
    return result


def submission_order(plan: Plan) -> list[tuple[PlannedTask, list[str]]]:
    """Every task with the ids of its upstream tasks, in a topological order by depth.

    The thread pool task runner waits for `wait_for` futures inside its worker threads, so
    submitting agent after agent leaves a worker blocked on a task queued just before it
    (about 30% slower here); shallowest first keeps both workers busy.
    """
    last_task: dict[str, str] = {}
    end_depth: dict[str, int] = {}
    entries: list[tuple[int, PlannedTask, list[str]]] = []
    for agent in plan.agents:  # wave order: required agents come first
        depth = max((end_depth[name] for name in agent.requires), default=0)
        upstream = [last_task[name] for name in agent.requires]
        for planned in agent.tasks:
            entries.append((depth, planned, upstream))
            depth, upstream = depth + 1, [planned.id]
        end_depth[agent.name], last_task[agent.name] = depth, agent.tasks[-1].id
    entries.sort(key=lambda entry: entry[0])  # stable: plan order within a depth
    return [(planned, upstream) for _, planned, upstream in entries]


@flow(name="bench-baseline", task_runner=ThreadPoolTaskRunner(max_workers=CONCURRENCY))
def baseline_flow(plan: Plan, workspace_root: Path, tagged: bool = False) -> None:
    """The plan's DAG written by hand: one task run per agent task, the same sandbox specs,
    and, if `tagged`, the same agent/workstream/priority tags as toka-agents puts on them."""
    run_id = str(runtime.flow_run.id)
    labels = {RUN_LABEL: run_id}
    workspace = create_workspace(workspace_root, f"baseline-{run_id}")
    context = ExecutionContext(sandbox=None, workspace=workspace, run_id=run_id, labels=labels)
    sandbox = Sandbox(connect(), labels, pool_size=plan.pool_size)  # the same pool as toka-agents
    futures: dict[str, PrefectFuture[SandboxResult]] = {}
    agents = {agent.name: agent for agent in plan.agents}
    for planned, upstream in submission_order(plan):
        agent = agents[planned.agent]
        labels = (f"agent:{agent.name}", f"workstream:{agent.workstream}", f"priority:{agent.priority}")
        with tags(*(labels if tagged else ())):
            futures[planned.id] = run_in_sandbox.submit(
                planned.id,
                sandbox,
                sandbox_spec(planned, context),
                wait_for=[futures[i] for i in upstream],
            )
    try:
        for future in futures.values():
            future.result()
    finally:
        sandbox.close()


# --- Part 2: measuring -----------------------------------------------------------------


def run_toka(plan: Plan, workspace_root: Path) -> UUID:
    result = toka_agents.run_plan(plan, toka_agents.RunOptions(workspace_root=workspace_root))
    if not result.ok or result.flow_run_id is None:
        raise RuntimeError(f"toka-agents run failed: {result.state.message}")
    return result.flow_run_id


def run_baseline(plan: Plan, workspace_root: Path, tagged: bool = False) -> UUID:
    state = baseline_flow(plan, workspace_root, tagged, return_state=True)
    flow_run_id = state.state_details.flow_run_id
    if not state.is_completed() or flow_run_id is None:
        raise RuntimeError(f"baseline run failed: {state.message}")
    return flow_run_id


class RetryCounter(logging.Handler):
    """Counts API requests the Prefect client retried; it waits about 2 s before a first retry."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        client_logger = logging.getLogger("prefect.client")  # logs its retries at DEBUG
        client_logger.setLevel(logging.DEBUG)
        client_logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if "Another attempt will be made" in record.getMessage():
            self.count += 1


@dataclass
class Measured:
    seconds: float
    retries: int
    flow_run_id: UUID


def measure(
    run: Callable[[Plan, Path], UUID], plan: Plan, root: Path, retries: RetryCounter
) -> Measured:
    """One whole flow call by wall clock, and how many API requests it retried."""
    retries.count = 0
    started = time.perf_counter()
    flow_run_id = run(plan, root)
    return Measured(time.perf_counter() - started, retries.count, flow_run_id)


@contextlib.contextmanager
def prefect_server(database_url: str | None = None) -> Iterator[str]:
    """A `prefect server start` subprocess on a free local port; this process uses its API.
    Its database is SQLite in PREFECT_HOME unless `database_url` names another."""
    env = {} if database_url is None else {"PREFECT_API_DATABASE_CONNECTION_URL": database_url}
    log_path = Path(os.environ["PREFECT_HOME"]) / f"server-{len(env)}-{time.monotonic_ns()}.log"
    server, url = start_prefect_server(log_path, env)
    try:
        # No flow run heartbeats: their thread sleeps in 1 s steps and is joined when a flow
        # call ends, which rounds every flow call of either kind up to a whole second.
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            try:
                yield url
            finally:
                # Send queued logs and events while the server is still there to take them.
                APILogWorker.drain_all(timeout=10)
                EventsWorker.drain_all(timeout=10)
    finally:
        stop_process_group(server)


def task_run_count(flow_run_id: UUID, expected: int, limit: float = 15) -> int:
    """Task runs the server holds for a flow run, waiting a little for state events to land."""
    deadline = time.monotonic() + limit
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if len(runs) >= expected or time.monotonic() > deadline:
                return len(runs)
            time.sleep(0.5)


def leftover_containers() -> int:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={LABEL_MANAGED}=1"],
        capture_output=True,
        text=True,
        check=True,
    )
    return len(listed.stdout.split())


def part_run(tasks: int, repeat: int, databases: Sequence[str], pool_size: int | None = None) -> None:
    plan = toka_agents.plan(run_benchmark_config(tasks, pool_size))
    warmup = toka_agents.plan(run_benchmark_config(2 * TASKS_PER_RUN_AGENT, pool_size))
    count = len(plan.tasks)
    print(
        f"Part 2: run overhead, {count} no-op shell tasks in {len(plan.agents)} agents "
        f"({len(plan.edges)} dependencies), concurrency {CONCURRENCY}, sandbox pool "
        f"{plan.pool_size or 'off'}, {repeat} alternating runs of each flow\n"
    )
    retries = RetryCounter()
    bin_dir = postgres_binaries()
    backends: list[tuple[str, Callable[[], contextlib.AbstractContextManager[str | None]]]] = []
    if "sqlite" in databases:
        backends.append(("SQLite", lambda: contextlib.nullcontext(None)))
    if "postgresql" in databases and bin_dir is None:
        print("PostgreSQL is not installed (apt-get install postgresql): skipping it\n")
    elif "postgresql" in databases:
        backends.append(("PostgreSQL", postgres_cluster))
    for backend, database in backends:
        with database() as database_url:
            run_on_backend(backend, database_url, plan, warmup, repeat, retries)
    print(f"\ncontainers left (label {LABEL_MANAGED}=1): {leftover_containers()}")


def run_on_backend(
    backend: str,
    database_url: str | None,
    plan: Plan,
    warmup: Plan,
    repeat: int,
    retries: RetryCounter,
) -> None:
    count = len(plan.tasks)
    flows: dict[str, Callable[[Plan, Path], UUID]] = {
        "toka-agents": run_toka,
        "baseline": run_baseline,
        "baseline+tags": lambda p, root: run_baseline(p, root, tagged=True),
    }
    measured: dict[str, list[Measured]] = {name: [] for name in flows}
    with (
        prefect_server(database_url) as url,
        tempfile.TemporaryDirectory(prefix="toka-bench-runs-") as root,
    ):
        print(f"Prefect server on {backend}: {url}")
        workspaces = Path(root)
        for run in flows.values():
            run(warmup, workspaces)
        for _ in range(repeat):
            for name, run in flows.items():
                measured[name].append(measure(run, plan, workspaces, retries))
        task_runs = {
            name: task_run_count(runs[-1].flow_run_id, count) for name, runs in measured.items()
        }

    medians = {name: statistics.median(m.seconds for m in runs) for name, runs in measured.items()}
    rows = [
        [
            str(i),
            *(f"{measured[name][i - 1].seconds:.2f}" for name in flows),
            *(str(measured[name][i - 1].retries) for name in flows),
        ]
        for i in range(1, repeat + 1)
    ]
    rows.append(["median", *(f"{medians[name]:.2f}" for name in flows), "", "", ""])
    print_table(["run", *(f"{name} s" for name in flows), *(f"{name} retries" for name in flows)], rows)
    print("(retries: API requests the Prefect client retried during that flow call, ~2 s wait each)")
    for baseline in ("baseline", "baseline+tags"):
        ratio = medians["toka-agents"] / medians[baseline]
        verdict = "met" if ratio <= RUN_TARGET_RATIO else "MISSED"
        overhead = 1000 * (medians["toka-agents"] - medians[baseline]) / count
        print(
            f"{backend}: toka-agents / {baseline}: {ratio:.3f} (target <= {RUN_TARGET_RATIO}: "
            f"{verdict}); {overhead:+.1f} ms per task"
        )
    print(
        f"{backend}: task runs in the last flow runs: "
        + ", ".join(f"{name} {n}" for name, n in task_runs.items())
        + f" (expected {count} each)\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("plan", "run", "all"), default="all")
    parser.add_argument("--agents", type=int, default=1000, help="agents of the largest size (part 1)")
    parser.add_argument("--tasks-per-agent", type=int, default=10, help="tasks of each agent (part 1)")
    parser.add_argument(
        "--run-tasks", type=int, default=40, help="tasks per run, a multiple of 4 (part 2)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="measured runs of each flow (part 2)")
    parser.add_argument(
        "--pool-size",
        type=int,
        default=None,
        help="warm sandbox containers, both flows (part 2; default: the concurrency; 0: off)",
    )
    parser.add_argument(
        "--databases",
        default="sqlite,postgresql",
        help="Prefect server databases to run on, comma-separated (part 2)",
    )
    args = parser.parse_args()
    if args.agents < 1 or args.tasks_per_agent < 1 or args.repeat < 1:
        parser.error("--agents, --tasks-per-agent and --repeat must be at least 1")
    if args.run_tasks < TASKS_PER_RUN_AGENT or args.run_tasks % TASKS_PER_RUN_AGENT:
        parser.error(f"--run-tasks must be a positive multiple of {TASKS_PER_RUN_AGENT}")
    try:
        if args.part in ("plan", "all"):
            part_plan(args.agents, args.tasks_per_agent)
        if args.part == "all":
            print("\n")
        if args.part in ("run", "all"):
            part_run(args.run_tasks, args.repeat, args.databases.split(","), args.pool_size)
    finally:
        shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)


if __name__ == "__main__":
    main()
