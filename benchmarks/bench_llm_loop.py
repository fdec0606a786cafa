"""Benchmark of the LLM agent loop's own cost per step, against a model that answers at once,
with the task's sandbox session on (the default) and off, side by side.

A scripted model (tests/llm_server.py, on 127.0.0.1, sending with TCP_NODELAY) asks for
`run_code(python, "print(1)")` S times and then calls `finish`. One step is one model call and the tool call it asks for,
so a task is S + 1 steps: S + 1 model calls and S + 1 sandbox runs (the S programs and the
workspace listing that opens the prompt; `finish` runs nothing). Six ways, alternating R
rounds so all see the same machine load; each loop is set against the bare calls of its own
mode (its floor):

- **bare, single-use**: S + 1 `Sandbox.run` of `print(1)` in the task's own container
  settings and the run's sandbox pool, one after another: the floor with sessions off.
- **bare, session**: S + 1 `session.run` of the same in one `Sandbox.session` of the same
  sandbox, from its opening (the container starts at the first call) to its close (the
  container removed): the floor with sessions on.
- **loop, plain runner, session / single-use**: `run_loop` with `run_directly`, the gateway
  over HTTP, the tools, and `run_code` through `SandboxUsage.run_code` within
  `session_for(True)` (one live container, opened and closed inside the timing, as a task's
  is) or `session_for(False)` (a container a call); no Prefect.
- **loop in Prefect, session / single-use**: the same task run by `toka_agents.run` against a
  `prefect server start` of its own, each model call and tool call a nested task run; the
  config as it is (sessions on, the default) or with `sandbox_session: false` on the agent.
  Its time is the task's loop time (`TaskOutcome.duration`, which holds the session's opening
  and close), not the flow's start and end.

It prints the medians, ms per step, the ratio of each loop to its floor and its ms per step
over it, and whether the loop in Prefect meets the target of each mode: at most +25 ms a step
over its floor (sessions on: over the bare session calls; off: over the bare single-use ones).

It then prints where the machine's CPU went (`cpu_use.py`, from /proc): per way, the mean CPU
ms a step of the runner, the Prefect server, its database, the Docker engine and the rest
(the containers, their shims), and how busy the cores were. Each way is measured from its
start until the machine is quiet again (a Prefect server records a run's events after the
run has ended), and the next way starts on a quiet machine.

    .venv/bin/python benchmarks/bench_llm_loop.py [--steps 20] [--repeat 3] [--database postgresql]
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # bench_orchestration's servers, llm_server

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402

# Imported before Prefect is: it keeps Prefect's state in a temporary home.
import bench_orchestration as servers  # noqa: E402
import cpu_use  # noqa: E402
from llm_server import ScriptedServer, scripted_server, tool_call  # noqa: E402
from support import postgres_binaries, postgres_cluster  # noqa: E402

import toka_agents  # noqa: E402
from toka_agents.config.models import LlmSettings  # noqa: E402
from toka_agents.executor import ExecutionContext, tool_spec  # noqa: E402
from toka_agents.llm import Gateway, TaskBrief, Toolbox, run_directly, run_loop  # noqa: E402
from toka_agents.planning import Plan  # noqa: E402
from toka_agents.sandbox import Sandbox, SandboxResult, SandboxSpec, connect, create_workspace  # noqa: E402
from toka_agents.tool_sandbox import SandboxUsage  # noqa: E402

LABELS = {"org.toka-agents.bench": "llm-loop"}
MODEL = "scripted-bench"
INSTRUCTION = "Print 1 with Python, again and again, then finish."
TARGET_MS = 25.0
"""The loop in Prefect's most ms a step over the bare calls of its mode."""
MODES = {True: "session", False: "single-use"}
BARE = {mode: f"bare, {name}" for mode, name in MODES.items()}
PLAIN = {mode: f"loop, plain runner, {name}" for mode, name in MODES.items()}
PREFECT = {mode: f"loop in Prefect, {name}" for mode, name in MODES.items()}


def script(steps: int) -> list:
    return [tool_call("run_code", language="python", source="print(1)")] * steps + [
        tool_call("finish", success=True, summary="printed 1")
    ]


@contextlib.contextmanager
def model(steps: int) -> Iterator[ScriptedServer]:
    """The scripted model, answering at once (with TCP_NODELAY, as a provider's server does)."""
    with scripted_server(*script(steps)) as server:
        yield server


def config_text(base_url: str, steps: int, session: bool = True) -> str:
    llm = {"provider": "openai", "model": MODEL, "base_url": base_url, "max_steps": steps + 1}
    return (
        f"name: bench-llm-loop\nllm: {json.dumps(llm)}\nagents:\n"
        "  - name: printer\n    capabilities: [filesystem-write]\n"
        + ("" if session else "    sandbox_session: false\n")
        + f"    tasks: [{{name: print, instruction: {json.dumps(INSTRUCTION)}}}]\n"
    )


def planned(directory: Path, steps: int) -> Plan:
    path = directory / "bench-llm-loop.yaml"
    path.write_text(config_text("http://127.0.0.1:9/v1", steps))
    return toka_agents.plan(toka_agents.load(path))


def checked(result: SandboxResult, way: str) -> None:
    if not result.ok or result.note:
        sys.exit(f"{way} call failed: {result.failure or result.note}")


def bare_sandbox(plan: Plan, spec: SandboxSpec, calls: int) -> float:
    client = connect()
    with Sandbox(client, LABELS, pool_size=plan.pool_size) as sandbox:
        began = time.perf_counter()
        for _ in range(calls):
            checked(sandbox.run(spec), "a bare sandbox")
        return time.perf_counter() - began


def bare_session(plan: Plan, spec: SandboxSpec, calls: int) -> float:
    client = connect()
    with Sandbox(client, LABELS, pool_size=plan.pool_size) as sandbox:
        began = time.perf_counter()
        with sandbox.session(spec) as session:
            for _ in range(calls):
                checked(session.run(spec), "a bare session")
        return time.perf_counter() - began


def plain_loop(plan: Plan, spec: SandboxSpec, steps: int, session: bool) -> float:
    with model(steps) as server:
        settings = LlmSettings(
            provider="openai", model=MODEL, base_url=server.openai_base_url, max_steps=steps + 1
        )
        client = connect()
        with Sandbox(client, LABELS, pool_size=plan.pool_size) as sandbox:
            usage = SandboxUsage(sandbox, spec)
            began = time.perf_counter()
            with usage.session_for(session), Gateway(settings) as gateway:
                result = run_loop(
                    TaskBrief(agent="printer", task="print", instruction=INSTRUCTION, may_write=True),
                    gateway.complete,
                    Toolbox(usage.run_code, may_write=True, session=usage.session is not None),
                    max_steps=steps + 1,
                    runner=run_directly,
                )
            took = time.perf_counter() - began
    if result.ended_by != "finish" or result.steps != steps + 1:
        sys.exit(
            f"the plain loop ended by {result.ended_by} after {result.steps} steps: {result.summary}"
        )
    return took


def prefect_loop(directory: Path, workspaces: Path, steps: int, session: bool) -> tuple[float, float]:
    """The task's loop time and the whole flow call's time."""
    with model(steps) as server:
        path = directory / "bench-llm-loop-run.yaml"
        path.write_text(config_text(server.openai_base_url, steps, session))
        began = time.perf_counter()
        result = toka_agents.run(path, workspace_root=workspaces)
        flow_seconds = time.perf_counter() - began
    [outcome] = result.outcomes
    if not result.ok or outcome.steps != steps + 1 or outcome.duration is None:
        sys.exit(f"the run in Prefect failed: {result.state.message}")
    return outcome.duration, flow_seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20, help="run_code steps before finish (S)")
    parser.add_argument("--repeat", type=int, default=3, help="measured rounds of each way (R)")
    parser.add_argument(
        "--database",
        choices=["sqlite", "postgresql"],
        default="postgresql" if postgres_binaries() else "sqlite",
        help="the Prefect server's database (default: postgresql where it is installed)",
    )
    args = parser.parse_args()
    if min(args.steps, args.repeat) < 1:
        parser.error("--steps and --repeat must be at least 1")
    steps, calls = args.steps + 1, args.steps + 1
    database: Callable[[], contextlib.AbstractContextManager[str | None]]
    if args.database == "postgresql":
        if postgres_binaries() is None:
            parser.error("PostgreSQL is not installed (apt-get install postgresql)")
        database = postgres_cluster
    else:
        database = lambda: contextlib.nullcontext(None)  # noqa: E731

    floor_of = {PLAIN[m]: BARE[m] for m in MODES} | {PREFECT[m]: BARE[m] for m in MODES}
    names = [BARE[False], BARE[True], PLAIN[False], PLAIN[True], PREFECT[True], PREFECT[False]]
    times: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    busy: dict[str, list[float]] = {name: [] for name in names}  # of the cores, while it ran
    flow_times: dict[bool, list[float]] = {mode: [] for mode in MODES}
    try:
        with (
            database() as database_url,
            servers.prefect_server(database_url),
            tempfile.TemporaryDirectory(prefix="toka-bench-llm-") as root,
        ):
            directory = Path(root)
            workspaces = directory / "runs"
            plan = planned(directory, args.steps)
            [task] = plan.tasks
            print(
                f"LLM loop: {steps} steps a task ({args.steps} run_code + finish), {calls} sandbox "
                f"runs; sandbox pool {plan.pool_size or 'off'}; sessions on and off; "
                f"{args.repeat} alternating rounds; Prefect server on {args.database}\n"
            )
            context = ExecutionContext(
                sandbox=None, workspace=create_workspace(workspaces, "bench"), labels=LABELS
            )
            spec = tool_spec(task, context, {}).model_copy(update={"source": "print(1)"})
            # Warm-up, unmeasured: the image's first start, Prefect's first flow and task runs.
            bare_sandbox(plan, spec, 2)
            bare_session(plan, spec, 2)
            for mode in MODES:
                plain_loop(plan, spec, 1, mode)
                prefect_loop(directory, workspaces, 1, mode)

            def measured(name: str, way: Callable[..., float], *args: object) -> None:
                cpu_use.settle()
                start = cpu_use.sample()
                times[name].append(way(*args))
                ran = cpu_use.sample()
                cpu_use.settle()
                cpu[name].append(start.until(cpu_use.sample()))
                busy[name].append((ran.busy - start.busy) / (ran.at - start.at) / cpu_use.CORES)

            def in_prefect(mode: bool) -> float:
                loop_seconds, flow_seconds = prefect_loop(directory, workspaces, args.steps, mode)
                flow_times[mode].append(flow_seconds)
                return loop_seconds

            for _ in range(args.repeat):
                measured(BARE[False], bare_sandbox, plan, spec, calls)
                measured(BARE[True], bare_session, plan, spec, calls)
                for mode in (False, True):
                    measured(PLAIN[mode], plain_loop, plan, spec, args.steps, mode)
                for mode in (True, False):
                    measured(PREFECT[mode], in_prefect, mode)
    finally:
        shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}

    def over(name: str) -> float:
        """ms per step of `name` over its floor."""
        return 1000 * (medians[name] - medians[floor_of[name]]) / steps

    rows = [
        [
            name,
            " ".join(f"{v:.2f}" for v in values),
            f"{medians[name]:.2f}",
            f"{1000 * medians[name] / steps:.1f}",
            floor_of[name].removeprefix("bare, ") if name in floor_of else "(floor)",
            f"{medians[name] / medians[floor_of[name]]:.2f}x" if name in floor_of else "",
            f"{over(name):+.1f}" if name in floor_of else "",
        ]
        for name, values in times.items()
    ]
    servers.print_table(
        [
            "way",
            "seconds per round",
            "median s",
            "ms per step",
            "floor",
            "/ floor",
            "ms per step over floor",
        ],
        rows,
    )
    print(
        f"\nbare session / bare single-use: {medians[BARE[True]] / medians[BARE[False]]:.2f}x; "
        f"loop in Prefect, session / single-use: "
        f"{medians[PREFECT[True]] / medians[PREFECT[False]]:.2f}x"
    )
    for mode in MODES:
        ms = over(PREFECT[mode])
        print(
            f"target, sessions {'on' if mode else 'off'}: loop in Prefect {ms:+.1f} ms a step over "
            f"{BARE[mode]} (<= +{TARGET_MS:.0f}): {'met' if ms <= TARGET_MS else 'MISSED'}"
        )
    print(
        f"\nCPU ms a step, mean over the rounds, each way from its start until the machine was "
        f"quiet again; cores busy: while the way ran, of {cpu_use.CORES}:"
    )
    servers.print_table(
        ["way", *cpu_use.PARTS, "all", "cores busy"],
        [
            [
                name,
                *(
                    f"{1000 * statistics.mean(used[part] for used in cpu[name]) / steps:.0f}"
                    for part in cpu_use.PARTS
                ),
                f"{1000 * statistics.mean(sum(used.values()) for used in cpu[name]) / steps:.0f}",
                f"{statistics.mean(busy[name]):.0%}",
            ]
            for name in names
        ],
    )
    for mode in MODES:
        print(
            f"whole flow call, {MODES[mode]} (start, the task, the summary, the end): median "
            f"{statistics.median(flow_times[mode]):.2f} s"
        )
    left = connect().api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in LABELS.items()]})
    print(f"containers left: {len(left)}")


if __name__ == "__main__":
    main()
