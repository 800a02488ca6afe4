"""The gpu profile's steps: slides and models, then per model (bundled, heavy) interleaved
e2e / model-only / read-only rounds on the warm cluster, and cold runs among them (a fresh
cluster, as ``wsi-seg run``), then the noisy map."""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_seg.tools.bench.cluster import warm
from wsi_seg.tools.bench.device_runs import run_config, run_once
from wsi_seg.tools.bench.measure import measure_model_only, measure_read_only, plan_of
from wsi_seg.tools.bench.record import interleaved, summary
from wsi_seg.tools.bench.sampler import NOT_SAMPLED, DeviceSampler
from wsi_seg.tools.bench.synthetic import finish_unets, model_record, start_unets

if TYPE_CHECKING:
    from wsi_seg.tools.bench.device import DeviceBenchmark

#: What one round of a model's entry measures, interleaved (the order rotates every round);
#: with the ``cold`` step, a cold run as well (:func:`entry_measures`).
MEASURES = ("e2e", "model", "read")
#: The measures that need the warm cluster (a cold run starts its own).
WARM_MEASURES = frozenset(MEASURES)


def entry_measures(steps: tuple[str, ...]) -> tuple[str, ...]:
    """What each model entry measures: :data:`MEASURES`, and ``cold`` with the cold step,
    so the cold run's ratio is taken against the model-only rate of the same rounds."""
    return (*MEASURES, "cold") if "cold" in steps else MEASURES


def run_gpu(bm: DeviceBenchmark) -> None:
    """The gpu profile: the warm cluster's figures first (what the issue's goals are about),
    then the cold run, then the noisy map (whose polygons may take long)."""
    cfg = bm.cfg
    got = bm.step("slides and models", functools.partial(_prepare, bm))
    if got is None:
        return
    slides, built = got
    bm.record["slides"] = slides
    main = [Path(s["path"]) for s in slides if "main" in s["roles"]]
    noisy_slide = next((Path(s["path"]) for s in slides if "noisy" in s["roles"]), None)
    models: dict[str, Path] = {"bundled": cfg.main_model(), **built}
    bm.record["models"] = {k: model_record(p) for k, p in models.items()}
    bm.save()
    measures = entry_measures(cfg.steps)
    entries = [k for k in ("bundled", "heavy") if k in cfg.steps and k in models]
    if not entries and "cold" in cfg.steps:  # the cold run alone, of the bundled model
        entries, measures = ["bundled"], ("cold",)
    for key in entries:
        if main:
            model_entry(bm, key, models[key], main, measures)
    if "noisy" in models and noisy_slide is not None:
        bm.step("noisy", lambda: _noisy(bm, models["noisy"], noisy_slide))


def _prepare(bm: DeviceBenchmark) -> tuple[list[dict[str, Any]], dict[str, Path]]:
    """The slides and the random-weight models: the models build in a child while the slides
    are written in others."""
    cfg = bm.cfg
    wanted = {k: spec for k, spec in (("heavy", cfg.heavy), ("noisy", cfg.noisy))
              if k in cfg.steps}
    t = time.perf_counter()
    paths, proc = start_unets(cfg.cache_dir, list(wanted.values()))
    try:
        slides = bm.slides(noisy="noisy" in cfg.steps)
    except BaseException:
        if proc is not None:
            proc.kill()
        raise
    left = max(1.0, cfg.step_timeout_s - (time.perf_counter() - t))
    return slides, dict(zip(wanted, finish_unets(paths, proc, left), strict=True))


def model_entry(bm: DeviceBenchmark, key: str, model: Path, slides: list[Path],
                measures: tuple[str, ...] = MEASURES) -> None:
    """One model's entry: plan and warm, then interleaved rounds of ``measures`` (e2e /
    model-only / read-only, and cold runs), each a step; the figures are updated (and saved)
    after every round's measurement."""
    entry: dict[str, Any] = {"model": key, "model_path": str(model),
                             "card": bm.record["models"][key]}
    bm.record.setdefault("runs", {})[key] = entry
    jobs: list[Any] = []  # the plans of the model being measured
    warm_too = bool(WARM_MEASURES.intersection(measures))
    if not bm.step(f"{key}: plan and warm" if warm_too else f"{key}: plan",
                   functools.partial(_plan_and_warm, bm, entry, model, slides, jobs,
                                     warm_too)):
        return

    def measure(what: str, r: int) -> dict[str, Any] | None:
        label = f"{key}: {what} (round {r + 1}/{bm.cfg.repeats})"
        return bm.step(label, functools.partial(_measure, bm, what, model, slides, jobs))

    def update(got: dict[str, list[dict[str, Any]]]) -> None:
        entry.update(entry_figures(entry["plan"], got))
        bm.save()

    interleaved(measures, bm.cfg.repeats, measure, update)


def _plan_and_warm(bm: DeviceBenchmark, entry: dict[str, Any], model: Path,
                   slides: list[Path], jobs: list[Any], warm_too: bool = True) -> bool:
    infer = bm.infer()
    rc = run_config(bm.runs_dir / f"{entry['model']}-plan", model, infer)
    jobs[:] = [plan_of({"path": str(p)}, rc) for p in slides]
    entry["plan"] = {"slides": len(jobs), "blocks": sum(j.n_blocks for j in jobs),
                     "tiles": sum(j.n_tiles for j in jobs),
                     "tile_predictions": sum(j.n_tile_predictions for j in jobs),
                     "tile_px": jobs[0].card.window_px if jobs else None}
    if not warm_too:
        return True
    t = time.perf_counter()
    got = warm(bm.bench(), model, infer)
    entry["warm"] = {"seconds": round(time.perf_counter() - t, 2), "workers": got}
    entry["device"] = sorted({w["device"] for w in got})
    return True


def _measure(bm: DeviceBenchmark, what: str, model: Path, slides: list[Path],
             jobs: list[Any]) -> dict[str, Any]:
    if what == "cold":  # as ``wsi-seg run``: a fresh default cluster, start-up in the wall
        return run_once(None, slides, run_config(bm.runs_dir / "cold", model,
                                                 bm.infer(cold=True)))
    bench = bm.bench()
    infer = bm.infer()
    sampler = DeviceSampler(bm.cfg.sample_period_s)
    if what == "e2e":
        return run_once(bench, slides, run_config(bm.runs_dir / "e2e", model, infer), sampler)
    if what == "model":
        return measure_model_only(bench, model, infer, bm.cfg.model_seconds, sampler=sampler)
    if not jobs:  # the plans went with a timed-out step's cluster
        rc = run_config(bm.runs_dir / "plan", model, infer)
        jobs[:] = [plan_of({"path": str(p)}, rc) for p in slides]
    return measure_read_only(bench, jobs)


def _e2e_figures(e2e: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"e2e": {
        "tiles_per_s": summary([e["tiles_per_s"] for e in e2e], 2),
        "blocks_tiles_per_s": summary([e.get("blocks_tiles_per_s", 0.0) for e in e2e], 2),
        "wall_s": summary([e["wall_s"] for e in e2e]),
        "blocks_wall_s": summary([e["blocks_wall_s"] for e in e2e]),
        "startup_s": [e["startup_s"] for e in e2e],
        "predictor": e2e[-1].get("predictor"),
        "stage_s": {k: round(statistics.median(e["stage_s"].get(k, 0.0) for e in e2e), 3)
                    for k in e2e[-1]["stage_s"]},
        "load_avg": [e["load_avg"] for e in e2e],
    }}
    shares = [e["device_samples"].get("busy_share") for e in e2e if e.get("device_samples")]
    out["device_busy_blocks"] = (summary([v for v in shares if v is not None], 3)
                                 if any(v is not None for v in shares)
                                 else {"note": NOT_SAMPLED})
    return out


def _cold_figures(cold: list[dict[str, Any]]) -> dict[str, Any]:
    return {"cold": {
        "tiles": cold[-1]["tiles"],
        "tiles_per_s": summary([c["tiles_per_s"] for c in cold], 2),
        "wall_s": summary([c["wall_s"] for c in cold]),
        "startup_s": summary([c.get("startup_s") or 0.0 for c in cold]),
        "tiles_per_s_after_startup": summary([c.get("tiles_per_s_after_startup") or 0.0
                                              for c in cold], 2),
        "blocks_tiles_per_s": summary([c.get("blocks_tiles_per_s") or 0.0 for c in cold], 2),
        "startup_workers": cold[-1].get("startup_workers"),
        "load_avg": [c["load_avg"] for c in cold],
    }}


def _model_limit(model: list[dict[str, Any]], dup: float) -> float:
    """The model-only limit in distinct tiles/s: the median predictions/s over the halo
    factor."""
    return statistics.median(m["predictions_per_s"] for m in model) / dup


def _limits(e2e: list[dict[str, Any]], model: list[dict[str, Any]],
            read: list[dict[str, Any]], dup: float) -> dict[str, Any]:
    """The slower limit (medians) and the e2e ratios against it."""
    limit_m = _model_limit(model, dup)
    limit_r = statistics.median(r["tiles_per_s"] for r in read)
    limit = min(limit_m, limit_r)
    e2e_tps = statistics.median(e["tiles_per_s"] for e in e2e)
    blocks_tps = statistics.median(e.get("blocks_tiles_per_s", 0.0) for e in e2e)
    return {"limit_tiles_per_s": round(limit, 2),
            "limited_by": "model" if limit_m <= limit_r else "read",
            "ratio": round(e2e_tps / limit, 4), "ratio_blocks": round(blocks_tps / limit, 4)}


def entry_figures(plan: dict[str, Any], got: dict[str, list[dict[str, Any]]]
                  ) -> dict[str, Any]:
    """Summaries of a model's rounds and the ratio against the slower limit."""
    e2e, model, read = got.get("e2e", []), got.get("model", []), got.get("read", [])
    cold = got.get("cold", [])
    dup = plan["tile_predictions"] / plan["tiles"] if plan["tiles"] else 1.0
    out: dict[str, Any] = {"halo_factor": round(dup, 4)}
    if e2e:
        out.update(_e2e_figures(e2e))
    if cold:
        out.update(_cold_figures(cold))
        if model:  # the figure: a cold run against the model-only rate, same rounds
            out["ratio_cold"] = round(statistics.median(c["tiles_per_s"] for c in cold)
                                      / _model_limit(model, dup), 4)
    if model:
        out["model_only"] = {
            "predictions_per_s": summary([m["predictions_per_s"] for m in model], 2),
            "limit_tiles_per_s": summary([m["predictions_per_s"] / dup for m in model], 2),
            "callers": model[-1]["callers"], "batch_size": model[-1]["batch_size"],
            "device": model[-1]["device"],
            "device_samples": model[-1].get("device_samples"),
        }
    if read:
        out["read_only"] = {"tiles_per_s": summary([r["tiles_per_s"] for r in read], 2),
                            "threads": read[-1]["threads"], "workers": read[-1]["workers"]}
    if e2e and model and read:
        out.update(_limits(e2e, model, read, dup))
    return out


def _noisy(bm: DeviceBenchmark, model: Path, slide: Path) -> dict[str, Any]:
    """Vectorizing seconds / run seconds of a random-weight UNet's speckled map, over
    ``repeats`` runs (this figure swings with the machine's load): the run with the median
    share is reported, every run's figures under ``runs``."""
    bench = bm.bench()
    infer = bm.infer()
    t = time.perf_counter()
    warm(bench, model, infer)
    warm_s = time.perf_counter() - t
    rc = run_config(bm.runs_dir / "noisy", model, infer)
    runs = []
    for _ in range(max(1, bm.cfg.repeats)):
        rec = run_once(bench, [slide], rc)
        vec = rec["stage_s"].get("vectorize", 0.0)
        runs.append({"wall_s": rec["wall_s"], "blocks_wall_s": rec["blocks_wall_s"],
                     "tiles": rec["tiles"], "vectorize_s": vec,
                     "vectorize_share": round(vec / rec["wall_s"], 4) if rec["wall_s"] else None,
                     "stage_s": rec["stage_s"], "load_avg": rec["load_avg"]})
    median = sorted(runs, key=lambda r: r["vectorize_share"] or 0.0)[(len(runs) - 1) // 2]
    report = next(rc.out_dir.glob("*/report.json"))
    rep = json.loads(report.read_text())
    out = {"slide": str(slide), "model": model.name, "warm_s": round(warm_s, 2), **median,
           "tumour_regions": rep.get("tumour_regions"),
           "tumour_mm2": rep.get("tumour_mm2"),
           "speckle": speckle(report.parent / "mask.zarr", rep.get("threshold", 0.5)),
           "runs": runs, "goal": "vectorize_share < 0.10"}
    bm.record["noisy"] = out
    return out


def speckle(mosaic_path: Path, threshold: float) -> dict[str, Any]:
    """How speckled a mosaic is: the share of predicted pixels at or above the threshold and
    the number of 4-connected foreground components (what polygons are traced from)."""
    import cv2

    from wsi_seg.stages.mosaic import open_mosaic

    arr = np.asarray(open_mosaic(mosaic_path).level(0)[...])
    fg = arr >= np.ceil(threshold * 255)
    predicted = int((arr > 0).sum())
    n, _ = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
    return {"foreground_share": round(int(fg.sum()) / predicted, 4) if predicted else None,
            "components": int(n) - 1, "mosaic_px": int(arr.size)}
