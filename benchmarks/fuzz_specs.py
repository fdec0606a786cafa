"""Fuzz the config loader: 10,000 random mutations of Toka's real specs, and the rule they break.

Runs the property of tests/test_properties.py (strategies and rule in spec_mutations.py)
through hypothesis' `@given` with `max_examples` split across worker processes (a seed each),
counts the examples and those that broke the rule, prints each distinct way it broke (the
exception's type and place in toka_agents, or the issue without a key path) with a few of
its examples, and ends with `ran N examples, K broke the rule`. Exit status 1 if any broke.

    .venv/bin/python benchmarks/fuzz_specs.py [--examples 10000] [--jobs 2] [--seed 0]

Cost: about 21 ms of CPU per example, so 10,000 take about 2.3 minutes on two cores. A v0.3
example validates all nine v0.3 specs, most of the cost; an orchestration TOML example only
itself. (With the loader parsing YAML in pure Python, it was 65 ms and 8-9 minutes.)
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, seed, settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from spec_mutations import Break, MutatedSpec, Workspace, check, mutated_specs  # noqa: E402

SHOWN_PER_KIND = 3


@dataclass
class Tally:
    ran: int = 0
    broke: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    """Examples that broke the rule, by kind of break."""
    shown: dict[str, list[str]] = field(default_factory=dict)
    """The first few examples of each kind, as text."""

    def add(self, spec: MutatedSpec, breaks: list[Break]) -> None:
        self.ran += 1
        if not breaks:
            return
        self.broke += 1
        for kind, found in {one.kind: one for one in breaks}.items():
            self.kinds[kind] += 1
            examples = self.shown.setdefault(kind, [])
            if len(examples) < SHOWN_PER_KIND:
                examples.append(f"{spec!r}\n        {found}")

    def merge(self, other: Tally) -> None:
        self.ran += other.ran
        self.broke += other.broke
        self.kinds += other.kinds
        for kind, examples in other.shown.items():
            mine = self.shown.setdefault(kind, [])
            mine += examples[: SHOWN_PER_KIND - len(mine)]


def fuzz(examples: int, worker_seed: int) -> Tally:
    """Run the property on `examples` hypothesis examples; never stops at a break."""
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="toka-fuzz-") as root:
        workspace = Workspace(Path(root))

        @seed(worker_seed)
        @settings(
            max_examples=examples,
            database=None,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(mutated_specs())
        def run(spec: MutatedSpec) -> None:
            tally.add(spec, check(spec, workspace))

        run()
    return tally


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="examples in all (10000)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first worker")
    args = parser.parse_args()

    jobs = max(1, min(args.jobs, args.examples))
    shares = [args.examples // jobs + (i < args.examples % jobs) for i in range(jobs)]
    started = time.perf_counter()
    tally = Tally()
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
        for part in pool.map(fuzz, shares, [args.seed + i for i in range(jobs)]):
            tally.merge(part)
    elapsed = time.perf_counter() - started

    for kind, count in tally.kinds.most_common():
        print(f"{count} examples broke the rule as {kind}")
        for example in tally.shown[kind]:
            print(f"    {example}")
    per_example = 1000 * elapsed * jobs / max(tally.ran, 1)
    print(f"took {elapsed:.1f} s, {jobs} processes, {per_example:.1f} ms per example per process")
    print(f"ran {tally.ran} examples, {tally.broke} broke the rule")
    return 1 if tally.broke else 0


if __name__ == "__main__":
    sys.exit(main())
