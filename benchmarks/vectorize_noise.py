"""Vectorizing time on noisy and ordinary probability masks, now and at a git revision.

A speckled map (an untrained or noisy model) once made vectorizing dominate a run: tens of
thousands of pinholes per chunk made ``cv2.findContours(RETR_CCOMP)`` quadratic, and holes
were handed to corner-joined parts by a quadratic search. This measures
:func:`wsi_seg.stages.vectorize.vectorize_array` on synthetic uint8 masks thresholded at 128:

* ``pure``: uniform random noise (every pixel independent);
* ``smooth``: the same noise blurred a little (Gaussian, sigma 1 px) and stretched to 0..255;
* ``blobs``: an ordinary mask, a smooth random field with blobs of ~100 px.

Settings: ``exact`` (every region and hole, no simplification) and ``pipeline`` (the
``wsi-seg run`` defaults: regions and holes under 1000 µm² dropped, 1 µm simplification), on
a raster of 1 µm pixels over a 0.5 µm/px slide, 1024 px chunks.

Each measurement runs in a fresh child process with a time limit (the old code takes hours on
the largest noise masks); wall and CPU seconds are the vectorize call only, not making the mask,
with the 1-minute load average before and after it (compare figures only at similar load).
``--rev`` also times the one-file vectorizer (``wsi_seg/vectorize.py`` or
``wsi_seg/stages/vectorize.py``, before it became a package) as it was at a git revision
(single-threaded then: it had no ``workers``)::

    python benchmarks/vectorize_noise.py --sizes 2048,8192 --workers 1,2 --rev a051260

Prints a Markdown table; ``--json`` also writes the records.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from module_at_rev import module_at

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: dict[str, dict[str, float]] = {
    "exact": {},
    "pipeline": {"min_area_um2": 1000.0, "simplify_um": 1.0},
}


def make_mask(kind: str, n: int, seed: int = 0) -> np.ndarray:
    """An ``n x n`` uint8 probability map (value = probability * 255)."""
    import cv2

    rng = np.random.default_rng(seed)
    if kind in ("pure", "smooth"):
        noise = rng.integers(0, 256, (n, n), dtype=np.uint8)
        if kind == "pure":
            return noise
        blurred = cv2.GaussianBlur(noise, (0, 0), 1.0)
        return cv2.normalize(blurred, None, 0, 255, cv2.NORM_MINMAX)
    if kind == "blobs":
        cells = max(2, n // 100)
        field = rng.random((cells, cells)).astype(np.float32)
        field = cv2.resize(field, (n, n), interpolation=cv2.INTER_CUBIC)
        return np.clip((field - 0.25) * 255 / 0.75, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown mask {kind!r}")


def load_vectorize(rev: str | None) -> ModuleType:
    """``wsi_seg.stages.vectorize`` of the working tree, or the file as it was at git ``rev``."""
    if rev is None:
        import wsi_seg.stages.vectorize

        return wsi_seg.stages.vectorize
    return module_at(rev, "stages", "vectorize")


def measure_one(rev: str | None, mask: str, n: int, setting: str, workers: int,
                chunk: int, check: bool) -> dict[str, Any]:
    """Time one vectorize call in this process."""
    vec = load_vectorize(rev)
    arr = make_mask(mask, n)
    frame = vec.PixelFrame(n, n, 0.0, 0.0, 2.0, 0.5, chunk_px=chunk)
    kwargs: dict[str, Any] = dict(SETTINGS[setting])
    if "workers" in inspect.signature(vec.vectorize_array).parameters:
        kwargs["workers"] = workers
    elif workers != 1:
        return {"skipped": "no workers parameter at this revision"}
    load = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    regions = vec.vectorize_array(arr, frame, fg_min=128, **kwargs)
    out: dict[str, Any] = {
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
        "load_before_after": [round(load, 1), round(os.getloadavg()[0], 1)],
        "regions": len(regions),
        "holes": sum(len(r.polygon.interiors) for r in regions),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if check:
        import shapely

        out["invalid"] = int((~shapely.is_valid([r.polygon for r in regions])).sum())
    return out


def run_child(args: argparse.Namespace, rev: str | None, mask: str, n: int, setting: str,
              workers: int) -> dict[str, Any]:
    """:func:`measure_one` in a fresh process, stopped after ``args.timeout`` seconds."""
    cmd = [sys.executable, __file__, "--one", json.dumps(
        {"rev": rev, "mask": mask, "n": n, "setting": setting, "workers": workers,
         "chunk": args.chunk, "check": args.check})]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                              env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return {"timeout_s": args.timeout}
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:]}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="2048,8192", help="mask edges in px, comma-separated")
    p.add_argument("--masks", default="pure,smooth,blobs")
    p.add_argument("--settings", default="exact,pipeline")
    p.add_argument("--workers", default="1,2", help="thread counts to time, comma-separated")
    p.add_argument("--rev", default=None,
                   help="also time the one-file vectorize.py at this git revision (before the "
                   "package split; for later revisions run this script in a worktree of it)")
    p.add_argument("--chunk", type=int, default=1024, help="chunk edge in px")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per measurement")
    p.add_argument("--check", action="store_true", help="count invalid polygons (untimed)")
    p.add_argument("--json", type=Path, default=None, help="write the records here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        print(json.dumps(measure_one(**json.loads(args.one))))
        return
    revs: list[str | None] = [None] + ([args.rev] if args.rev else [])
    records = []
    print(f"| mask | size | setting | code | workers | wall s | CPU s | regions | holes "
          f"| peak RSS MB | load avg{' | invalid' if args.check else ''} |")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if args.check else ""))
    for n in (int(s) for s in args.sizes.split(",")):
        for mask in args.masks.split(","):
            for setting in args.settings.split(","):
                for rev in revs:
                    for workers in (int(w) for w in args.workers.split(",")):
                        if rev is not None and workers != 1:
                            continue  # the old code has one thread only
                        rec = run_child(args, rev, mask, n, setting, workers)
                        rec.update(mask=mask, size=n, setting=setting, workers=workers,
                                   code=rev or _worktree())
                        records.append(rec)
                        print(_row(rec, args.check), flush=True)
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))


def _worktree() -> str:
    """The checkout's commit, marked when the vectorizer differs from it."""
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "HEAD", "--",
                            "wsi_seg/stages/vectorize"]).returncode
    return f"{head}{'+edits' if dirty else ''}"


def _row(rec: dict[str, Any], check: bool) -> str:
    head = (f"| {rec['mask']} | {rec['size']} | {rec['setting']} | {rec['code']} "
            f"| {rec['workers']} |")
    if "wall_s" not in rec:
        what = (f"> {rec['timeout_s']:.0f} (stopped)" if "timeout_s" in rec
                else str(rec.get("skipped") or rec.get("error")))
        return head + f" {what} | | | | | |" + (" |" if check else "")
    load = "→".join(str(v) for v in rec["load_before_after"])
    row = (head + f" {rec['wall_s']:.2f} | {rec['cpu_s']:.2f} | {rec['regions']} | "
           f"{rec['holes']} | {rec['peak_rss_mb']:.0f} | {load} |")
    return row + (f" {rec['invalid']} |" if check else "")


if __name__ == "__main__":
    main()
