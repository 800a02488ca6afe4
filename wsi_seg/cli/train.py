"""``wsi-seg train unet|patch``: train a model and write it with its card."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError

UNET_EPILOG = """\
layout: DIR/images/<stem>.png|jpg|tif and DIR/masks/<stem>.png|... with matching stems;
masks are binarised (values 0/1 as is, else >= --mask-threshold).
writes MODEL.keras + MODEL.json (card) and MODEL.training/ (train_metrics.csv,
learning_curves.png, checkpoint for --resume).

example:
  wsi-seg train unet --train data/train --valid data/valid --out unet.keras --mpp 1.0 \\
      --size 256 --epochs 40 --loss bce_dice
"""

PATCH_EPILOG = """\
layout (Kaggle IDC): DIR/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png.
patients are split (never patches) into train / validation / test; the test patients
(validation patients when there are none) are evaluated per patient: MODEL.training/patients.csv
and overlays/<patient>.png (prediction red, truth blue, both purple).

example:
  wsi-seg train patch --data IDC/ --out idc.keras --balance undersample --epochs 20
"""


def _common(p: argparse.ArgumentParser, default_loss: str, default_batch: int) -> None:
    g = p.add_argument_group("training")
    g.add_argument("--out", type=Path, required=True, metavar="MODEL.keras",
                   help="model file to write (its card MODEL.json and MODEL.training/ go beside)")
    g.add_argument("--epochs", type=int, default=30, help="maximum epochs (default 30)")
    g.add_argument("--batch-size", type=int, default=default_batch,
                   help=f"tiles per step (default {default_batch})")
    g.add_argument("--steps-per-epoch", type=int, default=None,
                   help="optimizer steps per epoch (default: one pass over the training data)")
    g.add_argument("--lr", type=float, default=1e-3, help="initial Adam learning rate (1e-3)")
    g.add_argument("--loss", choices=("bce", "dice", "bce_dice", "focal"), default=default_loss,
                   help=f"loss function (default {default_loss})")
    g.add_argument("--monitor", choices=("val_loss", "val_dice", "val_iou", "val_accuracy"),
                   default="val_loss", help="validation score that selects the best model")
    g.add_argument("--early-stopping", type=int, default=8, metavar="EPOCHS",
                   help="stop after this many epochs without improvement (0: never; default 8)")
    g.add_argument("--lr-patience", type=int, default=3, metavar="EPOCHS",
                   help="halve the learning rate after this many epochs without improvement "
                   "(0: never; default 3)")
    g.add_argument("--resume", action="store_true",
                   help="continue the previous run of --out from its last completed epoch")
    g.add_argument("--mixed-precision", action="store_true",
                   help="float16 compute on a GPU (the saved model is float32)")
    g.add_argument("--no-augment", action="store_true",
                   help="no flips, 90-degree rotations or colour jitter")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--quiet", action="store_true", help="no per-epoch progress lines")
    m = p.add_argument_group("model")
    m.add_argument("--channels", type=int, choices=(1, 3), default=3,
                   help="1: greyscale input (converted from RGB), 3: RGB (default)")
    m.add_argument("--normalisation", choices=("divide_255", "minus1_1", "imagenet"),
                   default="divide_255",
                   help="input scaling after greyscale conversion (default divide_255: 0..1; "
                        "imagenet: per-channel ImageNet mean and std, RGB only)")
    m.add_argument("--threshold", type=float, default=0.5,
                   help="probability at or above which the card calls tumour (default 0.5)")
    m.add_argument("--kernel-size", type=int, default=3, help="convolution kernel, px (3)")
    m.add_argument("--trained-on", default="",
                   help="text for the card's trained_on (default: describes the folders)")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train a UNet or a 50x50 patch classifier",
        description="Train a tumour model; the best epoch is saved as MODEL.keras with its "
        "card MODEL.json (kind, input, µm/px, normalisation, threshold, data, scores).",
    )
    sub = p.add_subparsers(dest="kind", metavar="KIND")
    _register_unet(sub)
    _register_patch(sub)
    p.set_defaults(handler=lambda args: _need_kind(p))


def _register_unet(sub: Any) -> None:
    u = sub.add_parser(
        "unet", help="dense per-pixel UNet from images/ + masks/ folders",
        description="Train a UNet on image/mask folders.", epilog=UNET_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    u.add_argument("--train", type=Path, required=True, metavar="DIR",
                   help="training folder with images/ and masks/")
    u.add_argument("--valid", type=Path, required=True, metavar="DIR",
                   help="validation folder with images/ and masks/ (selects the best epoch)")
    u.add_argument("--mpp", type=float, required=True,
                   help="resolution of the training images, µm/px (written to the card; "
                   "slides are read at this resolution at inference)")
    u.add_argument("--size", type=int, default=256, help="input tile side, px (default 256)")
    u.add_argument("--tile-mode", choices=("crop", "resize"), default="crop",
                   help="crop: random crops of --size px (default); resize: whole images "
                   "resized to --size")
    u.add_argument("--mask-threshold", type=int, default=128,
                   help="mask grey value (0..255) at or above which a pixel is tumour (128)")
    u.add_argument("--depth", type=int, default=4,
                   help="resolution levels; filters double per level (default 4)")
    u.add_argument("--base-filters", type=int, default=16,
                   help="filters at full resolution (default 16)")
    u.add_argument("--dropout", type=float, default=0.0, help="bottleneck dropout (0)")
    u.add_argument("--input-downsample", type=int, default=1, choices=(1, 2, 4),
                   help="run the network at 1/N resolution inside the model (2: ~3x faster "
                   "on CPU, output still --size px; default 1)")
    _common(u, "bce_dice", 8)
    u.set_defaults(handler=run_unet)


def _register_patch(sub: Any) -> None:
    q = sub.add_parser(
        "patch", help="IDC-style 50x50 patch classifier with a patient split",
        description="Train a patch classifier on the IDC folder layout.", epilog=PATCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    q.add_argument("--data", type=Path, required=True, metavar="DIR", help="IDC-layout folder")
    q.add_argument("--mpp", type=float, default=4.0,
                   help="resolution of the patches, µm/px (IDC is about 4.0, i.e. 2.5x; default)")
    q.add_argument("--size", type=int, default=50,
                   help="patch side, px; smaller patches are padded white (default 50)")
    q.add_argument("--balance", choices=("none", "oversample", "undersample"), default="none",
                   help="class balancing of the training patches (default none)")
    q.add_argument("--val-fraction", type=float, default=0.15,
                   help="fraction of patients for validation (default 0.15)")
    q.add_argument("--test-fraction", type=float, default=0.15,
                   help="fraction of patients for the per-patient test (default 0.15)")
    q.add_argument("--val-patients", default=None, metavar="P1,P2",
                   help="explicit validation patients (overrides the fractions)")
    q.add_argument("--test-patients", default=None, metavar="P1,P2",
                   help="explicit test patients (overrides the fractions)")
    q.add_argument("--filters", default="32,64",
                   help="filters of the conv blocks, comma-separated (default 32,64)")
    q.add_argument("--dense-units", type=int, default=128, help="hidden dense units (128)")
    q.add_argument("--dropout", type=float, default=0.25, help="dropout rate (0.25)")
    q.add_argument("--no-overlays", action="store_true", help="skip per-patient overlay PNGs")
    _common(q, "bce", 64)
    q.set_defaults(handler=run_patch)


def _need_kind(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _config(args: argparse.Namespace) -> Any:
    from wsi_seg.training.augment import Augment
    from wsi_seg.training.config import TrainConfig

    return TrainConfig(
        out=args.out, epochs=args.epochs, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, learning_rate=args.lr, loss=args.loss,
        monitor=args.monitor, early_stopping=args.early_stopping, lr_patience=args.lr_patience,
        resume=args.resume, mixed_precision=args.mixed_precision, seed=args.seed,
        augment=Augment.off() if args.no_augment else Augment(),
        verbose=0 if args.quiet else 2,
    )


def _report(result: Any) -> None:
    from wsi_seg.core.scores import format_score

    scores = ", ".join(f"{k} {format_score(v, '.4g')}"
                       for k, v in result.card.validation.items())
    print(f"wrote {result.model_path} (+ {result.model_path.with_suffix('.json').name}); "
          f"{result.epochs_run} epochs, {result.seconds_per_epoch:.1f} s/epoch"
          f"{', stopped early' if result.stopped_early else ''}")
    print(f"validation: {scores}")


def run_unet(args: argparse.Namespace) -> int:
    from wsi_seg.training.unet_task import UnetOptions, train_unet

    opts = UnetOptions(
        train_dir=args.train, valid_dir=args.valid, mpp=args.mpp, input_size_px=args.size,
        channels=args.channels, tile_mode=args.tile_mode, mask_threshold=args.mask_threshold,
        depth=args.depth, base_filters=args.base_filters, kernel_size=args.kernel_size,
        dropout=args.dropout, input_downsample=args.input_downsample,
        normalisation=args.normalisation, threshold=args.threshold, trained_on=args.trained_on,
    )
    _report(train_unet(opts, _config(args)))
    return 0


def _names(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(s.strip() for s in text.split(",") if s.strip())


def run_patch(args: argparse.Namespace) -> int:
    from wsi_seg.training.patch_task import PatchOptions, train_patch
    from wsi_seg.training.patients import summarise_patients

    try:
        filters = tuple(int(f) for f in args.filters.split(","))
    except ValueError:
        raise WsiSegError(
            f"--filters must be integers separated by commas, not {args.filters!r}"
        ) from None
    val, test = _names(args.val_patients), _names(args.test_patients)
    opts = PatchOptions(
        data_dir=args.data, mpp=args.mpp, input_size_px=args.size, channels=args.channels,
        balance=args.balance, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        val_patients=val, test_patients=test if (test is not None or val is None) else (),
        filters=filters, dense_units=args.dense_units, dropout=args.dropout,
        kernel_size=args.kernel_size, normalisation=args.normalisation,
        threshold=args.threshold, overlays=not args.no_overlays, trained_on=args.trained_on,
    )
    result, scores = train_patch(opts, _config(args))
    _report(result)
    from wsi_seg.core.scores import format_score as fmt

    for s in scores:
        print(f"  patient {s.patient}: {s.patches} patches, accuracy {s.accuracy:.3f}, "
              f"IoU {fmt(s.iou, '.3f')}")
    summary = summarise_patients(scores)
    print(f"  mean over {int(summary['patients'])} patients: accuracy "
          f"{fmt(summary['mean_accuracy'], '.3f')}, IoU {fmt(summary['mean_iou'], '.3f')}")
    return 0
