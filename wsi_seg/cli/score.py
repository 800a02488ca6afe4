"""``wsi-seg score``: IoU and Dice of a finished prediction against ground truth."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError, printable
from wsi_seg.core.params import AT_LEAST_0, POSITIVE
from wsi_seg.evaluation.score import MAX_SCORE_SIDE_PX, score_files
from wsi_seg.orchestration import options

EPILOG = """\
PRED is a mask.zarr written by `wsi-seg run` (probability >= --threshold is tumour) or a
tumor.geojson (every area Feature is tumour). TRUTH is QuPath GeoJSON, ASAP XML, Aperio
ImageScope XML, or a mask image/Zarr (give --mask-mpp). Both are rasterised chunk by chunk
(pixel centres) at the stated resolution: mosaic level L of a mask.zarr, or level-0 / 2^L for
a GeoJSON prediction. Empty prediction and empty truth: IoU and Dice are undefined (n/a),
reported as empty_both. PRED may also be a slide's output folder (OUT/NAME, holding mask.zarr).

PRED must come from --slide: its mosaic's extent must match the slide's, and where the run's
report.json lies beside PRED, the slide file it names must be this one (same size and header
bytes; a renamed copy passes). A mismatch is an error (exit 2), never a meaningless score.

examples:
  wsi-seg score results/x/mask.zarr x.tumor.geojson --slide x.svs
  wsi-seg score results/x/tumor.geojson tumor_009.xml --slide tumor_009.tif --level 3
  wsi-seg score results/x/mask.zarr truth.xml --slide x.svs --truth-class CaP --json
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score", help="IoU/Dice of a prediction (mask.zarr or tumor.geojson) against truth",
        description="Score a prediction against ground truth for one slide. Prints IoU and "
        "Dice; writes nothing unless --out is given.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("pred", type=Path, metavar="PRED",
                   help="mask.zarr or tumor.geojson (or the slide's output folder)")
    p.add_argument("truth", type=Path, metavar="TRUTH", help="ground-truth file")
    p.add_argument("--slide", required=True,
                   help="the slide both belong to (a file, or s3://bucket/key read in place)")
    p.add_argument("--level", type=options.argument_type("int", AT_LEAST_0),
                   default=None, metavar="LEVEL",
                   help="resolution: mosaic level (mask.zarr) or level-0 downsample 2^L "
                   f"(GeoJSON); default: finest with a side <= {MAX_SCORE_SIDE_PX} px")
    p.add_argument("--truth-class", action="append", dest="truth_classes", metavar="NAME",
                   help="class that counts as tumour (repeatable; '*' = every area "
                   "annotation; default: tumor/tumour/carcinoma/metastasis/... names)")
    p.add_argument("--threshold", type=options.BY_NAME["threshold"].parse, default=None,
                   metavar="P", help="probability at or above which a mosaic pixel is tumour "
                   "(0 < P <= 1) [the run's: the threshold its polygons were drawn at, "
                   "recorded in the mosaic]")
    p.add_argument("--mpp", type=options.BY_NAME["mpp"].parse, default=None,
                   metavar="UM_PER_PX", help="slide level-0 µm/px override")
    p.add_argument("--mask-mpp", type=options.argument_type("float", POSITIVE),
                   default=None, metavar="UM_PER_PX",
                   help="µm/px of a mask TRUTH (needed for mask images/Zarr)")
    p.add_argument("--skip-slide-check", action="store_true",
                   help="score even when the run's records name another slide file (the "
                   "extent must still match)")
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="the run's TOML file: its [storage] section says how an s3:// --slide "
                   "is reached (endpoint, region, profile); the other sections are not used")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, metavar="JSON",
                   help="also write the result to this JSON file (its folder must exist)")
    p.set_defaults(handler=run)


def check_out(path: Path | None) -> None:
    """--out names a file in an existing folder (checked before scoring, which can take a
    while)."""
    if path is None:
        return
    if path.is_dir():
        raise WsiSegError("--out is a folder; give the JSON file to write", path)
    if not path.parent.is_dir():
        raise WsiSegError(f"cannot write --out: folder {path.parent} does not exist", path)


def _fmt(v: float | None) -> str:
    from wsi_seg.core.scores import format_score

    return format_score(v, ".4f")


def run(args: argparse.Namespace) -> int:
    from wsi_seg.cli.run import storage_of
    from wsi_seg.stages.object_store import use_storage

    check_out(args.out)
    with use_storage(storage_of(args.config)):
        return _score(args)


def _score(args: argparse.Namespace) -> int:
    result = score_files(args.pred, args.truth, args.slide, level=args.level,
                         truth_classes=args.truth_classes, threshold=args.threshold,
                         mpp=args.mpp, mask_mpp=args.mask_mpp,
                         check_slide=not args.skip_slide_check).to_json()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        note = "  (prediction and truth both empty)" if result["empty_both"] else ""
        print(f"IoU {_fmt(result['iou'])}  Dice {_fmt(result['dice'])}{note}")
        print(f"  TP {result['tp']}  FP {result['fp']}  FN {result['fn']} px at "
              f"{result['resolution_um']:.3g} µm/px (level {result['level']}); truth classes: "
              f"{printable(', '.join(c or 'unclassified' for c in result['truth_classes']))}"
              + (f"; threshold {result['threshold']:g}" if result["threshold"] else ""))
    if args.out is not None:
        from wsi_seg.core.files import write_json_atomic

        try:
            write_json_atomic(args.out, result)
        except OSError as exc:
            raise WsiSegError(f"cannot write ({exc.strerror or exc})", args.out) from None
    return 0
