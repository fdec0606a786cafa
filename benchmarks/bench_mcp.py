"""Benchmark of an MCP tool call against `run_code` doing the same work, in one run.

The work: the current time in Europe/Berlin as JSON. Four ways, calls alternating so all see
the same machine load:

- `mcp`: `time__get_current_time` of the reference server `mcp-server-time`, running in a
  sandbox container of its own (`Sandbox.process`), called through the official `mcp` SDK
  (`llm.mcp.McpServers`), as an agent's task calls it;
- `run_code (session)`: a Python program doing the same with `zoneinfo`, in a task's live
  session (`Sandbox.session`: one container for every call);
- `run_code (warm)`: the same program through `Sandbox.run` with a warm pool of one (the pool
  refills between calls, untimed);
- `run_code (cold)`: the same program in a fresh container each call.

It prints p50 and p95 of each and the ratios, and what starting the server costs (its
container, `initialize` and `tools/list`), measured over a few starts.

    .venv/bin/python benchmarks/bench_mcp.py [--calls 100] [--starts 5]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # support: shared set-up
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sandbox import percentile, print_table, wait_for_pool  # noqa: E402
from support import sandbox_spec  # noqa: E402

from toka_agents.config.mcp import McpServer  # noqa: E402
from toka_agents.llm.mcp import Launch, McpServers  # noqa: E402
from toka_agents.sandbox import Sandbox, connect  # noqa: E402
from toka_agents.sandbox.images import build_mcp_image  # noqa: E402
from toka_agents.tool_servers import server_spec  # noqa: E402

TIME_SERVER = "mcp-server-time==2026.10.19"
LABELS = {"org.toka-agents.bench": "mcp"}
SAME_WORK = """
import json, datetime, zoneinfo
now = datetime.datetime.now(zoneinfo.ZoneInfo("Europe/Berlin"))
print(json.dumps({"timezone": "Europe/Berlin", "datetime": now.isoformat(timespec="seconds")}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    client = connect()
    image = build_mcp_image(client, TIME_SERVER, log=lambda line: None)
    server = McpServer(
        name="time", image=image, command=["python3", "-m", "mcp_server_time", "--local-timezone", "UTC"]
    )
    spec = sandbox_spec(SAME_WORK, timeout=60, image=image)  # its tzdata: the same zones
    print(f"MCP tool call against run_code of the same work, {args.calls} calls each, alternating\n")
    times: dict[str, list[float]] = {
        "mcp": [],
        "run_code (session)": [],
        "run_code (warm)": [],
        "run_code (cold)": [],
    }
    starts: list[float] = []

    def launch(sandbox: Sandbox) -> Launch:
        return functools.partial(sandbox.process, server_spec(spec, server), list(server.command))

    with Sandbox(client, LABELS, pool_size=1) as pooled, Sandbox(client, LABELS) as cold:
        for _ in range(args.starts):
            began = time.perf_counter()
            with McpServers() as servers:
                servers.start("time", launch(pooled), timeout=60)
            starts.append(time.perf_counter() - began)
        pooled.run(spec)  # the pool's first container
        cold.run(spec)  # the image's first start
        with McpServers() as servers, cold.session(spec) as session:
            servers.start("time", launch(pooled), timeout=60)
            servers.call("time__get_current_time", {"timezone": "Europe/Berlin"})  # first call
            session.run(spec)  # the session's container starts at its first call
            for _ in range(args.calls):
                began = time.perf_counter()
                said, failed = servers.call("time__get_current_time", {"timezone": "Europe/Berlin"})
                times["mcp"].append(time.perf_counter() - began)
                if failed or json.loads(said)["timezone"] != "Europe/Berlin":
                    sys.exit(f"the MCP call failed: {said}")
                wait_for_pool(pooled, 1)
                ways = (
                    ("run_code (session)", session),
                    ("run_code (warm)", pooled),
                    ("run_code (cold)", cold),
                )
                for name, sandbox in ways:
                    began = time.perf_counter()
                    result = sandbox.run(spec)
                    times[name].append(time.perf_counter() - began)
                    if not result.ok:
                        sys.exit(f"run_code failed: {result.failure}")
    stats = {
        name: (statistics.median(t) * 1000, percentile(t, 0.95) * 1000) for name, t in times.items()
    }
    print_table(
        ["way", "calls", "p50 ms", "p95 ms"],
        [
            [name, str(len(times[name])), f"{p50:.1f}", f"{p95:.1f}"]
            for name, (p50, p95) in stats.items()
        ],
    )
    mcp, warm, cold_ = stats["mcp"], stats["run_code (warm)"], stats["run_code (cold)"]
    live = stats["run_code (session)"]
    print(f"\nrun_code (session) / mcp: p50 {live[0] / mcp[0]:.1f}x, p95 {live[1] / mcp[1]:.1f}x")
    print(f"run_code (warm) / mcp: p50 {warm[0] / mcp[0]:.1f}x, p95 {warm[1] / mcp[1]:.1f}x")
    print(f"run_code (cold) / mcp: p50 {cold_[0] / mcp[0]:.1f}x, p95 {cold_[1] / mcp[1]:.1f}x")
    print(
        f"starting the server (container, initialize, tools/list), {len(starts)} starts: "
        f"p50 {statistics.median(starts) * 1000:.0f} ms, max {max(starts) * 1000:.0f} ms"
    )


if __name__ == "__main__":
    main()
