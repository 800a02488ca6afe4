"""``wsi-seg score``: IoU and Dice of a finished prediction against ground truth."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError, printable
from wsi_seg.orchestration import options

MAX_SCORE_SIDE_PX = 16384  # default --level: the finest level whose longer side fits this
MAX_REPORT_BYTES = 16 << 20  # a run's report.json is a few KiB; anything huge is not one

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
    p.add_argument("--slide", type=Path, required=True, help="the slide both belong to")
    p.add_argument("--level", type=options.argument_type("int", options.AT_LEAST_0),
                   default=None, metavar="LEVEL",
                   help="resolution: mosaic level (mask.zarr) or level-0 downsample 2^L "
                   f"(GeoJSON); default: finest with a side <= {MAX_SCORE_SIDE_PX} px")
    p.add_argument("--truth-class", action="append", dest="truth_classes", metavar="NAME",
                   help="class that counts as tumour (repeatable; '*' = every area "
                   "annotation; default: tumor/tumour/carcinoma/metastasis/... names)")
    p.add_argument("--threshold", type=options.BY_NAME["threshold"].parse, default=0.5,
                   metavar="P", help="probability at or above which a mosaic pixel is tumour "
                   "(0 < P <= 1) [0.5]")
    p.add_argument("--mpp", type=options.BY_NAME["mpp"].parse, default=None,
                   metavar="UM_PER_PX", help="slide level-0 µm/px override")
    p.add_argument("--mask-mpp", type=options.argument_type("float", options.POSITIVE),
                   default=None, metavar="UM_PER_PX",
                   help="µm/px of a mask TRUTH (needed for mask images/Zarr)")
    p.add_argument("--skip-slide-check", action="store_true",
                   help="score even when the run's records name another slide file (the "
                   "extent must still match)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--out", type=Path, default=None, metavar="JSON",
                   help="also write the result to this JSON file (its folder must exist)")
    p.set_defaults(handler=run)


def _auto_level(shape_at: Any, n_levels: int) -> int:
    for level in range(n_levels):
        if max(shape_at(level)) <= MAX_SCORE_SIDE_PX:
            return level
    return n_levels - 1


def resolve_pred(pred: Path) -> Path:
    """PRED as given, or the ``mask.zarr`` inside a slide's output folder."""
    if not pred.exists():
        raise WsiSegError("no such file or folder (PRED is a mask.zarr or tumor.geojson "
                          "written by wsi-seg run)", pred)
    if pred.is_dir() and not (pred / "zarr.json").is_file() and (pred / "mask.zarr").is_dir():
        return pred / "mask.zarr"
    return pred


def run_report(pred: Path) -> dict[str, Any] | None:
    """The run's ``report.json`` beside PRED (both live in ``OUT/NAME/``), if readable."""
    from wsi_seg.orchestration.pipeline import REPORT

    path = pred.parent / REPORT
    try:
        if path.stat().st_size > MAX_REPORT_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_same_slide(pred: Path, slide_path: Path, provenance: dict[str, Any]) -> None:
    """PRED was made from this slide file: the size and header hash the run recorded in its
    report.json (a renamed or copied file passes), else the file name the mosaic recorded."""
    from wsi_seg.core.naming import slide_identity

    report = run_report(pred) or {}
    recorded = report.get("slide_identity")
    if isinstance(recorded, dict) and {"size", "head_sha256"} <= recorded.keys():
        mine = slide_identity(slide_path)
        if (mine["size"], mine["head_sha256"]) != (recorded["size"], recorded["head_sha256"]):
            raise WsiSegError(
                f"was made from {report.get('slide', 'another slide')} (says the run's "
                f"report.json), and {slide_path} is a different file; score it against its "
                "own slide (--skip-slide-check if that slide was rewritten)", pred)
        return
    name = provenance.get("slide")
    if isinstance(name, str) and name != slide_path.name:
        raise WsiSegError(f"was made from a slide named {name!r}, not {slide_path.name!r}; "
                          "score it against its own slide (--skip-slide-check if it was "
                          "renamed)", pred)


def check_mosaic_fits(mosaic: Any, bounds_x0: tuple[int, int, int, int], pred: Path,
                      slide_path: Path) -> None:
    """The mosaic covers the slide's level-0 bounds (to within one mosaic pixel, the part a
    run drops at the edge); otherwise it belongs to another slide and any score is wrong."""
    g = mosaic.geom
    f = g.level0_px_per_px
    bx, by, bw, bh = bounds_x0
    fits = (abs(g.origin_x0 - bx) < 1 and abs(g.origin_y0 - by) < 1
            and abs(g.width_px * f - bw) < f + 1 and abs(g.height_px * f - bh) < f + 1)
    if not fits:
        raise WsiSegError(
            f"covers {g.width_px * f:.0f} x {g.height_px * f:.0f} level-0 px, but slide "
            f"{slide_path.name} is {bw} x {bh} px: the mosaic was made from another slide",
            pred)


def score_files(pred: Path, truth_path: Path, slide_path: Path, *, level: int | None = None,
                truth_classes: list[str] | None = None, threshold: float = 0.5,
                mpp: float | None = None, mask_mpp: float | None = None,
                check_slide: bool = True) -> dict[str, Any]:
    """Score PRED against TRUTH on SLIDE; returns a JSON-ready dict (counts, scores, level).

    Raises WsiSegError (one line) for a bad threshold or level, a missing or unreadable file,
    or a PRED made from another slide (see :func:`check_same_slide`, skipped when
    ``check_slide`` is false, and :func:`check_mosaic_fits`, always).
    """
    from wsi_seg.evaluation.annotations import check_truth_fits, read_prediction_geojson, read_truth
    from wsi_seg.evaluation.metrics import score_geometries, score_slide
    from wsi_seg.stages.mosaic import open_mosaic
    from wsi_seg.stages.slide import open_slide
    from wsi_seg.stages.vectorize import PixelFrame

    trouble = options.BY_NAME["threshold"].problem(threshold)
    if trouble:
        raise WsiSegError(f"--threshold {threshold}: {trouble}")
    pred = resolve_pred(pred)
    with open_slide(slide_path, mpp=mpp) as slide:
        size, slide_mpp, bounds = slide.dimensions, slide.mpp, slide.bounds_x0
    mosaic = None
    if pred.is_dir():
        try:
            mosaic = open_mosaic(pred)
        except Exception as exc:  # zarr raises many types for a store that is not a mosaic
            raise WsiSegError(f"not a wsi-seg mask.zarr: {exc}", pred) from None
        check_mosaic_fits(mosaic, bounds, pred, slide_path)
    if check_slide:
        check_same_slide(pred, slide_path, mosaic.provenance if mosaic is not None else {})
    truth = read_truth(truth_path, truth_classes, mask_mpp=mask_mpp, slide_mpp=slide_mpp)
    truth = check_truth_fits(truth, size)
    if mosaic is not None:
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
    return "n/a" if v is None else f"{v:.4f}"


def run(args: argparse.Namespace) -> int:
    check_out(args.out)
    result = score_files(args.pred, args.truth, args.slide, level=args.level,
                         truth_classes=args.truth_classes, threshold=args.threshold,
                         mpp=args.mpp, mask_mpp=args.mask_mpp,
                         check_slide=not args.skip_slide_check)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        note = "  (prediction and truth both empty)" if result["empty_both"] else ""
        print(f"IoU {_fmt(result['iou'])}  Dice {_fmt(result['dice'])}{note}")
        print(f"  TP {result['tp']}  FP {result['fp']}  FN {result['fn']} px at "
              f"{result['resolution_um']:.3g} µm/px (level {result['level']}); truth classes: "
              f"{printable(', '.join(c or 'unclassified' for c in result['truth_classes']))}")
    if args.out is not None:
        from wsi_seg.core.files import write_json_atomic

        try:
            write_json_atomic(args.out, result)
        except OSError as exc:
            raise WsiSegError(f"cannot write ({exc.strerror or exc})", args.out) from None
    return 0
