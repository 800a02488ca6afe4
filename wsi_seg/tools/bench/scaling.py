"""The standard profile's scaling part: e2e and model-only with 1 vs 2 worker processes, a
batch size sweep, and on a GPU mixed precision on/off and the GPU's idle share."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from wsi_seg.tools.bench.cluster import Bench, cluster_session, warm
from wsi_seg.tools.bench.config import NOT_MEASURED_GPU, PROFILES
from wsi_seg.tools.bench.machine import nvidia_gpus
from wsi_seg.tools.bench.measure import plan_of
from wsi_seg.tools.bench.record import interleaved, summary
from wsi_seg.tools.bench.sampler import DeviceSampler
from wsi_seg.tools.bench.standard_measures import measure_e2e

if TYPE_CHECKING:
    from wsi_seg.tools.bench.standard import Benchmark


def scaling(bm: Benchmark, bench: Bench) -> dict[str, Any]:
    """Workers 1 vs 2 (the other count on a second cluster), the batch size sweep, mixed
    precision and the GPU's idle share, on the scaling size's slide."""
    cfg = bm.cfg
    size = cfg.scaling_size or min(cfg.sizes)
    slide = bm.slide(size)
    out: dict[str, Any] = {"size_px": size}
    with cluster_session(2 if bench.workers == 1 else 1, cfg.threads_per_worker) as alt:
        for kind in cfg.models:
            warm(alt, cfg.model_path(kind), alt.infer(PROFILES[kind].batch_size))
        out["workers"] = _workers_scaling(bm, [bench, alt], slide)
    out["batch_size"] = _batch_sweep(bm, bench, slide)
    out["mixed_precision"] = _mixed_precision(bm, bench, slide)
    out["gpu_idle_share"] = _gpu_idle(bm, bench, slide)
    return out


def _workers_scaling(bm: Benchmark, clusters: list[Bench], slide: dict[str, Any]
                     ) -> list[dict[str, Any]]:
    cfg = bm.cfg
    size = slide["size_px"]
    items = [(c, kind, what) for c in range(len(clusters)) for kind in cfg.models
             for what in ("e2e", "model")]
    jobs: dict[str, Any] = {}

    def measure(item: tuple[int, str, str], r: int) -> dict[str, Any]:
        c, kind, what = item
        b = clusters[c]
        rc = bm.run_cfg(kind, b, f"scale{c}-{kind}-{size}")
        if kind not in jobs:
            jobs[kind] = plan_of(slide, rc)
        bm.say(f"bench: scaling, {b.workers} worker(s), {kind}: {what} "
                 f"(round {r + 1}/{cfg.repeats})")
        if what == "e2e":
            return measure_e2e(b, slide, rc)
        return bm.model_only(b, kind, rc, jobs[kind])

    got = interleaved(items, cfg.repeats, measure)
    rows = []
    for c, b in enumerate(clusters):
        for kind in cfg.models:
            e2e = got[(c, kind, "e2e")]
            rows.append({
                "model": kind, "workers": b.workers,
                "threads_per_worker": b.threads_per_worker, "tf_threads": b.tf_threads,
                "e2e_tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
                "model_only_predictions_per_s": summary(
                    [m["predictions_per_s"] for m in got[(c, kind, "model")]]),
                "wall_s": summary([e["wall_s"] for e in e2e]),
            })
    return rows


def _batch_sweep(bm: Benchmark, bench: Bench, slide: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = bm.cfg
    items = [(kind, bs, what) for kind in cfg.models for bs in cfg.batch_sizes.get(kind, ())
             for what in ("model", "e2e")]
    jobs: dict[str, Any] = {}

    def measure(item: tuple[str, int, str], r: int) -> dict[str, Any]:
        kind, bs, what = item
        rc = bm.run_cfg(kind, bench, f"batch-{kind}-{bs}", batch_size=bs)
        if kind not in jobs:
            jobs[kind] = plan_of(slide, rc)
        bm.say(f"bench: batch {bs}, {kind}: {what} (round {r + 1}/{cfg.repeats})")
        if what == "model":
            return bm.model_only(bench, kind, rc, jobs[kind])
        return measure_e2e(bench, slide, rc)

    got = interleaved(items, cfg.repeats, measure)
    return [{"model": kind, "batch_size": bs,
             "model_only_predictions_per_s": summary(
                 [m["predictions_per_s"] for m in got[(kind, bs, "model")]]),
             "e2e_tiles_per_s": summary([e["tiles_per_s"] for e in got[(kind, bs, "e2e")]])}
            for kind in cfg.models for bs in cfg.batch_sizes.get(kind, ())]


def _mixed_precision(bm: Benchmark, bench: Bench, slide: dict[str, Any]) -> dict[str, Any]:
    if not any(d.startswith("/GPU") for d in bench.devices):
        return {"measured": False, "note": NOT_MEASURED_GPU}
    cfg = bm.cfg
    rows = []
    for kind in cfg.models:

        def measure(mp: bool, r: int, kind: str = kind) -> dict[str, Any]:
            rc = bm.run_cfg(kind, bench, f"mp-{kind}-{int(mp)}", mixed_precision=mp)
            warm(bench, cfg.model_path(kind), rc.infer)
            job = plan_of(slide, rc)
            return {"model": bm.model_only(bench, kind, rc, job),
                    "e2e": measure_e2e(bench, slide, rc)}

        got = interleaved([False, True], cfg.repeats, measure)
        rows += [{"model": kind, "mixed_precision": mp,
                  "model_only_predictions_per_s": summary(
                      [g["model"]["predictions_per_s"] for g in got[mp]]),
                  "e2e_tiles_per_s": summary([g["e2e"]["tiles_per_s"] for g in got[mp]])}
                 for mp in (False, True)]
    return {"measured": True, "rows": rows}


def _gpu_idle(bm: Benchmark, bench: Bench, slide: dict[str, Any]) -> dict[str, Any]:
    if not any(d.startswith("/GPU") for d in bench.devices) or not nvidia_gpus():
        return {"measured": False, "note": NOT_MEASURED_GPU}
    rows = []
    for kind in bm.cfg.models:
        rc = bm.run_cfg(kind, bench, f"gpu-{kind}")
        samples = [measure_e2e(bench, slide, rc, DeviceSampler(0.2))["gpu"]
                   for _ in range(bm.cfg.repeats)]
        rows.append({"model": kind,
                     "idle_share": summary([s["idle_share"] or 0.0 for s in samples]),
                     "mean_utilisation": summary([s["mean_utilisation"] or 0.0
                                                  for s in samples])})
    return {"measured": True, "rows": rows}
