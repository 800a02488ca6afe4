"""The standard profile's figures from its raw measurements: throughput against the limits,
where the wall time goes, stage tables, the seeds' way and memory relative to the smallest
slide. Pure functions of the measurements (no cluster, no clock)."""

from __future__ import annotations

import statistics
from typing import Any

from wsi_seg.tools.bench.config import PROFILES
from wsi_seg.tools.bench.record import summary
from wsi_seg.tools.bench.standard_measures import BLOCK_STAGES, FINISH_STAGES


def time_budget(job: Any, batch_size: int, e2e: list[dict[str, Any]],
                model: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the run's wall time goes, against the model's own pace (medians, seconds).

    ``model_distinct_s`` is what the model alone needs for the distinct windows; the other
    terms are what the run adds: re-predicted halo windows, padding of each block's last batch,
    the rest of the blocks phase not hidden behind prediction (reading, cutting, blending,
    writing, and their contention with the model for the cores), the serial finishing stages,
    and the rest (planning, tissue, scheduling, records). They sum to the wall time.
    """
    rate = statistics.median(m["predictions_per_s"] for m in model)
    wall = statistics.median(e["wall_s"] for e in e2e)
    blocks = statistics.median(e["blocks_wall_s"] for e in e2e)
    finish = statistics.median(e["finish_s"] for e in e2e)
    pad = sum(-(-t.block.n_windows // batch_size) * batch_size - t.block.n_windows
              for t in job.tasks)
    terms = {
        "model_distinct_s": job.n_tiles / rate,
        "halo_duplicates_s": (job.n_tile_predictions - job.n_tiles) / rate,
        "batch_padding_s": pad / rate,
    }
    terms["blocks_not_hidden_s"] = blocks - sum(terms.values())
    terms["finish_s"] = finish
    terms["other_s"] = wall - blocks - finish
    return {"wall_s": round(wall, 3), "padded_predictions": pad,
            **{k: round(v, 3) for k, v in terms.items()},
            "shares": {k.removesuffix("_s"): round(v / wall, 4) for k, v in terms.items()}}


def _stage_order(k: str) -> tuple[int, str]:
    known = BLOCK_STAGES + FINISH_STAGES
    return (known.index(k) if k in known else 99, k)


def stage_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median stage seconds over repeated runs and their share of the median wall time."""
    wall = statistics.median(r["wall_s"] for r in runs)
    blocks_wall = statistics.median(r["blocks_wall_s"] for r in runs)
    rows = {}
    for k in sorted({k for r in runs for k in r["stage_s"]}, key=_stage_order):
        total = statistics.median(r["stage_s"].get(k, 0.0) for r in runs)
        rows[k] = {"total_s": round(total, 3), "share_of_wall": round(total / wall, 4),
                   "kind": "block (task-thread seconds)" if k in BLOCK_STAGES
                   else "finish (serial)"}
    finish = sum(rows[k]["total_s"] for k in rows if k in FINISH_STAGES)
    other = max(0.0, wall - blocks_wall - finish)
    return {"wall_s": round(wall, 3), "blocks_wall_s": round(blocks_wall, 3),
            "finish_s": round(finish, 3), "other_s": round(other, 3),
            "other_share_of_wall": round(other / wall, 4), "stages": rows}


def _ratios(e2e: list[dict[str, Any]], model: list[dict[str, Any]],
            read: list[dict[str, Any]], dup: float) -> dict[str, Any]:
    """Round by round: e2e against min(model limit, read-only), and which limit it was."""
    ratio, ratio_blocks, ratio_lit, limiting = [], [], [], []
    for e, m, rd in zip(e2e, model, read, strict=True):
        lm = m["predictions_per_s"] / dup
        lim = min(lm, rd["tiles_per_s"])
        limiting.append("model" if lm <= rd["tiles_per_s"] else "read")
        ratio.append(e["tiles_per_s"] / lim)
        ratio_blocks.append(e["blocks_tiles_per_s"] / lim)
        ratio_lit.append(e["tiles_per_s"] / min(m["predictions_per_s"], rd["tiles_per_s"]))
    return {"limited_by": max(set(limiting), key=limiting.count) if limiting else None,
            "ratio": summary(ratio), "ratio_blocks": summary(ratio_blocks),
            "ratio_literal": summary(ratio_lit)}


def _e2e_summary(e2e: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
        "blocks_tiles_per_s": summary([e["blocks_tiles_per_s"] for e in e2e]),
        "predictions_per_s": summary([e["predictions_per_s"] for e in e2e]),
        "wall_s": summary([e["wall_s"] for e in e2e]),
        "blocks_wall_s": summary([e["blocks_wall_s"] for e in e2e]),
        "load_avg": [e["load_avg"] for e in e2e],
        "score": e2e[-1].get("score"),
    }


def throughput_entry(kind: str, model_path: str, slide: dict[str, Any], job: Any,
                     e2e: list[dict[str, Any]], model: list[dict[str, Any]],
                     read: list[dict[str, Any]]) -> dict[str, Any]:
    """One model's throughput entry on one slide: the plan, e2e, model-only and read-only
    summaries, the ratios, the stage table and the time budget."""
    dup = job.n_tile_predictions / job.n_tiles if job.n_tiles else 1.0
    p = PROFILES[kind]
    return {
        "budget": time_budget(job, p.batch_size, e2e, model),
        "model": kind, "model_path": model_path,
        "size_px": slide["size_px"], "batch_size": p.batch_size,
        "tile_px": job.card.window_px, "step_px": job.spec.step_px, "mpp": job.mpp,
        "block_px": p.block_px, "blocks": job.n_blocks, "tiles": job.n_tiles,
        "tile_predictions": job.n_tile_predictions, "halo_factor": round(dup, 4),
        "tissue_fraction": round(job.tissue_fraction, 4),
        "e2e": _e2e_summary(e2e),
        "model_only": {
            "predictions_per_s": summary([m["predictions_per_s"] for m in model]),
            "limit_tiles_per_s": summary([m["predictions_per_s"] / dup for m in model]),
            "predictions": [m["predictions"] for m in model],
            "device": model[0]["device"] if model else None,
            "load_avg": [m["load_avg"] for m in model],
        },
        "read_only": {
            "tiles_per_s": summary([r["tiles_per_s"] for r in read]),
            "predictions_per_s": summary([r["predictions_per_s"] for r in read]),
            "read_task_s": summary([r["read_task_s"] for r in read]),
            "load_avg": [r["load_avg"] for r in read],
        },
        **_ratios(e2e, model, read, dup),
        "stages": stage_table(e2e),
    }


def seeds_entry(kind: str, size: int, job: Any, e2e: list[dict[str, Any]],
                seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' way against the e2e runs of the same rounds (speedup round by round)."""
    speed = [e["tiles_per_s"] / s["tiles_per_s"] for e, s in zip(e2e, seeds, strict=True)]
    return {
        "model": kind, "size_px": size, "tiles": job.n_tiles,
        "seeds_tiles_per_s": summary([s["tiles_per_s"] for s in seeds]),
        "seeds_tiles_done": [s["tiles"] for s in seeds],
        "seeds_complete": all(s["complete"] for s in seeds),
        "seeds_array_mib": seeds[0]["array_mib"],
        "wsi_seg_tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
        "speedup": summary(speed, 2),
    }


def memory_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's peak relative to the smallest slide of the same model."""
    base: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in rows if "error" not in r), key=lambda r: r["size_px"]):
        base.setdefault(r["model"], r)
    out = []
    for r in rows:
        r = dict(r)
        b = base.get(r["model"])
        if b is not None and "error" not in r:
            r["worker_peak_vs_smallest"] = round(max(r["worker_peak_rss_mib"])
                                                 / max(b["worker_peak_rss_mib"]), 3)
            r["client_peak_vs_smallest"] = round(r["client_peak_rss_mib"]
                                                 / b["client_peak_rss_mib"], 3)
        out.append(r)
    return out
