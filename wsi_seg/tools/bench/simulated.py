"""The simulated profile: does the CPU side keep a device busy? No model runs: the simulated
device holds one lock for ``S`` seconds per batch; ``S`` is calibrated slower than the CPU
side, so the device is the limit, and the runs report its busy share in the blocks phase."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.tools.bench.device_runs import run_config, run_once
from wsi_seg.tools.bench.record import summary
from wsi_seg.tools.bench.sampler import simulated_busy
from wsi_seg.tools.bench.synthetic import model_record

if TYPE_CHECKING:
    from wsi_seg.tools.bench.device import DeviceBenchmark

#: How often the simulated profile samples the worker's device totals, s.
POLL_S = 0.01


def run_simulated(bm: DeviceBenchmark) -> None:
    """Slides, the calibration (unless ``simulate_batch_s`` is given), then the rounds."""
    cfg = bm.cfg
    slides = bm.step("slides", bm.slides) or []
    bm.record["slides"] = slides
    if not slides:
        return
    paths = [Path(s["path"]) for s in slides]
    model = cfg.main_model()
    bm.record["models"] = {"main": model_record(model)}
    sim: dict[str, Any] = {"batch_size": cfg.batch_size, "margin": cfg.simulate_margin}
    bm.record["simulated"] = sim
    s = cfg.simulate_batch_s
    if s is None:
        s = _calibrate(bm, paths, model, sim)
        if s is None:
            return
    else:
        sim["chosen"] = "given"
    sim["batch_s"] = s
    runs: list[dict[str, Any]] = []
    for r in range(cfg.repeats):
        rec = bm.step(f"simulated: S = {s} s (round {r + 1}/{cfg.repeats})",
                      lambda: _sim_run(bm, paths, model, s, "sim"))
        if rec is not None:
            runs.append(rec)
            sim.update(sim_figures(runs, s, _batch(bm)))
            bm.save()


def _calibrate(bm: DeviceBenchmark, paths: list[Path], model: Path, sim: dict[str, Any]
               ) -> float | None:
    """S = margin x the CPU side's seconds per batch, measured with a device that never
    waits (None: the calibration run failed)."""
    cfg = bm.cfg
    cal = bm.step("simulated: CPU side (calibration)",
                  lambda: _sim_run(bm, paths, model, cfg.calibrate_batch_s, "cal"))
    if cal is None:
        return None
    # Seconds of blocks phase per full batch of windows with a device that never waits.
    cpu_side = cal["blocks_wall_s"] * _batch(bm) / cal["tile_predictions"]
    sim["calibration"] = {**cal, "cpu_side_s_per_batch": round(cpu_side, 4)}
    sim["chosen"] = "calibrated"
    return round(max(0.005, cfg.simulate_margin * cpu_side), 4)


def _batch(bm: DeviceBenchmark) -> int:
    from wsi_seg.stages.infer import GPU_BATCH

    return bm.cfg.batch_size or GPU_BATCH


def _sim_run(bm: DeviceBenchmark, slides: list[Path], model: Path, s: float, tag: str
             ) -> dict[str, Any]:
    """One warm run with the simulated device at ``s`` s per batch; its busy figures."""
    bench = bm.bench()
    rc = run_config(bm.runs_dir / tag, model, bm.infer(simulate_batch_s=s))
    rec = run_once(bench, slides, rc, poll_s=POLL_S)
    rec["predictor"]["batch_size"] = _batch(bm)
    rec.update(simulated_busy(rec, rec.pop("timelines")))
    rec["batch_s"] = s
    return rec


def sim_figures(runs: list[dict[str, Any]], s: float, batch: int) -> dict[str, Any]:
    """Summaries of the simulated rounds at ``s`` s per batch of ``batch`` windows."""
    r0 = runs[0]
    dup = r0["tile_predictions"] / r0["tiles"] if r0["tiles"] else 1.0
    return {
        "runs": runs,
        "tiles": r0["tiles"], "tile_predictions": r0["tile_predictions"],
        "busy_share": summary([r["busy_share"] for r in runs], 4),
        "tiles_per_s": summary([r["tiles_per_s"] for r in runs], 2),
        "blocks_tiles_per_s": summary([r["blocks_tiles_per_s"] for r in runs], 2),
        "blocks_wall_s": summary([r["blocks_wall_s"] for r in runs]),
        "fill": summary([r["blocks_fill"] or 0.0 for r in runs], 4),
        # A device that is never idle and gets only full batches: the best the CPU side
        # could hope for.
        "device_bound_tiles_per_s": round(batch / s / dup, 2),
        # The device time the windows need in full batches / the blocks phase: the busy share
        # without padded slots (a design that pads more batches looks busier, not faster).
        "work_share": summary([r["tile_predictions"] / batch * s / r["blocks_wall_s"]
                               for r in runs], 4),
        "goal": "busy_share >= 0.90",
    }
