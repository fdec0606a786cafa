"""Benchmark of the LLM agent loop's own cost per step, against a model that answers at once.

A scripted model (tests/llm_server.py, on 127.0.0.1) asks for `run_code(python, "print(1)")`
S times and then calls `finish`. One step is one model call and the tool call it asks for,
so a task is S + 1 steps: S + 1 model calls and S + 1 sandbox runs (the S programs and the
workspace listing that opens the prompt; `finish` runs nothing). Three ways, alternating R
rounds so all see the same machine load:

- **bare sandbox**: S + 1 `Sandbox.run` of `print(1)` in the task's own container settings,
  one after another: what the steps cannot cost less than.
- **loop, plain runner**: `run_loop` with `run_directly`: the gateway over HTTP, the tools,
  the sandbox; no Prefect.
- **loop in Prefect**: the same task run by `toka_agents.run` against a `prefect server
  start` of its own, each model call and tool call a nested task run. Its time is the task's
  loop time (`TaskOutcome.duration`), not the flow's start and end.

It prints the medians, ms per step, and the ratio of each loop to the bare sandbox calls.

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
from collections.abc import Callable  # noqa: E402

# Imported before Prefect is: it keeps Prefect's state in a temporary home.
import bench_orchestration as servers  # noqa: E402
from llm_server import scripted_server, tool_call  # noqa: E402

import toka_agents  # noqa: E402
from toka_agents.config.models import LlmSettings  # noqa: E402
from toka_agents.executor import ExecutionContext, tool_spec  # noqa: E402
from toka_agents.llm import Gateway, TaskBrief, Toolbox, run_directly, run_loop, sandbox_runner  # noqa: E402
from toka_agents.planning import Plan  # noqa: E402
from toka_agents.sandbox import Sandbox, SandboxSpec, connect, create_workspace  # noqa: E402

LABELS = {"org.toka-agents.bench": "llm-loop"}
MODEL = "scripted-bench"
INSTRUCTION = "Print 1 with Python, again and again, then finish."


def script(steps: int) -> list:
    return [tool_call("run_code", language="python", source="print(1)")] * steps + [
        tool_call("finish", success=True, summary="printed 1")
    ]


def config_text(base_url: str, steps: int) -> str:
    llm = {"provider": "openai", "model": MODEL, "base_url": base_url, "max_steps": steps + 1}
    return (
        f"name: bench-llm-loop\nllm: {json.dumps(llm)}\nagents:\n"
        "  - name: printer\n    capabilities: [filesystem-write]\n"
        f"    tasks: [{{name: print, instruction: {json.dumps(INSTRUCTION)}}}]\n"
    )


def planned(directory: Path, steps: int) -> Plan:
    path = directory / "bench-llm-loop.yaml"
    path.write_text(config_text("http://127.0.0.1:9/v1", steps))
    return toka_agents.plan(toka_agents.load(path))


def bare_sandbox(plan: Plan, spec: SandboxSpec, calls: int) -> float:
    client = connect()
    with Sandbox(client, LABELS, pool_size=plan.pool_size) as sandbox:
        began = time.perf_counter()
        for _ in range(calls):
            result = sandbox.run(spec)
            if not result.ok:
                sys.exit(f"bare sandbox call failed: {result.failure}")
        return time.perf_counter() - began


def plain_loop(plan: Plan, spec: SandboxSpec, steps: int) -> float:
    with scripted_server(*script(steps)) as server:
        settings = LlmSettings(
            provider="openai", model=MODEL, base_url=server.openai_base_url, max_steps=steps + 1
        )
        client = connect()
        with Sandbox(client, LABELS, pool_size=plan.pool_size) as sandbox:
            began = time.perf_counter()
            with Gateway(settings) as gateway:
                result = run_loop(
                    TaskBrief(agent="printer", task="print", instruction=INSTRUCTION, may_write=True),
                    gateway.complete,
                    Toolbox(sandbox_runner(sandbox, spec), may_write=True),
                    max_steps=steps + 1,
                    runner=run_directly,
                )
            took = time.perf_counter() - began
    if result.ended_by != "finish" or result.steps != steps + 1:
        sys.exit(
            f"the plain loop ended by {result.ended_by} after {result.steps} steps: {result.summary}"
        )
    return took


def prefect_loop(directory: Path, workspaces: Path, steps: int) -> tuple[float, float]:
    """The task's loop time and the whole flow call's time."""
    with scripted_server(*script(steps)) as server:
        path = directory / "bench-llm-loop-run.yaml"
        path.write_text(config_text(server.openai_base_url, steps))
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
        default="postgresql" if servers.postgres_bin() else "sqlite",
        help="the Prefect server's database (default: postgresql where it is installed)",
    )
    args = parser.parse_args()
    if min(args.steps, args.repeat) < 1:
        parser.error("--steps and --repeat must be at least 1")
    steps, calls = args.steps + 1, args.steps + 1
    database: Callable[[], contextlib.AbstractContextManager[str | None]]
    if args.database == "postgresql":
        bin_dir = servers.postgres_bin()
        if bin_dir is None:
            parser.error("PostgreSQL is not installed (apt-get install postgresql)")
        database = lambda: servers.postgres_database(bin_dir)  # noqa: E731
    else:
        database = lambda: contextlib.nullcontext(None)  # noqa: E731

    times: dict[str, list[float]] = {"bare sandbox": [], "loop, plain runner": [], "loop in Prefect": []}
    flow_times: list[float] = []
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
                f"runs; sandbox pool {plan.pool_size or 'off'}; {args.repeat} alternating rounds; "
                f"Prefect server on {args.database}\n"
            )
            context = ExecutionContext(
                sandbox=None, workspace=create_workspace(workspaces, "bench"), labels=LABELS
            )
            spec = tool_spec(task, context, {}).model_copy(update={"source": "print(1)"})
            # Warm-up, unmeasured: the image's first start, Prefect's first flow and task runs.
            bare_sandbox(plan, spec, 2)
            plain_loop(plan, spec, 1)
            prefect_loop(directory, workspaces, 1)
            for _ in range(args.repeat):
                times["bare sandbox"].append(bare_sandbox(plan, spec, calls))
                times["loop, plain runner"].append(plain_loop(plan, spec, args.steps))
                loop_seconds, flow_seconds = prefect_loop(directory, workspaces, args.steps)
                times["loop in Prefect"].append(loop_seconds)
                flow_times.append(flow_seconds)
    finally:
        shutil.rmtree(os.environ["PREFECT_HOME"], ignore_errors=True)

    medians = {name: statistics.median(values) for name, values in times.items()}
    bare = medians["bare sandbox"]
    rows = [
        [
            name,
            " ".join(f"{v:.2f}" for v in values),
            f"{medians[name]:.2f}",
            f"{1000 * medians[name] / steps:.1f}",
            f"{medians[name] / bare:.2f}x",
            f"{1000 * (medians[name] - bare) / steps:+.1f}",
        ]
        for name, values in times.items()
    ]
    servers.print_table(
        ["way", "seconds per round", "median s", "ms per step", "/ bare", "ms per step over bare"], rows
    )
    print(
        f"\nwhole flow call (start, the task, the summary, the end): median "
        f"{statistics.median(flow_times):.2f} s"
    )
    left = connect().api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in LABELS.items()]})
    print(f"containers left: {len(left)}")


if __name__ == "__main__":
    main()
