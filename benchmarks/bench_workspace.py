"""Benchmark of a workspace's seed going in and its archive coming out, beside `cp -r` and
`tar czf` of the same tree, in one run.

A tree of N files (`--files`, default 10,000) totalling M MiB (`--megabytes`, default 100) over
about 100 directories is made in a temporary directory. Half the files are random bytes
(`os.urandom`: gzip cannot shrink them), half are text: lines of words drawn from a fixed pool
(gzip shrinks them about as much as it shrinks source code or logs). File sizes vary
(log-normal), each half holding half the bytes.

Part 1, seeding: `toka_agents.sandbox.seeding.seed_workspace` of the tree (`workspace: {from:
...}`, `TOKA_WORKSPACE=bind`: a copy into a directory) into a fresh empty directory, against
`cp -r TREE DEST` of the same tree into a fresh directory.

Part 2, archiving: `toka_agents.sandbox.seeding.archive_workspace` of a seeded workspace to a
file, against `tar czf OUT -C WORKSPACE .` of the same directory (both gzip level 6); the
seconds and the sizes of both archives.

Each part runs R rounds (`--rounds`, default 3), the two ways in alternating order (toka-agents
first in odd rounds, the baseline first in even ones), each after a `sync` (untimed) so that
neither pays for writing back what the other left dirty; copies and archives are removed between
rounds (untimed). The source tree is in the page cache for both: it was just written. It prints
each round, the medians and the ratio of medians toka-agents / baseline.

Everything is written under `--dir` (default: the system's temporary directory, so the disk's
speed and load count); `--dir /dev/shm` (a tmpfs) leaves the disk out and shows the CPU cost.
Run as root, `seed_workspace` also hands every entry to the sandbox user (`lchown`), which
`cp -r` does not; it sets modes and modification times too, which `cp -r` does not keep.

    .venv/bin/python benchmarks/bench_workspace.py [--files 10000] [--megabytes 100] [--rounds 3] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from toka_agents.config.workspace import WorkspaceSeed
from toka_agents.sandbox.seeding import archive_workspace, seed_workspace
from toka_agents.sandbox.spec import SANDBOX_USER

MIB = 1024**2
LIMIT = 1024**3  # the workspace's size limit handed to seed_workspace: 1 GiB
DIRECTORIES = 100
WORDS = 3000  # the text files' vocabulary
LINES = 5000  # the pool of lines the text files are drawn from
SEED = 22  # the tree is the same from run to run


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in [headers, *rows]:
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths, strict=True)))


def sizes(count: int, total: int, rng: random.Random) -> list[int]:
    """`count` log-normal sizes (most small, a few large) adding up to `total` exactly."""
    if count == 0:
        return []
    weights = [rng.lognormvariate(0, 1.2) for _ in range(count)]
    scale = total / sum(weights)
    result = [int(weight * scale) for weight in weights]
    for index in range(total - sum(result)):  # what rounding down left over, a byte each
        result[index % count] += 1
    return result


def text_pool(rng: random.Random) -> list[bytes]:
    letters = "abcdefghijklmnopqrstuvwxyz_"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(WORDS)]
    return [
        (
            " " * 4 * rng.randint(0, 3) + " ".join(rng.choices(words, k=rng.randint(2, 12))) + "\n"
        ).encode()
        for _ in range(LINES)
    ]


def text(size: int, pool: list[bytes], rng: random.Random) -> bytes:
    lines = rng.choices(pool, k=size // 30 + 1)  # lines average ~50 bytes: more than enough
    return b"".join(lines)[:size]


def make_tree(root: Path, files: int, total: int) -> tuple[int, int, float]:
    """Write the tree; return its directories, the text half's bytes and that half's gzip -6
    size as a share of them."""
    rng = random.Random(SEED)
    pool = text_pool(rng)
    directories = max(1, min(DIRECTORIES, files))
    for index in range(directories):
        (root / f"dir{index:03d}").mkdir(parents=True)
    randoms, texts = (files + 1) // 2, files // 2
    random_sizes = sizes(randoms, total - total // 2 if texts else total, rng)
    text_sizes = sizes(texts, total // 2, rng)
    compressor = zlib.compressobj(6, zlib.DEFLATED, 31)  # gzip -6, the text half as one stream
    compressed = 0
    for index in range(files):
        # Alternating, so every directory holds both kinds.
        if index % 2 == 0:
            data = os.urandom(random_sizes[index // 2])
            name = f"blob{index:05d}.bin"
        else:
            data = text(text_sizes[index // 2], pool, rng)
            compressed += len(compressor.compress(data))
            name = f"text{index:05d}.txt"
        (root / f"dir{index % directories:03d}" / name).write_bytes(data)
    compressed += len(compressor.flush())
    return directories, total // 2 if texts else 0, compressed / max(1, total // 2 if texts else 1)


def file_system(path: Path) -> str:
    """The type of the file system `path` is on, from /proc/mounts ("?" where there is none)."""
    found, length = "?", -1
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return found
    for line in mounts:
        _, point, kind, *_ = line.split()
        point = point.replace("\\040", " ")
        inside = path == Path(point) or Path(point) in path.parents
        if inside and len(point) > length:
            found, length = kind, len(point)
    return found


def sync() -> None:
    subprocess.run(["sync"], check=True)


def timed(action: Callable[[], object]) -> float:
    sync()
    began = time.perf_counter()
    action()
    return time.perf_counter() - began


def alternate(
    rounds: int,
    ours: Callable[[int], Callable[[], object]],
    baseline: Callable[[int], Callable[[], object]],
    cleanup: Callable[[int], None],
) -> tuple[list[float], list[float]]:
    """Seconds of `ours(round)()` and `baseline(round)()`, R rounds, alternating which goes
    first; `cleanup(round)` after each round, untimed."""
    ours_times: list[float] = []
    baseline_times: list[float] = []
    for index in range(rounds):
        if index % 2 == 0:
            ours_times.append(timed(ours(index)))
            baseline_times.append(timed(baseline(index)))
        else:
            baseline_times.append(timed(baseline(index)))
            ours_times.append(timed(ours(index)))
        cleanup(index)
    return ours_times, baseline_times


def report(names: tuple[str, str], ours: list[float], baseline: list[float]) -> float:
    rows = [
        [str(index + 1), f"{a:.3f}", f"{b:.3f}"]
        for index, (a, b) in enumerate(zip(ours, baseline, strict=True))
    ]
    ours_median, baseline_median = statistics.median(ours), statistics.median(baseline)
    rows.append(["median", f"{ours_median:.3f}", f"{baseline_median:.3f}"])
    print_table(["round", f"{names[0]} s", f"{names[1]} s"], rows)
    ratio = ours_median / baseline_median
    print(f"\n{names[0]} / {names[1]}: {ratio:.2f}x (medians)")
    return ratio


def counted(tree: Path) -> tuple[int, int]:
    """Regular files and their bytes under `tree`."""
    files = size = 0
    for directory, _, names in os.walk(tree):
        for name in names:
            info = os.lstat(os.path.join(directory, name))
            files += 1
            size += info.st_size
    return files, size


def archived_files(path: Path) -> tuple[int, int]:
    """Regular files in the `.tar.gz` at `path`, and their bytes."""
    with tarfile.open(path, "r:gz") as archive:
        members = [member for member in archive if member.isreg()]
    return len(members), sum(member.size for member in members)


def part_seed(tree: Path, scratch: Path, rounds: int, files: int, total: int) -> Path:
    print(f"\nPart 1: seeding, {rounds} round(s), order alternating, a sync before each\n")
    seed = WorkspaceSeed(from_=str(tree))

    def ours(index: int) -> Callable[[], object]:
        workspace = scratch / f"seeded-{index}"
        workspace.mkdir()  # as create_workspace leaves it: empty
        return lambda: seed_workspace(workspace, seed, LIMIT, run_id="bench", user=SANDBOX_USER)

    def baseline(index: int) -> Callable[[], object]:
        return lambda: subprocess.run(["cp", "-r", str(tree), str(scratch / f"cp-{index}")], check=True)

    def cleanup(index: int) -> None:
        for path in (scratch / f"seeded-{index}", scratch / f"cp-{index}"):
            if counted(path) != (files, total):  # both copied the whole tree?
                sys.exit(f"{path.name} holds {counted(path)} (files, bytes), not {(files, total)}")
            if path.name != f"seeded-{rounds - 1}":  # the last seeded workspace is kept
                shutil.rmtree(path)

    seed_times, cp_times = alternate(rounds, ours, baseline, cleanup)
    report(("seed_workspace", "cp -r"), seed_times, cp_times)
    return scratch / f"seeded-{rounds - 1}"  # the last round's workspace, for part 2


def part_archive(workspace: Path, scratch: Path, rounds: int, files: int, total: int) -> None:
    print(
        f"\nPart 2: archiving the seeded workspace, {rounds} round(s), order alternating, a sync before each\n"
    )
    ours_path, tar_path = scratch / "archive_workspace.tar.gz", scratch / "tar.tar.gz"
    archive_sizes: dict[str, list[int]] = {"ours": [], "tar": []}

    def ours(_: int) -> Callable[[], object]:
        def run() -> None:
            with open(ours_path, "wb") as archive:
                archive_workspace(workspace, archive)

        return run

    def baseline(_: int) -> Callable[[], object]:
        return lambda: subprocess.run(
            ["tar", "czf", str(tar_path), "-C", str(workspace), "."], check=True
        )

    def cleanup(index: int) -> None:
        archive_sizes["ours"].append(ours_path.stat().st_size)
        archive_sizes["tar"].append(tar_path.stat().st_size)
        if index == rounds - 1:  # the last round's: do both hold the whole tree?
            for name, path in (("archive_workspace", ours_path), ("tar czf", tar_path)):
                if archived_files(path) != (files, total):
                    sys.exit(
                        f"{name}'s archive holds {archived_files(path)} (files, bytes), not {(files, total)}"
                    )
        ours_path.unlink()
        tar_path.unlink()

    ours_times, tar_times = alternate(rounds, ours, baseline, cleanup)
    report(("archive_workspace", "tar czf"), ours_times, tar_times)
    ours_size, tar_size = (
        statistics.median(archive_sizes["ours"]),
        statistics.median(archive_sizes["tar"]),
    )
    print(
        f"archive sizes: archive_workspace {ours_size / MIB:.2f} MiB, tar czf {tar_size / MIB:.2f} MiB "
        f"({ours_size / tar_size:.3f}x); {ours_size / total:.1%} and {tar_size / total:.1%} of the tree's {total / MIB:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=10_000, help="files in the tree")
    parser.add_argument("--megabytes", type=float, default=100, help="the tree's total size, MiB")
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds of each way, each part")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the tree, copies and archives go (default: the system's temporary directory); "
        "e.g. /dev/shm, a tmpfs, to leave the disk out",
    )
    args = parser.parse_args()
    if args.files < 2 or args.megabytes <= 0 or args.rounds < 1:
        parser.error("--files must be at least 2, --megabytes above 0 and --rounds at least 1")
    # A copy into a directory, as on a local engine; without it the seed may ask the Docker engine
    # whether to fill a volume instead.
    os.environ["TOKA_WORKSPACE"] = "bind"
    total = round(args.megabytes * MIB)
    with tempfile.TemporaryDirectory(prefix="toka-bench-workspace-", dir=args.dir) as root:
        scratch = Path(root)
        tree = scratch / "tree"
        began = time.perf_counter()
        directories, text_bytes, text_share = make_tree(tree, args.files, total)
        made = time.perf_counter() - began
        randoms, texts = (args.files + 1) // 2, args.files // 2
        print(
            f"Tree: {args.files:,} files, {total / MIB:.1f} MiB in {directories} directories "
            f"in {scratch} ({file_system(scratch)}), made in {made:.1f} s; as root: {os.geteuid() == 0}\n"
            f"  {randoms:,} files of random bytes (os.urandom, incompressible), {(total - text_bytes) / MIB:.1f} MiB\n"
            f"  {texts:,} text files (lines of words from a pool of {LINES:,} lines), {text_bytes / MIB:.1f} MiB; "
            f"gzip -6 makes them {text_share:.1%} of their size"
        )
        workspace = part_seed(tree, scratch, args.rounds, args.files, total)
        part_archive(workspace, scratch, args.rounds, args.files, total)


if __name__ == "__main__":
    main()
