"""``wsi-seg demo``: the main job on the bundled default, from nothing to polygons and scores."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from wsi_seg.orchestration import options
from wsi_seg.orchestration.cluster import ClusterConfig
from wsi_seg.orchestration.describe import PlanSettings, describe_path
from wsi_seg.orchestration.pipeline import REPORT, RunConfig, final_dir_for
from wsi_seg.orchestration.runner import run_slides
from wsi_seg.stages.card import bundled_model_path, read_card
from wsi_seg.stages.infer import InferConfig
from wsi_seg.tools.synth import truth_path_for, write_synthetic_slide


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="make a sample slide and run the whole pipeline on it with the bundled UNet",
        description="Write a synthetic sample slide with known tumour (unless it exists), "
        "describe it, run the bundled demo UNet over it on a local Dask cluster, and print "
        "where the OME-Zarr mosaic, GeoJSON, overlay and scores are.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder")
    p.add_argument("--size", type=slide_size, default="8000x8000", metavar="WxH",
                   help="sample slide size, level-0 px")
    p.add_argument("--seed", type=int, default=1001,
                   help="sample slide seed (the demo models never saw seeds above 1000)")
    p.add_argument("--model", type=Path, help="model to run [bundled demo UNet]")
    p.add_argument("--scheduler", default=None,
                   help="'threads' for a single process, or a tcp:// Dask scheduler")
    p.add_argument("--workers", type=options.BY_NAME["workers"].parse, default=None,
                   metavar="N", help="local worker processes")
    p.add_argument("--overwrite", action="store_true",
                   help="run again even if the sample slide's results are complete")
    p.set_defaults(handler=run)


def slide_size(text: str) -> tuple[int, int]:
    """``WxH`` in level-0 pixels, each at least 64 (a slide needs room for tissue)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, got {text!r}"
                                         ) from None
    if min(w, h) < 64:
        raise argparse.ArgumentTypeError(f"each side must be >= 64 px, got {text!r}")
    return w, h


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    slide_path = out / "sample.svs"
    truth = truth_path_for(slide_path)
    w, h = args.size
    if not (slide_path.is_file() and truth.is_file()):
        t = time.perf_counter()
        write_synthetic_slide(slide_path, (w, h), seed=args.seed)
        print(f"wrote sample slide {slide_path} and its truth {truth} "
              f"({time.perf_counter() - t:.1f} s)")
    card = read_card(args.model or bundled_model_path("unet"))
    d = options.DEFAULTS
    print(describe_path(slide_path, plan=PlanSettings(card.mpp, card.window_px,
                                                       d["overlap"], d["block"],
                                                       d["chunk"])).text())
    results = out / "results"
    config = RunConfig(out_dir=results, model_path=args.model, truth=truth,
                       infer=InferConfig(batch_size=16), overwrite=args.overwrite)
    result = run_slides([slide_path], config,
                        ClusterConfig(scheduler=args.scheduler, workers=args.workers))
    slide_dir = final_dir_for(results, slide_path)
    assert isinstance(slide_dir, Path)  # the demo writes to a local folder
    if not (slide_dir / REPORT).is_file():
        # The run said why in its own error line; nothing to show.
        print(f"demo: no results for {slide_path} (see the error above)", file=sys.stderr)
        return 1
    report = json.loads((slide_dir / REPORT).read_text())
    score = report.get("score") or {}
    print()
    print(f"mosaic   {slide_dir / 'mask.zarr'}   (OME-Zarr; open in napari with napari-ome-zarr)")
    print(f"polygons {slide_dir / 'tumor.geojson'}   ({report['tumour_regions']} regions; "
          "QuPath: File > Import objects)")
    print(f"overlay  {slide_dir / 'overlay.png'}")
    print(f"report   {slide_dir / 'report.json'}   summary {results / 'summary.md'}")
    if score.get("iou") is not None:
        print(f"scores   IoU {score['iou']:.3f}, Dice {score['dice']:.3f} against {truth.name} "
              f"(at {score.get('resolution_um')} µm/px)")
    stages = report["stage_s"]
    print(f"speed    {report['tiles']} tiles in {report['wall_s']:.1f} s, "
          f"{report['tiles_per_s']} tiles/s end to end; task-thread seconds: "
          + ", ".join(f"{k} {stages[k]:.1f}" for k in ("read", "predict", "blend", "write",
                                                        "pyramid", "vectorize") if k in stages))
    return 0 if result.ok else 1
