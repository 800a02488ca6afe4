"""Polygons of one mosaic at two commits, side by side on one machine at one time.

``wsi-seg bench --steps noisy`` measures vectorizing inside a whole run, where the blocks phase
swings by +-15 % on a shared machine. This isolates the polygons: it traces a mosaic a run
wrote (its ``mask.zarr``) with ``vectorize_mosaic`` as ``wsi-seg run`` does by default
(threshold 0.5, regions and holes under 1000 µm² dropped, 1 µm simplification), at two commits,
alternating (A B A B ...) so that load from anything else falls on both alike. Each commit is
checked out into a git worktree and measured in a fresh process with ``PYTHONPATH`` pointing at
it; the figure is the wall time of the call alone::

    python benchmarks/vectorize_commits.py RUN_OUT/slide/mask.zarr e615645 HEAD \\
        --workers 1,2 --rounds 2 --repeats 3

Prints one line per measurement and a Markdown table of the minimum and median per commit and
thread count.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time
import wsi_seg
assert wsi_seg.__file__.startswith(sys.argv[4]), f"wsi_seg from {wsi_seg.__file__}"
from wsi_seg.stages.mosaic import open_mosaic
from wsi_seg.stages.vectorize import vectorize_mosaic
mosaic = open_mosaic(sys.argv[1])
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    vectorize_mosaic(mosaic, threshold=0.5, min_area_um2=1000.0, simplify_um=1.0,
                     workers=int(sys.argv[2]))
    print(time.perf_counter() - t)
"""


def worktree(commit: str, work: Path) -> tuple[str, Path]:
    """The short hash of ``commit`` and a worktree of it under ``work`` (made once)."""
    short = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", commit],
                           check=True, capture_output=True, text=True).stdout.strip()
    tree = work / f"tree-{short}"
    if not tree.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "-f", "--detach", str(tree),
                        commit], check=True, capture_output=True)
    return short, tree


def measure(tree: Path, mosaic: Path, workers: int, repeats: int) -> list[float]:
    """Wall seconds of ``repeats`` calls in one fresh process running ``tree``'s code."""
    out = subprocess.run([sys.executable, "-c", CHILD, str(mosaic), str(workers), str(repeats),
                          str(tree)],
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"}, cwd=tree)
    if out.returncode:
        last = (out.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SystemExit(f"vectorize_commits: {tree.name} on {mosaic}: {last}")
    return [float(line) for line in out.stdout.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mosaic", type=Path, help="a run's mask.zarr")
    parser.add_argument("commits", nargs="+", help="commits to compare (e.g. OLD HEAD)")
    parser.add_argument("--workers", default="1,2", help="thread counts, comma-separated")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the commits")
    parser.add_argument("--repeats", type=int, default=3, help="calls per process")
    parser.add_argument("--work", type=Path, default=Path("/tmp/wsi-seg-vectorize-commits"))
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    trees = [worktree(c, args.work) for c in args.commits]
    walls: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.rounds):
        for workers in (int(w) for w in args.workers.split(",")):
            for short, tree in trees:
                got = measure(tree, args.mosaic.resolve(), workers, args.repeats)
                walls.setdefault((short, workers), []).extend(got)
                print(f"{short} workers={workers}: " + " ".join(f"{s:.2f}" for s in got),
                      flush=True)
    print("\n| commit | threads | min s | median s |\n|---|---|---|---|")
    for (short, workers), got in walls.items():
        print(f"| {short} | {workers} | {min(got):.2f} | {statistics.median(got):.2f} |")


if __name__ == "__main__":
    main()
