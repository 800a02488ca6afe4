"""``wsi-seg score``: IoU and Dice of a finished prediction against ground truth."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from wsi_seg.errors import WsiSegError

MAX_SCORE_SIDE_PX = 16384  # default --level: the finest level whose longer side fits this

EPILOG = """\
PRED is a mask.zarr written by `wsi-seg run` (probability >= --threshold is tumour) or a
tumor.geojson (every area Feature is tumour). TRUTH is QuPath GeoJSON, ASAP XML, Aperio
ImageScope XML, or a mask image/Zarr (give --mask-mpp). Both are rasterised chunk by chunk
(pixel centres) at the stated resolution: mosaic level L of a mask.zarr, or level-0 / 2^L for
a GeoJSON prediction. Empty prediction and empty truth: IoU and Dice are undefined (n/a),
reported as empty_both.

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
    p.add_argument("pred", type=Path, metavar="PRED", help="mask.zarr or tumor.geojson")
    p.add_argument("truth", type=Path, metavar="TRUTH", help="ground-truth file")
    p.add_argument("--slide", type=Path, required=True, help="the slide both belong to")
    p.add_argument("--level", type=int, default=None,
                   help="resolution: mosaic level (mask.zarr) or level-0 downsample 2^L "
                   f"(GeoJSON); default: finest with a side <= {MAX_SCORE_SIDE_PX} px")
    p.add_argument("--truth-class", action="append", dest="truth_classes", metavar="NAME",
                   help="class that counts as tumour (repeatable; '*' = every area "
                   "annotation; default: tumor/tumour/carcinoma/metastasis/... names)")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability at or above which a mosaic pixel is tumour (0.5)")
    p.add_argument("--mpp", type=float, default=None, help="slide level-0 µm/px override")
    p.add_argument("--mask-mpp", type=float, default=None,
                   help="µm/px of a mask TRUTH (needed for mask images/Zarr)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, metavar="JSON",
                   help="also write the result to this JSON file")
    p.set_defaults(handler=run)


def _auto_level(shape_at: Any, n_levels: int) -> int:
    for level in range(n_levels):
        if max(shape_at(level)) <= MAX_SCORE_SIDE_PX:
            return level
    return n_levels - 1


def score_files(pred: Path, truth_path: Path, slide_path: Path, *, level: int | None = None,
                truth_classes: list[str] | None = None, threshold: float = 0.5,
                mpp: float | None = None, mask_mpp: float | None = None) -> dict[str, Any]:
    """Score PRED against TRUTH on SLIDE; returns a JSON-ready dict (counts, scores, level)."""
    from wsi_seg.annotations import check_truth_fits, read_prediction_geojson, read_truth
    from wsi_seg.metrics import score_geometries, score_slide
    from wsi_seg.mosaic import open_mosaic
    from wsi_seg.slide import open_slide
    from wsi_seg.vectorize import PixelFrame

    with open_slide(slide_path, mpp=mpp) as slide:
        size, slide_mpp = slide.dimensions, slide.mpp
    truth = read_truth(truth_path, truth_classes, mask_mpp=mask_mpp, slide_mpp=slide_mpp)
    truth = check_truth_fits(truth, size)
    if pred.is_dir():
        try:
            mosaic = open_mosaic(pred)
        except Exception as exc:  # zarr raises many types for a store that is not a mosaic
            raise WsiSegError(f"not a wsi-seg mask.zarr: {exc}", pred) from None
        level = _auto_level(mosaic.geom.level_shape, mosaic.n_levels) if level is None else level
        if not 0 <= level < mosaic.n_levels:
            raise WsiSegError(f"--level {level} not in the mosaic (0..{mosaic.n_levels - 1})",
                              pred)
        score = score_slide(mosaic, truth.geometry, level, threshold=threshold)
    else:
        pred_geom = read_prediction_geojson(pred)
        w, h = size

        def shape_at(lv: int) -> tuple[int, int]:
            return math.ceil(h / 2**lv), math.ceil(w / 2**lv)

        level = _auto_level(shape_at, 32) if level is None else level
        if level < 0:
            raise WsiSegError(f"--level must be >= 0, got {level}")
        rows, cols = shape_at(level)
        frame = PixelFrame(rows, cols, 0.0, 0.0, float(2**level), slide_mpp)
        score = score_geometries(pred_geom, truth.geometry, frame)
    return {"pred": str(pred), "truth": str(truth_path), "slide": str(slide_path),
            "truth_classes": list(truth.classes), "level": level, **score.as_dict()}


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    result = score_files(args.pred, args.truth, args.slide, level=args.level,
                         truth_classes=args.truth_classes, threshold=args.threshold,
                         mpp=args.mpp, mask_mpp=args.mask_mpp)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        note = "  (prediction and truth both empty)" if result["empty_both"] else ""
        print(f"IoU {_fmt(result['iou'])}  Dice {_fmt(result['dice'])}{note}")
        print(f"  TP {result['tp']}  FP {result['fp']}  FN {result['fn']} px at "
              f"{result['resolution_um']:.3g} µm/px (level {result['level']}); truth classes: "
              f"{', '.join(c or 'unclassified' for c in result['truth_classes'])}")
    if args.out is not None:
        tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, args.out)
    return 0
