"""``wsi-seg bench``: reproducible speed and memory figures on synthetic slides."""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from wsi_seg.errors import WsiSegError

if TYPE_CHECKING:
    from wsi_seg.bench import BenchConfig

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

examples:
  wsi-seg bench --quick --out bench-quick/         every code path on a 4k slide, ~2 minutes
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


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="measure tiles/s against the model and read limits, stages, memory and scaling",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS
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
    p.add_argument("--repeats", type=int, default=S, help="interleaved rounds [3]")
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
                   help="cap on one model-only measurement, s [20]")
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
    p.add_argument("--quick", action="store_true",
                   help="every code path on a 4000 px slide, 1 round, short caps (checks the "
                   "machinery; its numbers mean little)")
    p.set_defaults(handler=run)


def build_config(args: argparse.Namespace) -> BenchConfig:
    from wsi_seg.bench import PARTS, PROFILES, BenchConfig, quick_config

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


def run(args: argparse.Namespace) -> int:
    from wsi_seg.bench import Benchmark

    cfg = build_config(args)
    record = Benchmark(cfg).run()
    print((cfg.out_dir / "bench.md").read_text(encoding="utf-8"), end="")
    print(f"wrote {cfg.out_dir / 'bench.json'} and {cfg.out_dir / 'bench.md'} "
          f"({record.get('total_s')} s)")
    return 0
