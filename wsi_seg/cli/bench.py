"""``wsi-seg bench``: reproducible speed and memory figures on synthetic slides."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_seg.core.errors import WsiSegError

if TYPE_CHECKING:
    from wsi_seg.tools.bench import BenchConfig, DeviceBenchConfig

DESCRIPTION = """\
Measure wsi-seg on synthetic slides that it writes itself (cached by size and seed in --cache,
so a rerun reuses them) and write OUT/bench.json (every value, the machine, versions, date,
load average) and OUT/bench.md (the tables). Figures that are compared with each other are
measured in this one process, interleaved and repeated (--repeats rounds, the order rotating),
and reported as median (min-max).
"""

EPILOG = """\
what each figure means:
  e2e tiles/s           a real run (run_slides: tissue, plan, blocks, pyramid, polygons,
                        GeoJSON, overlay, score) on a warm local Dask cluster: distinct
                        windows predicted (report "tiles") / the whole run's wall time.
  blocks-phase tiles/s  the same over the blocks phase only (report "tiles_per_s").
  model-only            the same model, batch size, device and Predictor on random tiles
                        already in memory, as many callers per worker as task threads
                        (the run's concurrency), all workers at once: model evaluations/s.
  model limit tiles/s   model-only expressed in this slide's distinct windows: a block
                        re-predicts the windows it shares with its neighbours (its halo), so
                        limit = model-only x tiles / tile_predictions.
  read-only tiles/s     the same blocks' halos read with Slide.read_w on the same workers and
                        task threads, no model: distinct windows / wall time.
  ratio                 e2e tiles/s / min(model limit, read-only), paired round by round
                        (goal >= 0.90). "ratio blocks" uses the blocks phase; "ratio literal"
                        divides by min(model-only predictions/s, read-only), counting the halo
                        duplicates against wsi-seg.
  stages                read, cut, predict, blend, write: task-thread seconds summed over
                        blocks (parallel, may exceed the wall); pyramid, vectorize, geojson,
                        score, overlay: serial finishing work; shares of the run's wall time.
  seeds' way            one process looping OpenSlide read_region + model.predict per tile,
                        stitched into one slide-sized numpy array, over the same windows
                        (time-capped by --seeds-seconds); speedup = e2e tiles/s / its tiles/s
                        (goal >= 5x).
  memory                peak RSS of each worker and of the client (which hosts the local
                        scheduler), one fresh process and cluster per slide size and model
                        (goal: flat; the largest within 1.15x of the smallest).
  scaling               e2e and model-only with 1 vs 2 worker processes; a batch size sweep;
                        on a GPU also mixed precision on/off and the GPU's idle share during
                        a run (nvidia-smi samples); without a GPU: "not measured: no GPU".

device profiles (--profile gpu | simulated; bench.json and bench.md rewritten after every step,
every step under --step-timeout):
  gpu                   a GPU workstation, in one run, on --slides or four synthetic 20,000 px
                        slides (seeds 11-14, written in parallel, cached): for the bundled
                        UNet and a heavier random-weight UNet (--heavy, 512 px tiles, 32-256
                        filters), interleaved rounds of: "cold" = run_slides as `wsi-seg run`
                        (fresh cluster, start-up line of run.json; ratio cold = its tiles/s /
                        the model-only limit), and on one warm cluster e2e, model-only (full
                        batches of random uint8 tiles into the workers' Predictor from as many
                        threads as task threads), read-only (the blocks' kept-window boxes),
                        ratio = e2e / min(model limit, read-only), the device's busy share in
                        the blocks phase (nvidia-smi utilisation sampled every 150 ms), stage
                        seconds; "noisy" = vectorize seconds / run seconds with a random-weight
                        UNet (--noisy, 16-128 filters) on a 16,000 px slide (goal < 10 %).
  simulated             no model: a simulated accelerator holding one device lock for S s per
                        batch; one worker with cores + 1 task threads. The CPU side is
                        measured first (S = 1 ms: blocks-phase seconds per batch), then S =
                        --simulate-margin x that; device busy share = device busy seconds /
                        blocks-phase wall (goal >= 90 %). Default slides: four 10,000 px
                        (seeds 11-14), batch 32.

examples:
  wsi-seg bench --quick --out bench-quick/         every code path on a 4k slide, ~2 minutes
  wsi-seg bench --profile simulated --out sim/     the simulated accelerator, ~3 minutes
  wsi-seg bench --profile gpu --out gpu/           the GPU workstation (benchmarks/gpu_bench.sh)
  wsi-seg bench --sizes 10000,30000 --memory-sizes 10000,30000,100000 --out bench-out/
  benchmarks/run_benchmarks.sh                     the full set of benchmarks/README.md

Timings on shared machines are noisy: keep the machine otherwise idle (see the load average
recorded in bench.json) and compare figures only within one record.
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(float(t)) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _default_cache() -> Path:
    env = os.environ.get("WSI_SEG_BENCH_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wsi-seg" / "bench"


def _device_options(p: argparse.ArgumentParser) -> None:
    """The options only the device profiles read."""
    from wsi_seg.stages.backends import PRECISIONS

    S = argparse.SUPPRESS
    d = p.add_argument_group("device profiles (--profile gpu | simulated)")
    d.add_argument("--profile", choices=("standard", "gpu", "simulated"), default="standard",
                   help="what to measure: the standard figures, a GPU workstation, or the CPU "
                   "side against a simulated accelerator [standard]")
    d.add_argument("--slides", type=Path, nargs="+", default=S, metavar="SLIDE",
                   help="slides to run [synthetic: --synth-size x --synth-seeds]")
    d.add_argument("--synth-size", type=int, default=S,
                   help="edge of the synthetic slides, px [gpu: 20000; simulated: 10000]")
    d.add_argument("--synth-seeds", type=_ints, default=S,
                   help="seeds of the synthetic slides [11,12,13,14]")
    d.add_argument("--batch-size", type=int, default=S,
                   help="predictor batch [gpu: the device's default; simulated: 32]")
    d.add_argument("--steps", default=S,
                   help="gpu: comma-separated of cold, bundled, heavy, noisy; cold adds a "
                   "cold run (a fresh cluster, as wsi-seg run) to each model's rounds, against "
                   "its model-only rate [all]")
    d.add_argument("--step-timeout", type=float, default=S,
                   help="limit on each step or measurement, s [300]")
    d.add_argument("--heavy", default=S, metavar="TILE,DEPTH,FILTERS",
                   help="the heavier random-weight UNet [512,4,32]")
    d.add_argument("--noisy", default=S, metavar="TILE,DEPTH,FILTERS",
                   help="the noisy random-weight UNet [256,4,16]")
    d.add_argument("--noisy-size", type=int, default=S,
                   help="edge of the noisy step's synthetic slide, px [16000]")
    d.add_argument("--simulate-batch-s", type=float, default=S,
                   help="simulated device seconds per batch [calibrated]")
    d.add_argument("--simulate-margin", type=float, default=S,
                   help="calibrated S = this x the CPU side's seconds per batch [1.5]")
    d.add_argument("--scratch", type=Path, default=S,
                   help="folder for the runs' outputs, removed at the end [OUT/runs]")
    d.add_argument("--precision", choices=PRECISIONS, default=S,
                   help="what the models compute in, as wsi-seg run --precision; run the "
                   "bench once per precision to compare them [float32]")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure tiles/s against the model and read limits, stages, memory and scaling",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS
    # The defaults shown come from the configurations that hold them (one place each).
    from wsi_seg.tools.bench.config import BenchConfig, DeviceBenchConfig, simulated_config

    std = BenchConfig(out_dir=Path("."), cache_dir=Path("."))
    gpu = DeviceBenchConfig(out_dir=Path("."), cache_dir=Path("."), profile="gpu")
    sim = simulated_config(Path("."), Path("."))
    p.add_argument("--out", type=Path, default=Path("bench-out"),
                   help="folder for bench.json, bench.md and scratch runs [bench-out]")
    p.add_argument("--cache", type=Path, default=None,
                   help="folder of cached synthetic slides [$WSI_SEG_BENCH_CACHE or "
                   "~/.cache/wsi-seg/bench]")
    p.add_argument("--sizes", type=_ints, default=S,
                   help="slide edges (level-0 px, square) for throughput, ratio and stages "
                   "[10000,30000]")
    p.add_argument("--memory-sizes", type=_ints, default=S,
                   help="slide edges for the memory figures [--sizes]")
    p.add_argument("--seeds-size", type=int, default=S,
                   help="slide edge for the seeds' way [smallest of --sizes]")
    p.add_argument("--scaling-size", type=int, default=S,
                   help="slide edge for workers and batch size scaling [smallest of --sizes]")
    p.add_argument("--repeats", type=int, default=S,
                   help=f"interleaved rounds [{std.repeats}; --profile gpu "
                   f"{gpu.repeats}, simulated {sim.repeats}]")
    p.add_argument("--models", default=S,
                   help="comma-separated model kinds to measure: unet, patch [unet,patch]")
    p.add_argument("--unet", type=Path, default=S,
                   help="UNet MODEL.keras (with its card) [the bundled demo UNet]")
    p.add_argument("--patch", type=Path, default=S,
                   help="patch classifier MODEL.keras [the bundled demo patch classifier]")
    p.add_argument("--seed", type=int, default=S, help="synthetic slide seed [100]")
    p.add_argument("--workers", type=int, default=S,
                   help="local worker processes [as wsi-seg run: one per GPU, else cores / 2]")
    p.add_argument("--threads-per-worker", type=int, default=S, help="[as wsi-seg run: 2]")
    p.add_argument("--model-seconds", type=float, default=S,
                   help=f"cap on one model-only measurement, s [{std.model_seconds:g}; "
                   f"device profiles {gpu.model_seconds:g}]")
    p.add_argument("--seeds-seconds", type=float, default=S,
                   help="cap on one seeds'-way measurement, s [20]")
    p.add_argument("--batch-sizes-unet", type=_ints, default=S,
                   help="UNet batch sizes of the sweep [4,8,16,32]")
    p.add_argument("--batch-sizes-patch", type=_ints, default=S,
                   help="patch classifier batch sizes of the sweep [64,128,256,512]")
    p.add_argument("--only", default=S,
                   help="comma-separated parts to run: throughput, seeds, memory, scaling [all]")
    p.add_argument("--keep-outputs", action="store_true", default=S,
                   help="keep the runs' mosaics and GeoJSON under OUT/runs")
    _device_options(p)
    p.add_argument("--quick", action="store_true",
                   help="every code path on a 4000 px slide, 1 round, short caps (checks the "
                   "machinery; its numbers mean little)")
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> BenchConfig:
    from wsi_seg.tools.bench import PARTS, PROFILES, BenchConfig, quick_config

    cache = args.cache or _default_cache()
    base = (quick_config(args.out, cache) if args.quick
            else BenchConfig(out_dir=args.out, cache_dir=cache))
    changes: dict[str, object] = {}
    for key in ("sizes", "memory_sizes", "seeds_size", "scaling_size", "repeats", "seed",
                "workers", "threads_per_worker", "model_seconds", "seeds_seconds",
                "keep_outputs"):
        if hasattr(args, key):
            changes[key] = getattr(args, key)
    if hasattr(args, "models"):
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        bad = [m for m in models if m not in PROFILES]
        if bad or not models:
            raise WsiSegError(f"--models: unknown kind(s) {', '.join(bad) or '(none)'}; "
                              f"use {', '.join(PROFILES)}")
        changes["models"] = models
    if hasattr(args, "only"):
        parts = tuple(m.strip() for m in args.only.split(",") if m.strip())
        bad = [m for m in parts if m not in PARTS]
        if bad or not parts:
            raise WsiSegError(f"--only: unknown part(s) {', '.join(bad) or '(none)'}; "
                              f"use {', '.join(PARTS)}")
        changes["parts"] = parts
    paths = {k: getattr(args, k) for k in ("unet", "patch") if hasattr(args, k)}
    if paths:
        changes["model_paths"] = paths
    batches = dict(base.batch_sizes)
    for kind in ("unet", "patch"):
        if hasattr(args, f"batch_sizes_{kind}"):
            batches[kind] = getattr(args, f"batch_sizes_{kind}")
    changes["batch_sizes"] = batches
    cfg = replace(base, **changes)  # type: ignore[arg-type]
    if cfg.repeats < 1:
        raise WsiSegError("--repeats must be at least 1")
    for kind, path in cfg.model_paths.items():
        if not Path(path).is_file():
            raise WsiSegError(f"--{kind}: model file not found", path)
    return cfg


def build_device_config(args: argparse.Namespace) -> DeviceBenchConfig:
    from wsi_seg.tools.bench import (
        GPU_STEPS,
        DeviceBenchConfig,
        UNetSpec,
        simulated_config,
    )

    cache = args.cache or _default_cache()
    base = (simulated_config(args.out, cache) if args.profile == "simulated"
            else DeviceBenchConfig(out_dir=args.out, cache_dir=cache, profile="gpu"))
    changes: dict[str, object] = {}
    for opt, key in (("synth_size", "synth_size"), ("synth_seeds", "synth_seeds"),
                     ("batch_size", "batch_size"), ("step_timeout", "step_timeout_s"),
                     ("noisy_size", "noisy_size"), ("simulate_batch_s", "simulate_batch_s"),
                     ("simulate_margin", "simulate_margin"), ("scratch", "scratch_dir"),
                     ("repeats", "repeats"), ("workers", "workers"),
                     ("threads_per_worker", "threads_per_worker"),
                     ("model_seconds", "model_seconds"), ("keep_outputs", "keep_outputs"),
                     ("unet", "model_path"), ("precision", "precision")):
        if hasattr(args, opt):
            changes[key] = getattr(args, opt)
    if hasattr(args, "slides"):
        changes["slides"] = tuple(args.slides)
    for opt in ("heavy", "noisy"):
        if hasattr(args, opt):
            try:
                spec = UNetSpec.parse(getattr(args, opt))
                changes[opt] = replace(spec, centred=opt == "noisy")
            except ValueError as exc:
                raise WsiSegError(f"--{opt}: {exc}") from None
    if hasattr(args, "steps"):
        if args.profile != "gpu":
            raise WsiSegError("--steps applies to --profile gpu")
        steps = tuple(m.strip() for m in args.steps.split(",") if m.strip())
        bad = [m for m in steps if m not in GPU_STEPS]
        if bad or not steps:
            raise WsiSegError(f"--steps: unknown step(s) {', '.join(bad) or '(none)'}; "
                              f"use {', '.join(GPU_STEPS)}")
        changes["steps"] = steps
    cfg = replace(base, **changes)  # type: ignore[arg-type]
    if cfg.repeats < 1:
        raise WsiSegError("--repeats must be at least 1")
    if cfg.batch_size is not None and cfg.batch_size < 1:
        raise WsiSegError("--batch-size must be at least 1")
    if cfg.simulate_batch_s is not None and cfg.simulate_batch_s <= 0:
        raise WsiSegError("--simulate-batch-s must be positive")
    if cfg.model_path is not None and not Path(cfg.model_path).is_file():
        raise WsiSegError("--unet: model file not found", cfg.model_path)
    for p in cfg.slides:
        if not Path(p).is_file():
            raise WsiSegError("--slides: slide not found", p)
    return cfg


def run(args: argparse.Namespace) -> int:
    from wsi_seg.tools.bench import Benchmark, DeviceBenchmark

    if args.profile != "standard":
        dcfg = build_device_config(args)
        out, record = dcfg.out_dir, DeviceBenchmark(dcfg).run()
    else:
        cfg = build_config(args)
        out, record = cfg.out_dir, Benchmark(cfg).run()
    print((out / "bench.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({record.get('total_s')} s)")
    return 0
