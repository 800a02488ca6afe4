"""``wsi-seg run``: tumour mosaics, polygons and scores for slides or folders of slides."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from wsi_seg.backends import BACKENDS
from wsi_seg.blend import BLEND_MODES
from wsi_seg.cluster import ClusterConfig
from wsi_seg.errors import WsiSegError
from wsi_seg.infer import InferConfig
from wsi_seg.pipeline import RunConfig
from wsi_seg.runner import RunResult, run_slides
from wsi_seg.slide import find_slides

#: Built-in defaults; a --config TOML file overrides these and command-line flags override both.
DEFAULTS: dict[str, Any] = {
    "out": None,
    "model": None,
    "mpp": None,
    "tile": None,
    "overlap": 0.25,
    "stride": None,
    "blend": None,
    "sigma_scale": 0.125,
    "block": 4096,
    "chunk": 1024,
    "batch_size": None,
    "mixed_precision": False,
    "device": "auto",
    "backend": None,
    "threshold": None,
    "min_area_um2": 1000.0,
    "simplify_um": 1.0,
    "vectorize_level": 0,
    "truth": None,
    "truth_class": None,
    "scheduler": None,
    "workers": None,
    "threads_per_worker": None,
    "gpu_resource": None,
    "tf_threads": None,
    "overwrite": False,
    "quiet": False,
}

EPILOG = """\
examples:
  wsi-seg run slides/ --out results/
  wsi-seg run a.svs b.svs --out results/ --truth annotations/      # score against <stem>.geojson
  wsi-seg run slides/ --out results/ --config pipelines/patch-idc.toml --stride 25
  wsi-seg run slides/ --out results/ --scheduler tcp://10.0.0.5:8786 --gpu-resource

outputs (per slide, each appearing only when complete):
  OUT/<stem>/mask.zarr      OME-Zarr 0.5 multiscale tumour probability (uint8 0..255, µm scales)
  OUT/<stem>/tumor.geojson  tumour polygons with holes, level-0 pixels, QuPath annotations
  OUT/<stem>/overlay.png    thumbnail with tissue (green), prediction (red), truth (blue)
  OUT/<stem>/report.json    tiles, areas, scores, stage timings, tiles/s
  OUT/run.json, OUT/summary.csv, OUT/summary.md

A killed run resumes: rerun the same command; finished slides are skipped and unfinished ones
redo only the blocks that had not completed. Exit status 1 when any slide failed.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="segment tumour in slides: OME-Zarr mosaic, GeoJSON polygons, overlay, scores",
        description="Read each slide at the model's resolution (µm/px), find tissue, cut it "
        "into overlapping tiles scheduled by Dask, predict them in batches, blend the overlaps "
        "without seams into an OME-Zarr probability mosaic, and vectorize tumour regions into "
        "QuPath GeoJSON. Options may also come from a TOML file (--config); flags win.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    S = argparse.SUPPRESS
    p.add_argument("slides", nargs="+", metavar="SLIDE_OR_DIR")
    p.add_argument("--out", type=Path, default=S, help="output folder (required)")
    p.add_argument("--config", type=Path, help="TOML run configuration (see pipelines/)")
    g = p.add_argument_group("model and resolution")
    g.add_argument("--model", default=S,
                   help="MODEL.keras with its MODEL.json card, or bundled:unet / bundled:patch "
                   "[bundled:unet]")
    g.add_argument("--mpp", type=float, default=S,
                   help="level-0 µm/px of the slides, overriding (or supplying) their metadata")
    g.add_argument("--tile", type=int, default=S,
                   help="window edge in working pixels; must equal the model's input size")
    g.add_argument("--overlap", type=float, default=S, help="window overlap fraction [0.25]")
    g.add_argument("--stride", type=int, default=S,
                   help="window step in working pixels, overriding --overlap (e.g. 25 for 50 px "
                   "patches)")
    g.add_argument("--blend", choices=BLEND_MODES, default=S,
                   help="window weighting [gaussian for a UNet, constant for a patch model]")
    g.add_argument("--sigma-scale", type=float, default=S,
                   help="gaussian sigma as a fraction of the window (MONAI) [0.125]")
    g.add_argument("--block", type=int, default=S,
                   help="block edge in working pixels, a multiple of --chunk [4096]")
    g.add_argument("--chunk", type=int, default=S, help="mosaic chunk edge in pixels [1024]")
    g = p.add_argument_group("device")
    g.add_argument("--batch-size", type=int, default=S,
                   help="tiles per model call; each worker's predictor packs tiles from many "
                   "blocks into batches of this fixed size [16 on a CPU, 128 on a GPU]")
    g.add_argument("--mixed-precision", action="store_true", default=S,
                   help="float16 compute on GPU (ignored on CPU)")
    g.add_argument("--device", choices=("auto", "gpu", "cpu"), default=S, help="[auto]")
    g.add_argument("--backend", choices=BACKENDS, default=S,
                   help="Keras backend of the local workers: the same .keras model runs on "
                   "each [$KERAS_BACKEND, else tensorflow]; an existing cluster uses its "
                   "workers' own KERAS_BACKEND")
    g.add_argument("--tf-threads", type=int, default=S,
                   help="TensorFlow intra-op threads per worker [cores / workers]")
    g = p.add_argument_group("polygons and scores")
    g.add_argument("--threshold", type=float, default=S,
                   help="tumour probability threshold [the model card's]")
    g.add_argument("--min-area-um2", type=float, default=S,
                   help="smallest tumour region kept, µm² [1000]")
    g.add_argument("--simplify-um", type=float, default=S,
                   help="polygon simplification tolerance, µm [1]")
    g.add_argument("--vectorize-level", type=int, default=S,
                   help="mosaic pyramid level traced into polygons (0 = model MPP) [0]")
    g.add_argument("--truth", type=Path, default=S,
                   help="ground truth file, or folder of <stem>.geojson/.xml files, to score")
    g.add_argument("--truth-class", action="append", default=S, metavar="NAME",
                   help="annotation class counted as tumour (repeatable) [tumor, tumour, ...]")
    g = p.add_argument_group("scheduling")
    g.add_argument("--scheduler", default=S,
                   help="tcp://HOST:PORT of an existing Dask cluster, or 'threads' to run "
                   "in this process [a local cluster of worker processes]")
    g.add_argument("--workers", type=int, default=S,
                   help="local worker processes [one per GPU, else cores / 2]")
    g.add_argument("--threads-per-worker", type=int, default=S, help="[2]")
    g.add_argument("--gpu-resource", action="store_true", default=S,
                   help="run block tasks only on workers declaring the GPU resource")
    g.add_argument("--overwrite", action="store_true", default=S, help="redo finished slides")
    g.add_argument("--quiet", action="store_true", default=S, help="no progress, errors only")
    p.set_defaults(handler=run)


def load_config(path: Path | None) -> dict[str, Any]:
    """Options from a TOML file (keys as the flags, with - or _), validated against DEFAULTS."""
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise WsiSegError("config file not found", path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise WsiSegError(f"not a valid TOML file ({exc})", path) from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):  # sections are for people; keys are flat
            flat.update(value)
        else:
            flat[key] = value
    out = {}
    for key, value in flat.items():
        k = key.replace("-", "_")
        if k not in DEFAULTS:
            raise WsiSegError(f"unknown option {key!r}", path)
        out[k] = value
    return out


def resolve(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults, then the TOML config, then the flags given on the command line."""
    opts = dict(DEFAULTS)
    opts.update(load_config(args.config))
    for key in DEFAULTS:
        if hasattr(args, key):
            opts[key] = getattr(args, key)
    if opts["out"] is None:
        raise WsiSegError("--out is required (the output folder)")
    return opts


def _path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(value)


def model_path(value: Any) -> Path | None:
    """A model option: a path, or ``bundled:unet`` / ``bundled:patch`` for the demo models."""
    if isinstance(value, str | Path) and str(value).startswith("bundled:"):
        from wsi_seg.card import bundled_model_path

        return bundled_model_path(str(value).split(":", 1)[1])
    return _path(value)


def build_configs(opts: dict[str, Any]) -> tuple[RunConfig, ClusterConfig]:
    if opts["block"] % opts["chunk"]:
        raise WsiSegError(f"--block {opts['block']} must be a multiple of --chunk {opts['chunk']}")
    if not 0 <= opts["overlap"] < 1:
        raise WsiSegError(f"--overlap must be in [0, 1), got {opts['overlap']}")
    if opts["batch_size"] is not None and opts["batch_size"] < 1:
        raise WsiSegError("--batch-size must be at least 1")
    infer = InferConfig(batch_size=opts["batch_size"],
                        mixed_precision=bool(opts["mixed_precision"]),
                        device=str(opts["device"]), threads=opts["tf_threads"])
    classes = opts["truth_class"]
    config = RunConfig(
        out_dir=Path(opts["out"]), model_path=model_path(opts["model"]), slide_mpp=opts["mpp"],
        overlap=float(opts["overlap"]), stride_px=opts["stride"], blend=opts["blend"],
        sigma_scale=float(opts["sigma_scale"]), block_px=int(opts["block"]),
        chunk_px=int(opts["chunk"]), infer=infer, threshold=opts["threshold"],
        min_area_um2=float(opts["min_area_um2"]), simplify_um=float(opts["simplify_um"]),
        vectorize_level=int(opts["vectorize_level"]), truth=_path(opts["truth"]),
        truth_classes=tuple([classes] if isinstance(classes, str) else classes)
        if classes else None,
        overwrite=bool(opts["overwrite"]),
    )
    cluster = ClusterConfig(scheduler=opts["scheduler"], workers=opts["workers"],
                            threads_per_worker=opts["threads_per_worker"],
                            gpu_resource=opts["gpu_resource"])
    return config, cluster


def check_tile(config: RunConfig, tile: int | None) -> None:
    """--tile is accepted only when it matches the model (its input size is fixed)."""
    if tile is None:
        return
    from wsi_seg.card import read_card

    card = read_card(config.resolved_model())
    if tile != card.input_size_px:
        raise WsiSegError(
            f"--tile {tile} does not match the model's input of {card.input_size_px} px; "
            "tiles are the model's input (use --overlap or --stride to change the spacing)",
            config.resolved_model())


def select_backend(backend: str | None) -> None:
    """Make ``backend`` this process's Keras backend, inherited by local worker processes.

    Keras fixes its backend when first imported, so this must happen before that, and the
    backend's framework must be installed; either failing is one line.
    """
    if backend is None:
        return
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec(backend) is None:
        raise WsiSegError(f"--backend {backend}: {backend} is not installed "
                          f"(pip install {backend})")
    if "keras" in sys.modules:
        import keras

        if keras.backend.backend() != backend:
            raise WsiSegError(f"--backend {backend}: Keras already runs on "
                              f"{keras.backend.backend()} in this process; set "
                              f"KERAS_BACKEND={backend} instead")
    os.environ["KERAS_BACKEND"] = backend


def run(args: argparse.Namespace) -> int:
    opts = resolve(args)
    select_backend(opts["backend"])
    config, cluster = build_configs(opts)
    check_tile(config, opts["tile"])
    if config.truth is not None and not config.truth.exists():
        raise WsiSegError("ground truth file or folder not found", config.truth)
    slides = find_slides(args.slides)
    result = run_slides(slides, config, cluster, quiet=bool(opts["quiet"]),
                        gpu_resource=opts["gpu_resource"])
    print_summary(result, config.out_dir, bool(opts["quiet"]))
    return 0 if result.ok else 1


def print_summary(result: RunResult, out_dir: Path, quiet: bool) -> None:
    if quiet:
        return
    ok = sum(s["status"] == "ok" for s in result.slides)
    skipped = sum(s["status"] == "skipped" for s in result.slides)
    rate = result.tiles / result.wall_s if result.wall_s > 0 else 0.0
    print(f"done: {ok} ok, {skipped} skipped, {result.failed} failed; {result.tiles} tiles in "
          f"{result.wall_s:.1f} s ({rate:.1f} tiles/s overall); see {out_dir / 'summary.md'} "
          f"and {out_dir / 'run.json'}")
