"""A cohort in one run: per-slide overhead and the client's peak memory at N slides.

Makes one small synthetic slide, copies it N times under distinct names (every copy is a slide
of its own: its own outputs, its own report), runs ``wsi-seg run`` over the folder (or over a
``--slides`` list of them) as a child process, and reports that process's peak resident memory
(the client, with the local cluster's scheduler, which lives in its process; sampled every
0.2 s) and, from ``run.json``, the wall per slide and the median slide's blocks wall.

    python benchmarks/cohort_scale.py --slides 200 --out /tmp/cohort
    python benchmarks/cohort_scale.py --slides 2000 --out /tmp/cohort --list

Workers are separate processes: their memory is per slide in flight, not per cohort, and is
not what this measures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil


def make_cohort(folder: Path, n: int, size_px: int) -> Path:
    """``n`` copies of one synthetic slide of ``size_px`` square, named ``s00000.svs``..."""
    from wsi_seg.tools.synth import write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    seed = folder.parent / f"seed-{size_px}" / "seed.svs"  # beside the cohort, not in it
    if not seed.exists():
        seed.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(seed, (size_px, size_px), seed=5)
    for i in range(n):
        dst = folder / f"s{i:05d}.svs"
        if not dst.exists():
            shutil.copyfile(seed, dst)
    return folder


def run(slides: Path, out: Path, use_list: bool, extra: list[str]) -> dict[str, float]:
    """One ``wsi-seg run``: wall, the child's peak RSS, and per-slide figures."""
    if use_list:
        listing = out.parent / f"{out.name}.txt"
        listing.write_text("".join(f"{p}\n" for p in sorted(slides.glob("s*.svs"))))
        args = ["--slides", str(listing)]
    else:
        args = [str(slides)]
    cmd = [sys.executable, "-m", "wsi_seg", "run", *args, "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    client = psutil.Process(proc.pid)
    peak = 0
    # Sampled, not getrusage: a child's ru_maxrss includes the worker processes it waited for.
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, client.memory_info().rss)
        time.sleep(0.2)
    if proc.returncode:
        raise SystemExit(f"wsi-seg run exited with {proc.returncode}")
    wall = time.perf_counter() - t0
    peak_mb = peak / 2**20
    record = json.loads((out / "run.json").read_text())
    rows = record["slides"]
    ok = [s for s in rows if s["status"] == "ok"]
    blocks = [s.get("blocks_wall_s") or 0.0 for s in ok]
    return {"slides": len(rows), "ok": len(ok), "wall_s": round(wall, 1),
            "wall_per_slide_s": round(wall / max(1, len(rows)), 3),
            "median_blocks_wall_s": round(statistics.median(blocks), 3) if blocks else 0.0,
            "client_peak_rss_mb": round(peak_mb, 1),
            "startup_s": record.get("startup_s") or 0.0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=200, help="slides in the cohort")
    ap.add_argument("--size", type=int, default=600, help="slide edge, level-0 px")
    ap.add_argument("--out", type=Path, required=True, help="scratch folder")
    ap.add_argument("--list", action="store_true", help="name the slides in a --slides list")
    ap.add_argument("extra", nargs="*", help="more wsi-seg run options (after --)")
    a = ap.parse_args()
    slides = make_cohort(a.out / f"slides-{a.slides}", a.slides, a.size)
    out = a.out / f"out-{a.slides}{'-list' if a.list else ''}"
    shutil.rmtree(out, ignore_errors=True)
    print(json.dumps(run(slides, out, a.list, a.extra)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
