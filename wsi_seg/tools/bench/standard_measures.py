"""The standard profile's measurements of one slide: a warm end-to-end run, a cold run as
``wsi-seg run`` makes it, and the seeds' way (a plain loop over the same windows)."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.tools.bench.cluster import Bench
from wsi_seg.tools.bench.config import PROFILES, BenchConfig
from wsi_seg.tools.bench.machine import load_1min, mib
from wsi_seg.tools.bench.measure import run_slides_timed
from wsi_seg.tools.bench.sampler import DeviceSampler, idle_share

BLOCK_STAGES = ("load", "read", "cut", "predict", "blend", "write")
FINISH_STAGES = ("pyramid", "vectorize", "geojson", "score", "overlay")


def run_config(cfg: BenchConfig, kind: str, out_dir: Path, infer: Any, truth_dir: Path) -> Any:
    """The RunConfig of model ``kind``'s :data:`PROFILES` entry, scored against the truth in
    ``truth_dir``."""
    from wsi_seg.orchestration.pipeline import RunConfig

    p = PROFILES[kind]
    return RunConfig(out_dir=out_dir, model_path=cfg.model_path(kind), slide_mpp=None,
                     overlap=p.overlap, stride_px=p.stride_px, blend=p.blend,
                     block_px=p.block_px, chunk_px=p.chunk_px, infer=infer,
                     min_area_um2=p.min_area_um2, simplify_um=p.simplify_um, truth=truth_dir,
                     overwrite=True)


def measure_e2e(bench: Bench, slide: dict[str, Any], run_cfg: Any,
                gpu_sampler: DeviceSampler | None = None) -> dict[str, Any]:
    """One real ``run_slides`` of the slide on the bench cluster; its figures (seconds,
    tiles/s, the report's stage seconds; with ``gpu_sampler`` the GPU's idle share)."""
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.pipeline import slide_stem

    load0 = load_1min()
    if gpu_sampler:
        gpu_sampler.start()
    path = Path(slide["path"])
    _, t0, t1 = run_slides_timed([path], run_cfg, ClusterConfig(scheduler=bench.address),
                                 gpu_resource=bool(bench.gpus) or None)
    wall = t1 - t0
    gpu = idle_share(gpu_sampler.stop()) if gpu_sampler else None
    report = json.loads((Path(run_cfg.out_dir) / slide_stem(path) / "report.json").read_text())
    stages = report["stage_s"]
    rec = {
        "wall_s": wall,
        # The blocks phase (reports before 58300ab called it wall_s).
        "blocks_wall_s": report.get("blocks_wall_s", report["wall_s"]),
        "finish_s": sum(stages.get(k, 0.0) for k in FINISH_STAGES),
        "tiles": report["tiles"],
        "tile_predictions": report["tile_predictions"],
        "blocks": report["blocks"],
        "tiles_per_s": report["tiles"] / wall,
        "blocks_tiles_per_s": report.get("blocks_tiles_per_s", report["tiles_per_s"]),
        "predictions_per_s": report["tile_predictions"] / wall,
        "stage_s": stages,
        "score": report.get("score"),
        "load_avg": [load0, load_1min()],
    }
    if gpu is not None:
        rec["gpu"] = gpu
    return rec


def measure_cold(slide: dict[str, Any], run_cfg: Any, workers: int | None,
                 threads_per_worker: int | None) -> dict[str, Any]:
    """One ``run_slides`` exactly as ``wsi-seg run`` does it: a fresh local cluster, whose
    start, TensorFlow import and model load are part of the wall time (s)."""
    from wsi_seg.orchestration.cluster import ClusterConfig

    cfg = replace(run_cfg, infer=replace(run_cfg.infer, threads=None))
    result, t0, t1 = run_slides_timed(
        [Path(slide["path"])], cfg,
        ClusterConfig(workers=workers, threads_per_worker=threads_per_worker, dashboard=False))
    return {"wall_s": t1 - t0, "tiles": result.tiles}


def _windows(job: Any) -> list[tuple[int, int]]:
    """The distinct kept windows ``(y, x)`` of a plan, row-major."""
    return sorted({(int(y), int(x)) for t in job.tasks
                   for i, y in enumerate(t.starts_y) for j, x in enumerate(t.starts_x)
                   if t.keep[i, j]})


def seeds_way(slide: dict[str, Any], model_path: Path, job: Any, max_s: float
              ) -> dict[str, Any]:
    """The seeds' way: ``read_region`` + ``model.predict`` per tile, stitched into one array.

    Runs in this process over the same windows the plan predicts (row-major), until all are
    done or ``max_s`` s have passed; tiles/s over the windows done.
    """
    import cv2
    import openslide

    from wsi_seg.stages.card import load_model
    from wsi_seg.stages.models import preprocess

    model, card = load_model(model_path)
    roi = card.window_px
    osr = openslide.OpenSlide(slide["path"])
    try:
        slide_mpp = float(osr.properties.get(openslide.PROPERTY_NAME_MPP_X, 0) or 0.5)
        f = card.mpp / slide_mpp
        level = osr.get_best_level_for_downsample(f)
        side = max(1, round(roi * f / float(osr.level_downsamples[level])))
        h_w, w_w = job.geom.height_px, job.geom.width_px
        out = np.zeros((h_w, w_w), np.float32)  # the whole slide at the working resolution
        windows = _windows(job)
        x0 = np.zeros((1, roi, roi, 3), np.uint8)
        model.predict(preprocess(x0, card), verbose=0)  # load and build outside the clock
        done = 0
        t0 = time.perf_counter()
        for yw, xw in windows:
            region = osr.read_region((int(xw * f), int(yw * f)), level, (side, side))
            tile = np.asarray(region.convert("RGB"))
            if side != roi:
                tile = cv2.resize(tile, (roi, roi), interpolation=cv2.INTER_AREA)
            p = model.predict(preprocess(tile[None], card), verbose=0)
            ys, xs = max(0, yw), max(0, xw)
            h, w = min(roi, h_w - ys), min(roi, w_w - xs)
            out[ys : ys + h, xs : xs + w] = (p[0, :h, :w, 0] if card.kind == "unet"
                                             else float(np.ravel(p)[0]))
            done += 1
            if time.perf_counter() - t0 > max_s:
                break
        secs = time.perf_counter() - t0
    finally:
        osr.close()
    return {"tiles": done, "tiles_total": len(windows), "seconds": secs,
            "tiles_per_s": done / secs if secs > 0 else None,
            "complete": done == len(windows), "array_mib": mib(out.nbytes)}
