"""``wsi-seg evaluate``: Dice / IoU / pixel accuracy of a model on images and masks."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg.core.files import write_atomic
from wsi_seg.stages.blend import BLEND_MODES

if TYPE_CHECKING:
    from wsi_seg.training.image_evaluation import WindowOptions

EPILOG = """\
Images must be at the model's resolution (its card's mpp); masks are binarised like training
masks. Each image is predicted exactly as `wsi-seg run` predicts a slide: the same window grid,
padding and blending, with the same options and defaults, thresholded at the card's threshold.
Dice and IoU are undefined for an image whose truth and prediction are both empty (n/a in
the table and the CSV, null in --json): such images are left out of the Dice/IoU means and
counted as empty_both. pooled_dice / pooled_iou count all pixels of all images together.

example:
  wsi-seg evaluate --model unet.keras --images test/images --masks test/masks --csv scores.csv
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "evaluate", help="Dice/IoU/accuracy of a model on image + mask folders",
        description="Score a model (UNet or patch classifier) on images with tumour masks, "
        "per image and on average.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", type=Path, required=True, metavar="MODEL.keras",
                   help="model file with its card MODEL.json beside it")
    p.add_argument("--images", type=Path, required=True, metavar="DIR", help="image folder")
    p.add_argument("--masks", type=Path, required=True, metavar="DIR",
                   help="mask folder (same file stems as the images)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold (default: the card's)")
    p.add_argument("--mask-threshold", type=int, default=128,
                   help="mask grey value (0..255) at or above which a pixel is tumour (128)")
    g = p.add_argument_group("windows, as in wsi-seg run")
    g.add_argument("--overlap", type=float, default=None,
                   help="window overlap fraction [0.25]")
    g.add_argument("--stride", type=int, default=None,
                   help="window step in working pixels, overriding --overlap (e.g. 25 for 50 px "
                   "patches)")
    g.add_argument("--blend", choices=BLEND_MODES, default=None,
                   help="window weighting [gaussian for a UNet, constant for a patch model]")
    g.add_argument("--sigma-scale", type=float, default=None,
                   help="gaussian sigma as a fraction of the window (MONAI) [0.125]")
    g.add_argument("--batch-size", type=int, default=None,
                   help="tiles per model call [16 on a CPU, 128 on a GPU]")
    p.add_argument("--csv", type=Path, default=None, help="write per-image scores to this CSV")
    p.add_argument("--json", action="store_true",
                   help="print the per-image scores and the summary as JSON instead of a table")
    p.set_defaults(handler=run)


def window_options(args: argparse.Namespace) -> WindowOptions:
    """The window options given; the others keep :class:`WindowOptions`' defaults, run's."""
    from wsi_seg.training.image_evaluation import WindowOptions

    given = {"overlap": args.overlap, "stride_px": args.stride, "blend": args.blend,
             "sigma_scale": args.sigma_scale, "batch_size": args.batch_size}
    return WindowOptions(**{k: v for k, v in given.items() if v is not None})


def run(args: argparse.Namespace) -> int:
    from wsi_seg.core.scores import format_score as fmt
    from wsi_seg.training.image_evaluation import evaluate_folder, summarise_images

    scores, card = evaluate_folder(
        args.model, args.images, args.masks, args.threshold, args.mask_threshold,
        window_options(args),
    )
    rows = [["image", "dice", "iou", "accuracy", "tumour_px", "predicted_px"]]
    for s in scores:
        rows.append([s.name, fmt(s.dice), fmt(s.iou), fmt(s.accuracy), str(s.tumour_px),
                     str(s.predicted_px)])
    summary = summarise_images(scores)
    if args.json:
        # Strict JSON: an undefined score is null (never NaN).
        print(json.dumps({
            "model": {"kind": card.kind, "mpp": card.mpp, "name": card.name},
            "images": [dataclasses.asdict(s) for s in scores],
            "summary": {**summary, "images": int(summary["images"]),
                        "empty_both": int(summary["empty_both"])},
        }, indent=2, allow_nan=False))
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
        print(f"mean over {len(scores)} images ({card.kind} model at {card.mpp:g} µm/px): "
              f"Dice {fmt(summary['mean_dice'])}, IoU {fmt(summary['mean_iou'])}, "
              f"accuracy {fmt(summary['mean_accuracy'])}; pooled Dice "
              f"{fmt(summary['pooled_dice'])}; empty_both {int(summary['empty_both'])}")
    if args.csv:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        text = io.StringIO()
        csv.writer(text).writerows(rows)
        write_atomic(args.csv, text.getvalue())
    return 0
