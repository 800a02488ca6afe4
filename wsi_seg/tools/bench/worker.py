"""Tasks that run on the benchmark cluster's workers (submitted with ``client.submit`` or run
on every worker with ``client.run``): model-only prediction, read-only block reads, warm-up,
memory, and the predictors' device totals."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.tools.bench.machine import peak_rss_bytes, rss_bytes

_POOL: dict[tuple[int, int], np.ndarray] = {}
_POOL_LOCK = threading.Lock()


def _tile_pool(roi: int, batch: int) -> np.ndarray:
    """Two batches of random uint8 tiles, made once per worker process and shared by callers."""
    with _POOL_LOCK:
        tiles = _POOL.get((roi, batch))
        if tiles is None:
            rng = np.random.default_rng(roi * 7919 + batch)
            tiles = rng.integers(0, 256, (2 * batch, roi, roi, 3), dtype=np.uint8)
            _POOL.clear()  # one pool at a time (a 512 px pool of batch 128 is 200 MB)
            _POOL[(roi, batch)] = tiles
        return tiles


def predict_random(model_path: str, infer: Any, seconds: float,
                   max_predictions: int | None = None) -> dict[str, Any]:
    """One caller: full batches of random tiles through the process's cached predictor for
    ``seconds`` (or until ``max_predictions``); its span in ``time.perf_counter`` (system-wide
    on Linux, so spans of callers on several workers can be joined)."""
    from wsi_seg.stages.infer import cached_predictor

    pred = cached_predictor(model_path, infer)
    bs = pred.batch_size
    tiles = _tile_pool(pred.roi_px, bs)
    pred(tiles[:bs])  # compiled already when warm; outside the clock either way
    done, i = 0, 0
    t0 = t1 = time.perf_counter()
    while t1 - t0 < seconds and (max_predictions is None or done < max_predictions):
        pred(tiles[(i % 2) * bs : (i % 2 + 1) * bs])
        done += bs
        i += 1
        t1 = time.perf_counter()
    return {"predictions": done, "t0": t0, "t1": t1, "device": pred.device, "batch_size": bs}


def read_block(slide_path: str, mpp: float, task: Any, roi_px: int) -> float:
    """Read one block's image as :func:`wsi_seg.orchestration.pipeline.run_block` does (the box
    of its kept windows, at ``mpp`` µm/px); seconds."""
    from wsi_seg.orchestration.pipeline import slide_handles
    from wsi_seg.stages.blend import kept_extent

    xw, yw, w_px, h_px = kept_extent(task.starts_y, task.starts_x, task.keep, roi_px)
    with slide_handles.hold(Path(slide_path), None) as slide:
        t = time.perf_counter()
        slide.read_w(xw, yw, w_px, h_px, mpp)
        return time.perf_counter() - t


def warm(model_path: str, infer: Any) -> dict[str, Any]:
    """Load and trace the model on this worker; what :func:`warm_worker` reports."""
    from wsi_seg.orchestration.pipeline import warm_worker

    return asdict(warm_worker(Path(model_path), infer))


def memory() -> dict[str, int]:
    """This worker's peak and current RSS, bytes."""
    return {"peak_rss": peak_rss_bytes(), "rss": rss_bytes()}


def predictor_stats() -> list[dict[str, Any]]:
    """This worker's predictors and what each has done so far."""
    from wsi_seg.stages.infer import cached_predictors

    out = []
    for p in cached_predictors():
        s = p.stats()
        out.append({"id": id(p), "model": str(p.model_path), "device": p.device,
                    "batch_size": p.batch_size, "batches": s.batches, "windows": s.windows,
                    "padded_slots": s.padded_slots, "device_busy_s": s.device_busy_s})
    return out


_POLLS: dict[str, Any] = {}


def _device_totals() -> tuple[float, float, int, int]:
    """``(time, device busy s, batches, windows)`` over this worker's predictors."""
    from wsi_seg.stages.infer import cached_predictors

    busy, batches, windows = 0.0, 0, 0
    for p in cached_predictors():
        s = p.stats()
        busy += s.device_busy_s or 0.0
        batches += s.batches
        windows += s.windows
    return (time.perf_counter(), busy, batches, windows)


def poll_start(period_s: float) -> bool:
    """Sample this worker's device totals every ``period_s`` s until :func:`poll_stop`."""
    stop = threading.Event()
    samples = [_device_totals()]

    def loop() -> None:
        while not stop.wait(period_s):
            samples.append(_device_totals())

    th = threading.Thread(target=loop, daemon=True, name="wsi-seg-bench-poll")
    th.start()
    _POLLS["run"] = (stop, th, samples)
    return True


def poll_stop() -> list[tuple[float, float, int, int]]:
    """Stop :func:`poll_start`'s sampling; its timeline, one last sample at its end."""
    stop, th, samples = _POLLS.pop("run")
    stop.set()
    th.join()
    samples.append(_device_totals())
    return list(samples)
