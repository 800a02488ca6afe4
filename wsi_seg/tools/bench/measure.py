"""The measurements every profile shares: a slide's plan, one timed ``run_slides``, the
model-only rate and the read-only rate on a benchmark cluster."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench import worker
from wsi_seg.tools.bench.cluster import Bench
from wsi_seg.tools.bench.machine import load_1min
from wsi_seg.tools.bench.sampler import NOT_SAMPLED, DeviceSampler, busy_between


def plan_of(slide: dict[str, Any], run_cfg: Any) -> Any:
    """The slide's block plan exactly as the run makes it (a scratch work directory)."""
    from wsi_seg.orchestration.pipeline import prepare_slide

    scratch = Path(run_cfg.out_dir) / ".plan"
    try:
        return prepare_slide(Path(slide["path"]), replace(run_cfg, out_dir=scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_slides_timed(slides: Sequence[Path], run_cfg: Any, cluster: Any,
                     gpu_resource: bool | None = None) -> tuple[Any, float, float]:
    """One ``run_slides`` into a cleared ``run_cfg.out_dir`` on ``cluster`` (a
    ``ClusterConfig``); its result and ``perf_counter`` start and end. A failed slide raises."""
    from wsi_seg.orchestration.runner import run_slides

    out = Path(run_cfg.out_dir)
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    result = run_slides(list(slides), run_cfg, cluster, quiet=True, gpu_resource=gpu_resource)
    t1 = time.perf_counter()
    if not result.ok:
        err = next((s.error for s in result.slides if s.error), "?")
        raise WsiSegError(f"benchmark run failed: {err}", slides[0] if len(slides) == 1
                          else None)
    return result, t0, t1


def measure_model_only(bench: Bench, model_path: Path, infer: Any, seconds: float,
                       max_predictions: int | None = None, sampler: DeviceSampler | None = None
                       ) -> dict[str, Any]:
    """Model-only predictions/s: every worker predicts random tiles at once, with as many
    concurrent callers per worker as a run has task threads, so the model sees the same
    concurrency as in a run (one caller leaves the cores idle while Python prepares a batch,
    which would understate the limit). Each caller stops after ``seconds`` s or its share of
    ``max_predictions``; the rate is over the callers' joint span."""
    addrs = bench.worker_addresses()
    callers = bench.threads_per_worker
    per_caller = (None if max_predictions is None
                  else max(infer.batch_size, -(-max_predictions // (len(addrs) * callers))))
    if sampler:
        sampler.start()
    load0 = load_1min()
    t = time.perf_counter()
    futs = [bench.client.submit(worker.predict_random, str(model_path), infer, seconds,
                                per_caller, pure=False, workers=[a], allow_other_workers=False)
            for a in addrs for _ in range(callers)]
    parts = [f.result() for f in futs]
    wall = time.perf_counter() - t
    samples = sampler.stop() if sampler else []
    t0, t1 = min(p["t0"] for p in parts), max(p["t1"] for p in parts)
    n = sum(p["predictions"] for p in parts)
    rec: dict[str, Any] = {"predictions": n, "wall_s": wall, "span_s": t1 - t0,
                           "predictions_per_s": n / (t1 - t0), "callers": len(parts),
                           "callers_per_worker": callers, "batch_size": parts[0]["batch_size"],
                           "device": sorted({p["device"] for p in parts}),
                           "load_avg": [load0, load_1min()]}
    if sampler is not None:
        rec["device_samples"] = (busy_between(samples, t0, t1) if sampler.available
                                 else {"note": NOT_SAMPLED})
    return rec


def measure_read_only(bench: Bench, jobs: Sequence[Any]) -> dict[str, Any]:
    """Read-only: every block's kept-window box of every slide's plan, read as block tasks on
    the same workers and task threads, no model; distinct tiles (and predictions) / wall s."""
    load0 = load_1min()
    t = time.perf_counter()
    futs = [bench.client.submit(worker.read_block, str(job.slide_path), job.mpp, task,
                                job.spec.roi_px, pure=False)
            for job in jobs for task in job.tasks]
    secs = [f.result() for f in futs]
    wall = time.perf_counter() - t
    tiles = sum(j.n_tiles for j in jobs)
    return {"wall_s": wall, "read_task_s": sum(secs), "tiles": tiles,
            "tiles_per_s": tiles / wall,
            "predictions_per_s": sum(j.n_tile_predictions for j in jobs) / wall,
            "threads": bench.threads_per_worker, "workers": bench.workers,
            "load_avg": [load0, load_1min()]}
