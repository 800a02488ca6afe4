"""One 4096 px read before and after the reading changes, one thread, same boxes, interleaved.

Variants, each reading the same boxes of one slide through a fresh handle:

* ``old``: ``wsi_seg/stages/slide.py`` as it was at ``--rev`` (loaded from git), OpenSlide;
* ``openslide``: today's reader with ``$WSI_SEG_TIFF_READER=0``, ``threads=1``;
* ``tifffile``: today's reader as it opens by default, ``threads=1``.

Also the interpolation step alone (the old NumPy bilinear vs ``cv2.remap``) on one random
source of the size such a read blurs. Wall and process CPU seconds are both printed: on a
shared machine CPU seconds are the steadier measure of the work a read costs.

    python benchmarks/read_before_after.py --slide SLIDE --rev a051260 --mpp 1.0 --mpp 0.37875
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np
from module_at_rev import module_at

from wsi_seg.stages.slide import on_remap_grid, open_slide
from wsi_seg.stages.tiff_reader import ENV as TIFF_ENV

REPO = Path(__file__).resolve().parents[1]


def slide_module_at(rev: str) -> ModuleType:
    """``wsi_seg/stages/slide.py`` of git revision ``rev``, imported as ``slide_at_rev``."""
    return module_at(rev, "stages", "slide")


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def read_all(slide: Any, boxes: list[tuple[int, int]], box_px: int, mpp: float,
             one_thread: bool) -> tuple[float, float]:
    """Read every box; (wall, CPU) seconds. The old reader has no ``threads``."""
    kw = {"threads": 1} if one_thread else {}
    t, c = time.perf_counter(), time.process_time()
    for x, y in boxes:
        slide.read_w(x, y, box_px, box_px, mpp, **kw)
    return time.perf_counter() - t, time.process_time() - c


def numpy_bilinear(raw: np.ndarray, u: np.ndarray, v: np.ndarray, rx: int, ry: int
                   ) -> np.ndarray:
    """The interpolation of the former ``Slide._read_resampled``, verbatim."""
    ix = np.floor(u).astype(np.int64)
    tx = (u - ix).astype(np.float32)[None, :, None]
    ix -= rx
    iy = np.floor(v).astype(np.int64)
    ty = (v - iy).astype(np.float32)[:, None, None]
    iy -= ry
    out = np.empty((len(v), len(u), 3), np.uint8)
    for r0 in range(0, len(v), 256):
        r1 = min(r0 + 256, len(v))
        top = raw[iy[r0:r1]].astype(np.float32)
        col = top + (raw[iy[r0:r1] + 1] - top) * ty[r0:r1]
        left = col[:, ix]
        val = left + (col[:, ix + 1] - left) * tx
        out[r0:r1] = np.clip(val + 0.5, 0, 255).astype(np.uint8)
    return out


def remap_bilinear(raw: np.ndarray, u: np.ndarray, v: np.ndarray, rx: int, ry: int
                   ) -> np.ndarray:
    """Today's interpolation on one source: remap on the 1/32 px grid, in 2048 px tiles."""
    qx, qy = on_remap_grid(u), on_remap_grid(v)
    mx = ((qx - rx * 32) / 32).astype(np.float32)
    my = ((qy - ry * 32) / 32).astype(np.float32)
    out = np.empty((len(v), len(u), 3), np.uint8)
    step = 512
    for r0 in range(0, len(v), step):
        for c0 in range(0, len(u), step):
            # Keep each remap's source under its 32767 px limit, as the reader does.
            y0, x0 = int(my[r0]) - 2, int(mx[c0]) - 2
            ms_x, ms_y = mx[c0:c0 + step] - x0, my[r0:r0 + step] - y0
            src = raw[y0:int(ms_y[-1]) + y0 + 3, x0:int(ms_x[-1]) + x0 + 3]
            out[r0:r0 + step, c0:c0 + step] = cv2.remap(
                src, np.tile(ms_x, (len(ms_y), 1)), np.tile(ms_y[:, None], (1, len(ms_x))),
                cv2.INTER_LINEAR)
    return out


def interpolation_only(scale: float, box_px: int, repeats: int) -> dict[str, Any]:
    u = 40.0 + (np.arange(box_px) + 0.5) * scale - 0.5
    margin = math.ceil(2 * scale) + 2
    rx = math.floor(u[0]) - margin
    n_src = math.floor(u[-1]) - rx + margin + 2
    raw = np.random.default_rng(0).integers(0, 256, (n_src, n_src, 3), dtype=np.uint8)
    res: dict[str, list[float]] = {"numpy": [], "remap": []}
    for _ in range(repeats):
        res["numpy"].append(timed(lambda: numpy_bilinear(raw, u, u, rx, rx))[0])
        res["remap"].append(timed(lambda: remap_bilinear(raw, u, u, rx, rx))[0])
    diff = int(np.abs(numpy_bilinear(raw, u, u, rx, rx).astype(np.int16)
                      - remap_bilinear(raw, u, u, rx, rx)).max())
    return {"source_px": n_src, "numpy_s": statistics.median(res["numpy"]),
            "remap_s": statistics.median(res["remap"]), "max_abs_diff_on_noise": diff}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--slide", type=Path, required=True)
    p.add_argument("--rev", default="a051260", help="git revision of the 'old' reader")
    p.add_argument("--mpp", type=float, action="append", default=[],
                   help="µm/px read at (repeatable; default 1.0)")
    p.add_argument("--box", type=int, default=4096)
    p.add_argument("--boxes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out/read_before_after.json"))
    a = p.parse_args(argv)
    old = slide_module_at(a.rev)
    record: dict[str, Any] = {"slide": str(a.slide), "rev": a.rev, "box": a.box,
                              "load_avg_start": os.getloadavg(), "cases": []}
    for mpp in a.mpp or [1.0]:
        with open_slide(a.slide) as s:
            choice = s.choose_level(mpp)
            w_px, h_px = s.size_w(mpp)
        rng = np.random.default_rng(1)
        boxes = [(int(rng.integers(0, max(1, w_px - a.box))),
                  int(rng.integers(0, max(1, h_px - a.box)))) for _ in range(a.boxes)]
        runs: dict[str, list[tuple[float, float]]] = {"old": [], "openslide": [], "tifffile": []}
        for rep in range(a.repeats):
            names = list(runs)
            names = names[rep % 3:] + names[:rep % 3]
            for name in names:
                os.environ[TIFF_ENV] = "0" if name == "openslide" else "1"
                opener = old.open_slide if name == "old" else open_slide
                with opener(a.slide) as s:
                    t = read_all(s, boxes, a.box, mpp, name != "old")
                runs[name].append(t)
                print(f"mpp {mpp} (level {choice.level} x{choice.scale:.3f}) {name:9s}: "
                      f"{t[0] / a.boxes:.2f} s wall, {t[1] / a.boxes:.2f} s CPU per box "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        os.environ.pop(TIFF_ENV, None)
        case = {"mpp": mpp, "level": choice.level, "scale": choice.scale,
                "per_box": {k: {"wall_s": statistics.median(w for w, _ in v) / a.boxes,
                                "cpu_s": statistics.median(c for _, c in v) / a.boxes}
                            for k, v in runs.items()},
                "interpolation_only": interpolation_only(choice.scale, a.box, a.repeats)}
        record["cases"].append(case)
        print(json.dumps(case, indent=1), flush=True)
    record["load_avg_end"] = os.getloadavg()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(record, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
