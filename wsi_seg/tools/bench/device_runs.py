"""One ``run_slides`` of the device profiles over all their slides, and what it did: tiles,
the blocks phase, stage seconds, the start-up, the predictors' batches and the device."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsi_seg.tools.bench import worker
from wsi_seg.tools.bench.cluster import Bench
from wsi_seg.tools.bench.measure import run_slides_timed
from wsi_seg.tools.bench.sampler import NOT_SAMPLED, DeviceSampler, busy_between, stats_delta


def run_config(out_dir: Path, model: Path, infer: Any) -> Any:
    """``wsi-seg run``'s defaults (no truth: a user's folder has none)."""
    from wsi_seg.orchestration.pipeline import RunConfig

    return RunConfig(out_dir=out_dir, model_path=model, infer=infer, overwrite=True)


def read_run(out_dir: Path) -> dict[str, Any]:
    """``run.json`` of a finished run, summarised: tiles, predictions, the blocks phase
    (the longest slide's, s: all slides' blocks are submitted at once), stage seconds summed
    over slides, and the start-up line."""
    run = json.loads((out_dir / "run.json").read_text())
    slides = [s for s in run["slides"] if s.get("status") == "ok"]
    preds = 0
    for s in slides:
        rep = json.loads(Path(s["report"]).read_text())
        preds += int(rep["tile_predictions"])
    stages: dict[str, float] = {}
    for s in slides:
        for k, v in (s.get("stage_s") or {}).items():
            stages[k] = round(stages.get(k, 0.0) + v, 4)
    return {"tiles": int(run["tiles"]), "tile_predictions": preds, "slides": len(slides),
            "blocks_wall_s": max((s.get("blocks_wall_s") or s["wall_s"] for s in slides),
                                 default=0.0),
            "stage_s": stages, "startup_s": run.get("startup_s"),
            "startup_workers": run.get("startup_workers") or []}


def _rates(rec: dict[str, Any], wall: float) -> None:
    """Add tiles/s over the blocks phase and over the wall after the start-up."""
    startup = rec["startup_s"] or 0.0
    if rec["blocks_wall_s"] > 0:
        rec["blocks_tiles_per_s"] = round(rec["tiles"] / rec["blocks_wall_s"], 2)
    if wall > startup:
        rec["tiles_per_s_after_startup"] = round(rec["tiles"] / (wall - startup), 2)


def run_once(bench: Bench | None, slides: Sequence[Path], run_cfg: Any,
             sampler: DeviceSampler | None = None, poll_s: float | None = None
             ) -> dict[str, Any]:
    """One ``run_slides`` over the slides: on ``bench`` (warm), or with a fresh default local
    cluster when ``bench`` is None (as ``wsi-seg run``, start-up inside the wall). With
    ``poll_s`` the workers' device totals are sampled every ``poll_s`` s
    (``rec["timelines"]``); with ``sampler`` the device's utilisation in the blocks phase."""
    from wsi_seg.orchestration.cluster import ClusterConfig

    before = bench.client.run(worker.predictor_stats) if bench else None
    if bench and poll_s:
        bench.client.run(worker.poll_start, poll_s)
    if sampler:
        sampler.start()
    load0 = os.getloadavg()[0]
    cluster = (ClusterConfig(dashboard=False) if bench is None
               else ClusterConfig(scheduler=bench.address))
    try:
        _, t0, t1 = run_slides_timed(slides, run_cfg, cluster,
                                     gpu_resource=(bool(bench.gpus) or None) if bench else None)
    finally:
        samples = sampler.stop() if sampler else []
        timelines = bench.client.run(worker.poll_stop) if bench and poll_s else None
    rec = read_run(Path(run_cfg.out_dir))
    rec.update(wall_s=round(t1 - t0, 3), tiles_per_s=round(rec["tiles"] / (t1 - t0), 2),
               load_avg=[round(load0, 2), round(os.getloadavg()[0], 2)])
    _rates(rec, t1 - t0)
    if bench is not None and before is not None:
        rec["predictor"] = stats_delta(before, bench.client.run(worker.predictor_stats))
    if timelines is not None:
        rec["timelines"] = timelines
    if sampler is not None:
        start = t0 + (rec["startup_s"] or 0.0)
        rec["device_samples"] = (busy_between(samples, start, start + rec["blocks_wall_s"])
                                 if sampler.available else {"note": NOT_SAMPLED})
    return rec
