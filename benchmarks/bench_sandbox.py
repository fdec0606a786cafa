"""Benchmark of the sandbox's warm pool against a cold container per task, in one run.

Part 1, latency: `print(1)` run N times in a task's live session (one container serving every
call, `Sandbox.session`), through `Sandbox.run` from a pool whose container is ready (the pool
refills between calls, untimed), and in a fresh container each (`pool_size=0`), the three
alternating so all see the same machine load. It prints p50 and p95 of each and the ratios
(targets: session p50 <= 10 ms; warm p50 <= 25 ms, and at least 8x faster than cold).

Part 2, throughput: T small code tasks (a few lines of Python that write and read a file in
/tmp) with C at once, through a pool of C and through cold containers; tasks per second of
each, the ratio, and how many tasks found a warm container ready.

Both use the orchestration's container settings: the `toka-sandbox:1` image, 64 MB, half a
core, 64 pids, a writable workspace bind mount, no network.

    .venv/bin/python benchmarks/bench_sandbox.py [--calls 100] [--tasks 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support: shared set-up

from support import sandbox_spec  # noqa: E402

from toka_agents.sandbox import Sandbox, SandboxResult, SandboxSpec, connect, create_workspace  # noqa: E402
from toka_agents.sandbox.session import SandboxSession  # noqa: E402

MB = 1024**2
WARM_P50_TARGET_MS = 25.0
SESSION_P50_TARGET_MS = 10.0
RATIO_TARGET = 8.0
LABELS = {"org.toka-agents.bench": "sandbox"}
SMALL_TASK = """
import os
path = f"/tmp/bench-{os.getpid()}"
with open(path, "w") as handle:
    handle.write("x" * 4096)
print(len(open(path).read()))
"""


def spec_of(source: str, workspace: Path) -> SandboxSpec:
    return sandbox_spec(source, timeout=60, workspace=workspace)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


def percentile(values: Sequence[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def timed(sandbox: Sandbox | SandboxSession, spec: SandboxSpec) -> tuple[float, SandboxResult]:
    began = time.perf_counter()
    result = sandbox.run(spec)
    took = time.perf_counter() - began
    if not result.ok:
        sys.exit(f"benchmark task failed: {result.failure}")
    return took, result


def wait_for_pool(sandbox: Sandbox, size: int, bound: float = 60.0) -> None:
    deadline = time.monotonic() + bound
    while sandbox.warm_containers() < size:
        if time.monotonic() > deadline:
            sys.exit(f"the pool did not fill to {size} within {bound:.0f}s")
        time.sleep(0.01)


def part_latency(client, workspace: Path, calls: int) -> None:
    print(f"Part 1: latency of print(1), {calls} calls each, session, warm and cold alternating\n")
    spec = spec_of("print(1)", workspace)
    session_times: list[float] = []
    warm_times: list[float] = []
    cold_times: list[float] = []
    missed = 0
    with (
        Sandbox(client, LABELS, pool_size=1) as pooled,
        Sandbox(client, LABELS) as cold,
        cold.session(spec) as session,
    ):
        # (All carry LABELS: the first to close removes the others' leftovers too; none run then.)
        timed(pooled, spec)  # creates the pool
        timed(cold, spec)  # the image's first start is not measured either
        timed(session, spec)  # the session's container starts at its first call
        for _ in range(calls):
            session_times.append(timed(session, spec)[0])
            wait_for_pool(pooled, 1)
            took, result = timed(pooled, spec)
            if result.warm:
                warm_times.append(took)
            else:
                missed += 1
            cold_times.append(timed(cold, spec)[0])
    kinds = {"live session": session_times, "warm (pool)": warm_times, "cold": cold_times}
    stats = {
        name: (statistics.median(times) * 1000, percentile(times, 0.95) * 1000)
        for name, times in kinds.items()
    }
    print_table(
        ["sandbox", "calls", "p50 ms", "p95 ms"],
        [
            [name, str(len(kinds[name])), f"{p50:.1f}", f"{p95:.1f}"]
            for name, (p50, p95) in stats.items()
        ],
    )
    (session_p50, session_p95), (warm_p50, warm_p95), (cold_p50, cold_p95) = stats.values()
    ratio = cold_p50 / warm_p50
    print(f"\ncold / warm: p50 {ratio:.1f}x, p95 {cold_p95 / warm_p95:.1f}x")
    print(f"warm / session: p50 {warm_p50 / session_p50:.1f}x, p95 {warm_p95 / session_p95:.1f}x")
    print(
        f"warm p50 {warm_p50:.1f} ms (target <= {WARM_P50_TARGET_MS:.0f} ms: "
        f"{'met' if warm_p50 <= WARM_P50_TARGET_MS else 'MISSED'}); "
        f"p50 ratio {ratio:.1f}x (target >= {RATIO_TARGET:.0f}x: {'met' if ratio >= RATIO_TARGET else 'MISSED'})"
    )
    print(
        f"session p50 {session_p50:.1f} ms (target <= {SESSION_P50_TARGET_MS:.0f} ms: "
        f"{'met' if session_p50 <= SESSION_P50_TARGET_MS else 'MISSED'})"
    )
    if missed:
        print(
            f"({missed} pooled calls found no ready container and ran cold: left out of the warm figures)"
        )


def throughput(
    make: Callable[[], Sandbox], spec: SandboxSpec, tasks: int, concurrency: int, size: int
) -> tuple[float, int]:
    """Seconds for `tasks` runs with `concurrency` at once, and how many ran warm."""
    with make() as sandbox:
        if size:
            timed(sandbox, spec)  # creates the pool, which then fills untimed
            wait_for_pool(sandbox, size)
        with ThreadPoolExecutor(concurrency) as workers:
            began = time.perf_counter()
            results = list(workers.map(lambda _: timed(sandbox, spec)[1], range(tasks)))
            took = time.perf_counter() - began
    return took, sum(result.warm for result in results)


def part_throughput(client, workspace: Path, tasks: int, concurrency: int) -> None:
    print(f"\nPart 2: throughput of {tasks} small code tasks, {concurrency} at once\n")
    spec = spec_of(SMALL_TASK, workspace)
    pooled = throughput(
        lambda: Sandbox(client, LABELS, pool_size=concurrency), spec, tasks, concurrency, concurrency
    )
    cold = throughput(lambda: Sandbox(client, LABELS), spec, tasks, concurrency, 0)
    rows = [
        [name, f"{seconds:.2f}", f"{tasks / seconds:.1f}", str(warm)]
        for name, (seconds, warm) in ((f"pool of {concurrency}", pooled), ("cold", cold))
    ]
    print_table(["sandbox", "seconds", "tasks/s", "ran warm"], rows)
    print(f"\npool / cold: {cold[0] / pooled[0]:.2f}x the tasks per second")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=100, help="print(1) calls of each kind (part 1)")
    parser.add_argument("--tasks", type=int, default=200, help="code tasks of each kind (part 2)")
    parser.add_argument(
        "--concurrency", type=int, default=8, help="tasks at once, and the pool's size (part 2)"
    )
    args = parser.parse_args()
    if min(args.calls, args.tasks, args.concurrency) < 1:
        parser.error("--calls, --tasks and --concurrency must be at least 1")
    client = connect(pool_size=2 * args.concurrency + 4)
    with tempfile.TemporaryDirectory(prefix="toka-bench-sandbox-") as root:
        workspace = create_workspace(Path(root), "bench")
        part_latency(client, workspace, args.calls)
        part_throughput(client, workspace, args.tasks, args.concurrency)
    left = client.api.containers(all=True, filters={"label": [f"{k}={v}" for k, v in LABELS.items()]})
    print(f"\ncontainers left: {len(left)}")


if __name__ == "__main__":
    main()
