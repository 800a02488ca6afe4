"""Read-only throughput of ``Slide.read_w`` by number of reading threads (no model).

Reads 4096 px boxes at 1 µm/px from synthetic slides that it writes once into a cache:

* ``0.2525`` µm/px with a 4x pyramid (a 40x Aperio slide): 1 µm/px is level 0 resampled by
  3.96, so a box decodes ~16x its own pixels;
* ``0.5026`` µm/px with a 4x pyramid (a 20x slide): level 0 resampled by 1.99.

Two ways of using threads, each at 1, 4, 16 and the number of cores:

* ``within``: one box at a time, its tiles read on ``threads`` threads
  (``read_w(..., threads=N)``): the latency of one block's read;
* ``across``: ``N`` caller threads each reading whole boxes with ``threads=1``, as the task
  threads of a Dask worker do: the throughput of many blocks at once.

Every measurement reads the same boxes through a freshly opened slide (no OpenSlide tile cache
carried over; the file itself is in the page cache after a warm-up read). Measurements are
interleaved (the order of thread counts rotates every round) and repeated; the table shows the
median (min-max) and the JSON keeps every round with the load average, which on a shared
machine says how far to trust a number.

    python benchmarks/read_scaling.py --out bench-out/read_scaling.json
    python benchmarks/read_scaling.py --quick     # every path in ~1 min; numbers mean little

Throughput: working Mpx/s (the box pixels delivered), boxes/s, and windows/s, where a window is
a 256 px tile at 0.25 overlap (step 192) as the UNet runs them: 441 windows per 4096 px box.

Readers: ``tifffile`` (the default where it gives OpenSlide's pixels: see
wsi_seg/stages/tiff_reader.py)
and ``openslide`` (``$WSI_SEG_TIFF_READER=0``), measured side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.stages.read_pool import usable_cores
from wsi_seg.stages.slide import Slide, open_slide
from wsi_seg.stages.tiff_reader import ENV as TIFF_ENV
from wsi_seg.stages.tiling import step_for, window_starts
from wsi_seg.tools.synth import write_synthetic_slide

WINDOW_PX, OVERLAP = 256, 0.25


@dataclass(frozen=True)
class Round:
    """One measurement: ``boxes`` boxes read in ``wall_s`` seconds."""

    slide: str
    reader: str
    mode: str
    threads: int
    repeat: int
    boxes: int
    wall_s: float
    cpu_s: float
    load1_before: float
    load1_after: float


def windows_per_box(box_px: int) -> int:
    n = len(window_starts(box_px, WINDOW_PX, step_for(WINDOW_PX, OVERLAP)))
    return n * n


def synthetic(cache: Path, size_px: int, mpp: float) -> Path:
    """The benchmark slide of ``size_px`` square at ``mpp`` (4x pyramid), written once."""
    # No dot in the stem: the truth file beside it is named <stem>.tumor.geojson.
    path = cache / f"read-{size_px}-{mpp:g}um-x4.svs".replace(".", "p", 1)
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        print(f"writing {path} (once) ...", flush=True)
        write_synthetic_slide(path, (size_px, size_px), seed=7, mpp=mpp, level_factor=4,
                              progress=True)
    return path


def box_positions(slide: Slide, box_px: int, mpp: float, n: int) -> list[tuple[int, int]]:
    """``n`` box corners spread over the working image (overlapping when it is small)."""
    w_px, h_px = slide.size_w(mpp)
    rng = np.random.default_rng(0)
    xs = rng.integers(0, max(1, w_px - box_px) + 1, n)
    ys = rng.integers(0, max(1, h_px - box_px) + 1, n)
    return [(int(x), int(y)) for x, y in zip(xs, ys, strict=True)]


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def open_with(path: Path, reader: str) -> Slide:
    """Open ``path`` so that it reads through ``reader`` (tifffile where it can, or openslide)."""
    old = os.environ.get(TIFF_ENV)
    os.environ[TIFF_ENV] = "1" if reader == "tifffile" else "0"
    try:
        return open_slide(path)
    finally:
        if old is None:
            del os.environ[TIFF_ENV]
        else:
            os.environ[TIFF_ENV] = old


def read_boxes(path: Path, reader: str, corners: list[tuple[int, int]], box_px: int,
               mpp: float, mode: str, threads: int) -> tuple[float, float]:
    """Read every box; (wall seconds, process CPU seconds)."""
    with open_with(path, reader) as slide:
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "within":
            for x, y in corners:
                slide.read_w(x, y, box_px, box_px, mpp, threads=threads)
        else:
            todo = list(corners)
            lock = threading.Lock()

            def caller() -> None:
                while True:
                    with lock:
                        if not todo:
                            return
                        x, y = todo.pop()
                    slide.read_w(x, y, box_px, box_px, mpp, threads=1)

            callers = [threading.Thread(target=caller) for _ in range(threads)]
            for c in callers:
                c.start()
            for c in callers:
                c.join()
        return time.perf_counter() - t0, time.process_time() - c0


def summarise(rounds: list[Round], box_px: int, info: dict[str, dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """Median (min, max) rates per slide, mode and thread count, with speed-up over 1 thread."""
    out: list[dict[str, Any]] = []
    keys = sorted({(r.slide, r.reader, r.mode, r.threads) for r in rounds})
    win = windows_per_box(box_px)
    for slide, reader, mode, threads in keys:
        rs = [r for r in rounds
              if (r.slide, r.reader, r.mode, r.threads) == (slide, reader, mode, threads)]
        boxes_s = [r.boxes / r.wall_s for r in rs]
        scale = info[slide]["scale"]
        row: dict[str, Any] = {
            "slide": slide, "reader": reader, "mode": mode, "threads": threads,
            "rounds": len(rs),
            "boxes_per_s": _stats(boxes_s),
            "working_mpx_per_s": _stats([b * box_px**2 / 1e6 for b in boxes_s]),
            "source_mpx_per_s": _stats([b * (box_px * scale) ** 2 / 1e6 for b in boxes_s]),
            "windows_per_s": _stats([b * win for b in boxes_s]),
            "cpu_per_wall": _stats([r.cpu_s / r.wall_s for r in rs]),
            "cpu_s_per_box": _stats([r.cpu_s / r.boxes for r in rs]),
            "load1": [r.load1_before for r in rs],
        }
        out.append(row)
    for row in out:
        base = next((r for r in out if (r["slide"], r["reader"], r["mode"], r["threads"])
                     == (row["slide"], row["reader"], row["mode"], 1)), None)
        if base:
            row["speedup_vs_1"] = round(row["boxes_per_s"]["median"]
                                        / base["boxes_per_s"]["median"], 2)
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3),
            "max": round(max(xs), 3)}


def table(rows: list[dict[str, Any]], info: dict[str, dict[str, Any]]) -> str:
    lines = ["| slide | read | reader | mode | threads | working Mpx/s | boxes/s | windows/s | "
             "source Mpx/s | speed-up | CPU/wall | CPU s/box | load1 |",
             "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        i = info[r["slide"]]

        def m(key: str, digits: int = 1, r: dict[str, Any] = r) -> str:
            s = r[key]
            return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

        lines.append(
            f"| {r['slide']} | level {i['level']} x{i['scale']:.2f} | {r['reader']} "
            f"| {r['mode']} | {r['threads']} | {m('working_mpx_per_s')} "
            f"| {m('boxes_per_s', 3)} | {m('windows_per_s', 0)} | {m('source_mpx_per_s')} "
            f"| {r.get('speedup_vs_1', float('nan')):.2f} | {m('cpu_per_wall', 2)} "
            f"| {m('cpu_s_per_box', 2)} | {', '.join(f'{x:.1f}' for x in r['load1'])} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    try:
        from wsi_seg.tools.bench import machine_info
        return machine_info()
    except Exception as exc:  # the record is still useful without it
        return {"cores": usable_cores(), "error": repr(exc)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache/wsi-seg/read-scaling",
                   help="where the synthetic slides are written once")
    p.add_argument("--slide", type=Path, action="append", default=[],
                   help="read this slide instead of the synthetic ones (repeatable)")
    p.add_argument("--size", type=int, default=40000,
                   help="synthetic slides' level-0 px (40000: 4 boxes apart at 0.25 µm/px)")
    p.add_argument("--slide-mpps", default="0.2525,0.5026",
                   help="level-0 µm/px of the synthetic slides")
    p.add_argument("--mpp", type=float, default=1.0, help="µm/px read at")
    p.add_argument("--box", type=int, default=4096, help="box side, working px")
    p.add_argument("--boxes", type=int, default=2, help="boxes per measurement (across: at "
                   "least one per thread)")
    p.add_argument("--threads", default="1,4,16,cores", help="thread counts ('cores' = "
                   f"{usable_cores()} here)")
    p.add_argument("--modes", default="within,across")
    p.add_argument("--readers", default="tifffile,openslide")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="4000 px slides, 1024 px boxes, once")
    p.add_argument("--out", type=Path, default=Path("bench-out/read_scaling.json"))
    a = p.parse_args(argv)
    if a.quick:
        a.size, a.box, a.boxes, a.repeats = 4000, 1024, 2, 1
    counts = sorted({usable_cores() if t.strip() == "cores" else int(t)
                     for t in a.threads.split(",")})
    modes = [m.strip() for m in a.modes.split(",")]
    readers = [r.strip() for r in a.readers.split(",")]
    paths = a.slide or [synthetic(a.cache, a.size, float(m)) for m in a.slide_mpps.split(",")]

    info: dict[str, dict[str, Any]] = {}
    corners: dict[str, list[tuple[int, int]]] = {}
    for path in paths:
        warm_page_cache(path)
        with open_slide(path) as s:
            c = s.choose_level(a.mpp)
            info[path.name] = {"path": str(path), "slide_mpp": s.mpp, "level": c.level,
                               "scale": round(c.scale, 4), "dimensions": s.dimensions,
                               "level_downsamples": s.level_downsamples,
                               "tiff_levels": s.tiff_levels}
            corners[path.name] = box_positions(s, a.box, a.mpp, max(a.boxes, *counts))

    plan = [(path, reader, mode, n) for path in paths for mode in modes for n in counts
            for reader in readers]
    rounds: list[Round] = []
    for rep in range(a.repeats):
        shift = rep % max(1, len(plan))
        order = [x for path in paths for mode in modes
                 for x in _rotate([q for q in plan if q[0] == path and q[2] == mode], shift)]
        for path, reader, mode, n in order:
            # Across: every caller gets a box of its own.
            boxes = corners[path.name][:max(a.boxes, n) if mode == "across" else a.boxes]
            load0 = os.getloadavg()[0]
            wall, cpu = read_boxes(path, reader, boxes, a.box, a.mpp, mode, n)
            r = Round(path.name, reader, mode, n, rep, len(boxes), wall, cpu, load0,
                      os.getloadavg()[0])
            rounds.append(r)
            print(f"{path.name} {reader:9s} {mode:6s} threads {n:2d} round {rep}: "
                  f"{len(boxes)} boxes in "
                  f"{wall:.2f} s ({len(boxes) * a.box**2 / 1e6 / wall:.1f} Mpx/s, CPU/wall "
                  f"{cpu / wall:.2f}, load {load0:.1f})", flush=True)

    rows = summarise(rounds, a.box, info)
    record = {"machine": machine(), "config": {k: str(v) for k, v in vars(a).items()},
              "thread_counts": counts, "windows_per_box": windows_per_box(a.box),
              "slides": info, "summary": rows, "rounds": [asdict(r) for r in rounds]}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1))
    print()
    print(table(rows, info))
    print(f"\nwrote {a.out}")
    return 0


def _rotate(xs: list[Any], k: int) -> list[Any]:
    k %= max(1, len(xs))
    return xs[k:] + xs[:k]


if __name__ == "__main__":
    sys.exit(main())
