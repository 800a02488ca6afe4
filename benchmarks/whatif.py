"""Evidence for the pipeline changes recommended in benchmarks/README.md (what-if measurements).

Each comparison runs in this one process, interleaved and repeated, and checks that the
proposed variant gives identical results:

* read: every block's whole halo (as ``run_block`` reads it) vs only the bounding box of the
  block's windows that touch tissue, with 2 threads;
* pyramid: ``build_pyramid`` with the current ``downsample2_mean`` vs a uint16 strided sum
  (on a copy of a finished mosaic, e.g. one kept by ``wsi-seg bench --keep-outputs``).

    python benchmarks/whatif.py --slide ~/.cache/wsi-seg/bench/synth-30000-seed100.svs \
        --mosaic bench-out/runs/unet-30000/synth-30000-seed100/mask.zarr
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np


def strided_downsample2_mean(block: np.ndarray, fallback: Any) -> np.ndarray:
    h, w = block.shape
    if h % 2 or w % 2:
        return np.asarray(fallback(block))
    s = block[0::2, 0::2].astype(np.uint16)
    s += block[1::2, 0::2]
    s += block[0::2, 1::2]
    s += block[1::2, 1::2]
    s += 2
    return (s >> 2).astype(np.uint8)


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def read_whatif(slide_path: Path, repeats: int) -> None:
    from wsi_seg.stages.infer import InferConfig
    from wsi_seg.stages.slide import open_slide
    from wsi_seg.tools.bench import BenchConfig, plan_of, run_config

    cfg = BenchConfig(out_dir=Path(tempfile.mkdtemp()), cache_dir=slide_path.parent)
    rc = run_config(cfg, "unet", cfg.out_dir, InferConfig(batch_size=16), slide_path.parent)
    job = plan_of({"path": str(slide_path)}, rc)
    roi = job.card.input_size_px
    slide = open_slide(slide_path)

    def halo(t: Any) -> tuple[int, int, int, int]:
        b = t.block
        return b.halo_xw, b.halo_yw, b.halo_w_px, b.halo_h_px

    def bbox(t: Any) -> tuple[int, int, int, int]:
        rows, cols = np.where(t.keep.any(1))[0], np.where(t.keep.any(0))[0]
        y0, x0 = int(t.starts_y[rows[0]]), int(t.starts_x[cols[0]])
        return (x0, y0, int(t.starts_x[cols[-1]]) + roi - x0,
                int(t.starts_y[rows[-1]]) + roi - y0)

    def read_one(fn: Any, task: Any) -> None:
        x, y, w, h = fn(task)
        slide.read_w(x, y, w, h, job.mpp)

    def read_all(fn: Any) -> None:
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda task: read_one(fn, task), job.tasks))

    read_all(halo)
    res: dict[str, list[float]] = {"halo": [], "bbox": []}
    for r in range(repeats):
        for name in (("halo", "bbox") if r % 2 == 0 else ("bbox", "halo")):
            res[name].append(timed(lambda n=name: read_all(halo if n == "halo" else bbox)))

    def mpx(fn: Any) -> float:
        return sum(fn(t)[2] * fn(t)[3] for t in job.tasks) / 1e6

    print(f"read {slide_path.name}: whole halos {mpx(halo):.0f} Mpx in "
          f"{statistics.median(res['halo']):.2f} s; kept-window boxes {mpx(bbox):.0f} Mpx in "
          f"{statistics.median(res['bbox']):.2f} s (medians of {repeats}; {job.n_tiles} tiles)")
    shutil.rmtree(cfg.out_dir, ignore_errors=True)


def pyramid_whatif(mosaic_path: Path, repeats: int) -> None:
    import wsi_seg.stages.mosaic as mosaic_mod

    orig = mosaic_mod.downsample2_mean
    tmp = Path(tempfile.mkdtemp())
    res: dict[str, list[float]] = {"current": [], "strided": []}
    try:
        for r in range(repeats):
            for name in (("current", "strided") if r % 2 == 0 else ("strided", "current")):
                copy = tmp / f"{name}.zarr"
                shutil.rmtree(copy, ignore_errors=True)
                shutil.copytree(mosaic_path, copy)
                variant: Any = (orig if name == "current"
                                else lambda b: strided_downsample2_mean(b, orig))
                mosaic_mod.downsample2_mean = variant
                m = mosaic_mod.open_mosaic(copy, mode="r+")
                res[name].append(timed(lambda m=m: mosaic_mod.build_pyramid(m)))
    finally:
        mosaic_mod.downsample2_mean = orig
    a = mosaic_mod.open_mosaic(tmp / "current.zarr")
    b = mosaic_mod.open_mosaic(tmp / "strided.zarr")
    same = all(np.array_equal(np.asarray(a.level(lv)[:]), np.asarray(b.level(lv)[:]))
               for lv in range(1, a.n_levels))
    print(f"pyramid {mosaic_path}: current {statistics.median(res['current']):.2f} s, "
          f"uint16 strided {statistics.median(res['strided']):.2f} s; identical levels: {same}")
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--slide", type=Path, help="synthetic slide for the read what-if")
    p.add_argument("--mosaic", type=Path, help="finished mask.zarr for the pyramid what-if")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.slide:
        read_whatif(args.slide, args.repeats)
    if args.mosaic:
        pyramid_whatif(args.mosaic, max(2, args.repeats - 1))


if __name__ == "__main__":
    main()
