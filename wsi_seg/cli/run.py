"""``wsi-seg run``: tumour mosaics, polygons and scores for slides or folders of slides."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, TypeVar

from wsi_seg.core.errors import WsiSegError, printable
from wsi_seg.core.locations import OutputLocation
from wsi_seg.core.params import ConfigError
from wsi_seg.core.storage import StorageOptions
from wsi_seg.orchestration import options
from wsi_seg.orchestration.cluster import ClusterConfig, local_gpu_count
from wsi_seg.orchestration.job import RunConfig
from wsi_seg.orchestration.runner import RunResult, run_slides
from wsi_seg.stages.infer import InferConfig
from wsi_seg.stages.tissue import TissueConfig

T = TypeVar("T")

#: Built-in defaults (from the one option table, :mod:`wsi_seg.orchestration.options`).
DEFAULTS: dict[str, Any] = options.DEFAULTS

EPILOG = """\
examples:
  wsi-seg run slides/ --out results/
  wsi-seg run a.svs b.svs --out results/ --truth annotations/   # <stem>.tumor.geojson, ...
  wsi-seg run slides/ --out results/ --truth truth/ --truth-pattern '{stem}.truth.geojson'
  wsi-seg run slides/ --out results/ --config pipelines/patch-idc-50px.toml --stride 25
  wsi-seg run --slides cohort.txt --out results/   # one path or s3:// URL per line
  wsi-seg run s3://bucket/slides/ --out results/   # read in place (SVS, TIFF, DICOM)
  wsi-seg run slides/ --out results/ --scheduler tcp://10.0.0.5:8786 --gpu-resource
  wsi-seg run slides/ --out results --scheduler-file ~/scheduler.json  # or $DASK_SCHEDULER_ADDRESS
  wsi-seg run s3://bucket/slides/ --out s3://bucket/results/   # results in object storage
  wsi-seg run slides/ --out /shared/results/ --cluster slurm --slurm-queue gpu \\
      --slurm-gpus 1 --slurm-cores 8 --slurm-memory 32GB --slurm-walltime 04:00:00

on SLURM, workers are jobs (`pip install 'wsi-seg[slurm]'`); the slides, the model and OUT
must be on a filesystem the compute nodes share. The same in a --config file:
  [cluster]
  kind = "slurm"
  queue = "gpu"
  gpus = 1                  # one worker per GPU, pinned to its card
  prologue = ["module load cuda/12"]

a --config file holds the same options, each under the section its group names, e.g.
  [blocks]
  block = 2048
  [tissue]
  min_area_um2 = 2000.0     # --tissue-min-area-um2

outputs (per slide, each appearing only when complete; NAME is the slide's stem, or its file
name when slides of the run share a stem):
  OUT/NAME/mask.zarr      OME-Zarr 0.5 multiscale tumour probability (uint8 0..255, µm scales)
  OUT/NAME/tumor.geojson  tumour polygons with holes, level-0 pixels, QuPath annotations
  OUT/NAME/overlay.png    thumbnail with tissue (green), prediction (red), truth (blue)
  OUT/NAME/report.json    tiles, areas, scores, stage timings, tiles/s
  OUT/run.json, OUT/summary.csv, OUT/summary.md

--out may be a prefix in object storage (s3://bucket/prefix/, credentials from the standard
AWS variables and files, the endpoint from them or from --config's [storage] section, whose
keys have no flags): the same outputs are written there in place, and a
slide counts as finished only once its report.json, written last, is there; a lease object
(OUT/.NAME.lock.json, a conditional PUT) keeps two runs off one slide.

A killed run resumes: rerun the same command; finished slides are skipped and unfinished ones
redo only the blocks that had not completed. Every option is checked before any work: a bad
one is a single line and exit status 2. Exit status 1 when any slide failed, or when the run
stopped because OUT was deleted or made read-only under it (one line says so; what was
finished is kept, and a rerun resumes).
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
    p.add_argument("slides", nargs="*", metavar="SLIDE_OR_DIR",
                   help="slide files or folders of slides (not searched recursively), local "
                   "or s3://bucket/prefix/")
    p.add_argument("--slides", dest="slide_list", type=Path, metavar="LIST",
                   help="a text file naming slides, one path or s3:// URL per line (# comments; "
                   "relative paths are relative to the file): cohorts that are not one folder")
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="TOML run configuration: each option under its section (see the group "
                   "titles below and pipelines/); flags win")
    options.add_arguments(p)
    p.set_defaults(handler=run)


def load_config(path: Path | None) -> dict[str, Any]:
    """Options from a TOML file, keyed by option name, every key and value checked."""
    return {} if path is None else options.load_toml(path)


def resolve(args: argparse.Namespace) -> options.Resolved:
    """Defaults, then the TOML config, then the flags given on the command line; checked."""
    flags = {name: getattr(args, name) for name in DEFAULTS if hasattr(args, name)}
    return options.resolve(flags, args.config)


def model_path(value: Any) -> Path | None:
    """A model option: a path, or ``bundled:unet`` / ``bundled:patch`` for the demo models."""
    if value in (None, ""):
        return None
    if str(value).startswith("bundled:"):
        from wsi_seg.stages.card import bundled_model_path

        return bundled_model_path(str(value).split(":", 1)[1])
    return Path(value)


def _parts(opts: options.Resolved) -> dict[str, dict[str, Any]]:
    """Each configuration type's fields, filled by the options whose ``target`` names them."""
    parts: dict[str, dict[str, Any]] = {"run": {}, "infer": {}, "cluster": {}, "tissue": {},
                                        "storage": {}}
    for option in options.OPTIONS:
        if option.target is not None:
            part, field = option.target.split(".")
            parts[part][field] = option.config_value(opts[option.name])
    return parts


def storage_of(config: Path | None) -> StorageOptions:
    """The ``[storage]`` options of a run's TOML file (every key of the file checked, the
    other sections unused): how the commands other than ``run`` (``info``, ``score
    --slide``) reach s3:// slides the way the run did."""
    values, origins = dict(DEFAULTS), dict.fromkeys(DEFAULTS, "default")
    for name, value in load_config(config).items():
        values[name], origins[name] = value, str(config)
    opts = options.Resolved(values, origins)
    return _build("storage", StorageOptions, _parts(opts)["storage"], opts)


def build_configs(opts: options.Resolved) -> tuple[RunConfig, ClusterConfig]:
    """The configurations, each field filled by the option whose ``target`` names it. The
    types check themselves; their one-line refusal is rewritten here in the options' words
    (``--block 1000``, or ``[blocks] block = 1000 in FILE``)."""
    parts = _parts(opts)
    parts["run"]["model_path"] = model_path(opts["model"])
    infer = _build("infer", InferConfig, parts["infer"], opts)
    tissue = _build("tissue", TissueConfig, parts["tissue"], opts)
    storage = _build("storage", StorageOptions, parts["storage"], opts)
    config = _build("run", RunConfig, {**parts["run"], "infer": infer, "tissue": tissue,
                                       "storage": storage}, opts)
    return config, _build("cluster", ClusterConfig, parts["cluster"], opts)


def in_option_words(exc: ConfigError, part: str, opts: options.Resolved) -> WsiSegError:
    """A configuration type's refusal, each parameter named as the option that set it."""
    by_target = {o.target: o.name for o in options.OPTIONS if o.target}
    names = {k: opts.describe(by_target[f"{part}.{k}"]) for k in exc.values
             if f"{part}.{k}" in by_target}
    return WsiSegError(exc.render(names), exc.path)


def _build(part: str, cls: type[T], kwargs: dict[str, Any], opts: options.Resolved) -> T:
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise in_option_words(exc, part, opts) from None


def check_device(opts: options.Resolved, cluster: ClusterConfig) -> None:
    """``--device gpu`` on a local cluster needs a GPU this machine shows (asked of
    nvidia-smi, which costs milliseconds; a framework import would cost seconds). Workers of
    an existing cluster are checked by their own predictors."""
    if opts["device"] == "gpu" and not cluster.remote and local_gpu_count() == 0:
        raise WsiSegError(f"{opts.describe('device')}: no GPU is visible on this machine "
                          "(nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them); use "
                          "device auto or cpu")


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
    # Every check that needs no slide comes first, so a bad option or file is one line and
    # leaves nothing behind (no output folder).
    opts = resolve(args)
    select_backend(opts["backend"])
    config, cluster = build_configs(opts)
    check_device(opts, cluster)
    if config.truth is not None and not config.truth.exists():
        raise WsiSegError("ground truth file or folder not found", config.truth)
    try:
        result = run_slides(args.slides, config, cluster, quiet=bool(opts["quiet"]),
                            gpu_resource=opts["gpu_resource"], slide_list=args.slide_list)
    except ConfigError as exc:  # the model's fit, checked first by the library
        raise in_option_words(exc, "run", opts) from None
    print_summary(result, config.out_dir, bool(opts["quiet"]))
    return 0 if result.ok else 1


def print_summary(result: RunResult, out_dir: OutputLocation, quiet: bool) -> None:
    if quiet:
        return
    ok, skipped = result.count("ok"), result.count("skipped")
    rate = result.tiles / result.wall_s if result.wall_s > 0 else 0.0
    print(f"done: {ok} ok, {skipped} skipped, {result.failed} failed; {result.tiles} tiles in "
          f"{result.wall_s:.1f} s ({rate:.1f} tiles/s overall); see "
          f"{printable(out_dir / 'summary.md')} and {printable(out_dir / 'run.json')}")
