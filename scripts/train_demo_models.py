#!/usr/bin/env python
"""Reproduce the bundled demo models ``wsi_seg/weights/{unet,patch}_demo.keras`` (+ cards).

Everything comes from the package itself, nothing is downloaded:

1. ``wsi_seg.tools.synth`` writes synthetic H&E slides (6000 x 6000 px at 0.5 µm/px by default):
   seeds 1-4 train, seed 5 validates (selects the best epoch), seeds 6-7 are held out for the
   scores written to the cards.
2. ``wsi_seg.training.extract`` cuts them into 256 px tiles + masks at 1.0 µm/px (UNet) and
   IDC-layout 50 px patches at 4.0 µm/px (patch classifier; one "patient" per slide).
3. ``wsi_seg.training.unet_task`` and ``patch_task`` train both, ``evaluate_folder`` /
   per-patient evaluation scores them on the held-out slides, and the cards get those scores,
   the data description, the time per epoch and the measured inference speed.

Usage (about 8 minutes on an idle 2-core CPU; 20-25 minutes when other jobs share it)::

    python scripts/train_demo_models.py --work /tmp/demo-train --out wsi_seg/weights
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("demo-train"),
                   help="scratch folder for slides and tiles (default ./demo-train)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1]
                   / "wsi_seg" / "weights", help="where to write the models (package weights)")
    p.add_argument("--size", type=int, default=6000, help="synthetic slide side, level-0 px")
    p.add_argument("--train-seeds", default="1,2,3,4")
    p.add_argument("--val-seeds", default="5")
    p.add_argument("--test-seeds", default="6,7")
    p.add_argument("--unet-epochs", type=int, default=12)
    p.add_argument("--unet-steps", type=int, default=30, help="UNet steps per epoch")
    p.add_argument("--patch-epochs", type=int, default=20)
    p.add_argument("--only", choices=("unet", "patch"), default=None)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def seeds(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def make_slides(work: Path, all_seeds: list[int], size: int) -> dict[int, tuple[Path, Path]]:
    from wsi_seg.tools.synth import truth_path_for, write_synthetic_slide

    out = {}
    for s in all_seeds:
        path = work / "slides" / f"synth{s}.svs"
        truth = truth_path_for(path)
        if not (path.is_file() and truth.is_file()):
            r = write_synthetic_slide(path, (size, size), seed=s, mpp=0.5)
            print(f"synth seed {s}: {r.seconds:.1f} s", flush=True)
        out[s] = (path, truth)
    return out


def tiles_per_second(model_path: Path, batch: int = 16, reps: int = 8) -> dict[str, float]:
    """Inference speed of a saved model here: tf.function with a fixed batch shape.

    Wall-clock tiles/s depends on what else runs on the machine, so the CPU seconds per tile
    (all threads) and the load average are recorded too: ``cores / cpu_s_per_tile`` is the
    speed an idle machine with ``cores`` cores would reach.
    """
    import tensorflow as tf

    from wsi_seg.stages.card import load_model

    model, card = load_model(model_path)
    s, c = card.input_size_px, card.channels
    fn = tf.function(tf.autograph.experimental.do_not_convert(
        lambda x: model(x, training=False)),
        input_signature=[tf.TensorSpec((batch, s, s, c), tf.float32)])
    x = tf.constant(np.random.default_rng(0).random((batch, s, s, c), np.float32))
    fn(x)
    t, cpu = time.perf_counter(), time.process_time()
    for _ in range(reps):
        fn(x).numpy()
    wall, cpu = time.perf_counter() - t, time.process_time() - cpu
    n = batch * reps
    return {
        "tiles_per_s": round(n / wall, 1),
        "cpu_ms_per_tile": round(1000 * cpu / n, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "batch": batch,
    }


def _cpu_per_epoch(history: list[dict[str, float]]) -> float:
    """Mean CPU seconds of the epochs after the first (which also traces the graphs)."""
    rows = history[1:] or history
    return round(float(np.mean([r["cpu_seconds"] for r in rows])), 1)


def slide_text(ids: list[int], size: int) -> str:
    return (f"seeds {','.join(map(str, ids))} of wsi_seg.tools.synth.write_synthetic_slide "
            f"({size}x{size} px at 0.5 µm/px, svs)")


def extract_unet_tiles(base: Path, slides: dict[int, tuple[Path, Path]], tr: list[int],
                       va: list[int], te: list[int]) -> dict[str, int]:
    """Cut the UNet tiles of each split into ``base/<split>`` (once); tile counts by split."""
    from wsi_seg.training.extract import ExtractOptions, extract_training_data

    counts = {}
    for split, ids, stride in (("train", tr, 128), ("valid", va, 256), ("test", te, 256)):
        folder = base / split
        if not (folder / "images").is_dir():
            for s in ids:
                path, truth = slides[s]
                extract_training_data(path, truth, folder, ExtractOptions(
                    mpp=1.0, layout="unet", tile_px=256, stride_px=stride, min_tissue=0.25))
        counts[split] = len(list((folder / "images").glob("*.png")))
    print(f"UNet tiles: {counts}", flush=True)
    return counts


def held_out_scores(summary: dict[str, float | None]) -> dict[str, float | None]:
    """The card's ``test_*`` entries from :func:`summarise_images` of the held-out tiles
    (an undefined score stays None: the empty-vs-empty rule)."""

    def r(key: str) -> float | None:
        v = summary[key]
        return None if v is None else round(v, 4)

    return {
        "test_mean_dice": r("mean_dice"),
        "test_mean_iou": r("mean_iou"),
        "test_mean_accuracy": r("mean_accuracy"),
        "test_pooled_dice": r("pooled_dice"),
        "test_pooled_iou": r("pooled_iou"),
        "test_tiles": summary["images"],
        "test_empty_both": summary["empty_both"],
    }


def train_unet_demo(args: argparse.Namespace, slides: dict[int, tuple[Path, Path]]) -> dict:
    from wsi_seg.training.augment import Augment
    from wsi_seg.training.config import TrainConfig
    from wsi_seg.training.fit_loop import update_card
    from wsi_seg.training.image_evaluation import evaluate_folder, summarise_images
    from wsi_seg.training.unet_task import UnetOptions, train_unet

    tr, va, te = seeds(args.train_seeds), seeds(args.val_seeds), seeds(args.test_seeds)
    base = args.work / "unet"
    counts = extract_unet_tiles(base, slides, tr, va, te)
    out = args.out / "unet_demo.keras"
    trained_on = (
        f"{counts['train']} tiles of 256 px at 1.0 µm/px (stride 128 px, >= 25 % tissue) cut by "
        f"wsi_seg.training.extract from synthetic slides {slide_text(tr, args.size)}; "
        "random 256 px crops with flips, 90-degree rotations and colour jitter"
    )
    opts = UnetOptions(
        train_dir=base / "train", valid_dir=base / "valid", mpp=1.0, input_size_px=256,
        channels=3, depth=4, base_filters=8, input_downsample=2, trained_on=trained_on,
    )
    cfg = TrainConfig(
        out=out, epochs=args.unet_epochs, batch_size=8, steps_per_epoch=args.unet_steps,
        learning_rate=2e-3, loss="bce_dice", monitor="val_loss", early_stopping=6,
        lr_patience=3, seed=args.seed, augment=Augment(), verbose=2,
    )
    t = time.perf_counter()
    result = train_unet(opts, cfg)
    train_s = time.perf_counter() - t
    scores, _ = evaluate_folder(out, base / "test" / "images", base / "test" / "masks")
    summary = summarise_images(scores)
    speed = tiles_per_second(out)
    card = update_card(
        out,
        validation={**held_out_scores(summary),
                    **{f"val_{k}": v for k, v in result.card.validation.items()}},
        training={**result.card.training, "epochs_run": result.epochs_run,
                  "seconds_per_epoch": round(result.seconds_per_epoch, 1),
                  "cpu_seconds_per_epoch": _cpu_per_epoch(result.history),
                  "valid_dir": f"{counts['valid']} tiles of {slide_text(va, args.size)}",
                  "total_seconds": round(train_s, 1), "machine": f"{os.cpu_count()} CPU cores"},
        extra={
            "validation_note": (
                f"test_*: {counts['test']} held-out 256 px tiles at 1.0 µm/px from "
                f"{slide_text(te, args.size)}, never seen in training or model selection; "
                "per-tile Dice/IoU at threshold 0.5 averaged over tiles with tumour in truth "
                "or prediction (empty_both tiles excluded and counted), pooled_* over all "
                f"pixels. val_*: {counts['valid']} tiles of {slide_text(va, args.size)} used "
                "to select the best epoch (Dice/IoU/accuracy pooled over their pixels, loss "
                "their batch mean)."
            ),
            "inference_speed": speed,
            "inference_note": "tf.function, fixed batch of 256x256x3 float32 tiles, on the "
            f"{os.cpu_count()}-core CPU that trained it (shared with other jobs at the time: "
            "see load_average_1min)",
            "reproduce": "python scripts/train_demo_models.py",
        },
    )
    return {"card": card.to_dict(), "train_seconds": train_s}


def train_patch_demo(args: argparse.Namespace, slides: dict[int, tuple[Path, Path]]) -> dict:
    from wsi_seg.training.augment import Augment
    from wsi_seg.training.config import TrainConfig
    from wsi_seg.training.extract import ExtractOptions, extract_training_data
    from wsi_seg.training.fit_loop import update_card
    from wsi_seg.training.patch_task import PatchOptions, train_patch

    tr, va, te = seeds(args.train_seeds), seeds(args.val_seeds), seeds(args.test_seeds)
    folder = args.work / "idc"
    for s in tr + va + te:
        path, truth = slides[s]
        if not (folder / f"synth{s}").is_dir():
            # Training slides are cut with a 25 px stride (overlapping patches, 4x the data
            # of these small slides); held-out slides with the IDC grid of 50 px, so their
            # images rebuild exactly for the per-patient evaluation.
            extract_training_data(path, truth, folder, ExtractOptions(
                mpp=4.0, layout="idc", tile_px=50, stride_px=25 if s in tr else 50,
                min_tissue=0.5, name=f"synth{s}"))
    out = args.out / "patch_demo.keras"
    n_train = sum(1 for s in tr for _ in (folder / f"synth{s}").rglob("*.png"))
    trained_on = (
        f"{n_train} IDC-layout 50 px patches at 4.0 µm/px (stride 25 px, >= 50 % tissue; class 1 "
        "when >= 50 % "
        "tumour) cut by wsi_seg.training.extract from synthetic slides "
        f"{slide_text(tr, args.size)}, "
        "one patient per slide; tumour patches oversampled to balance classes; flips, "
        "rotations, colour jitter"
    )
    opts = PatchOptions(
        data_dir=folder, mpp=4.0, input_size_px=50, channels=3, balance="oversample",
        val_patients=tuple(f"synth{s}" for s in va), test_patients=tuple(f"synth{s}" for s in te),
        filters=(16, 32), dense_units=64, dropout=0.25, trained_on=trained_on,
    )
    cfg = TrainConfig(
        out=out, epochs=args.patch_epochs, batch_size=32, learning_rate=1e-3, loss="bce",
        monitor="val_loss", early_stopping=6, lr_patience=3, seed=args.seed, augment=Augment(),
        verbose=2,
    )
    t = time.perf_counter()
    result, scores = train_patch(opts, cfg)
    train_s = time.perf_counter() - t
    speed = tiles_per_second(out, batch=64)
    card = update_card(
        out,
        training={**result.card.training, "epochs_run": result.epochs_run,
                  "seconds_per_epoch": round(result.seconds_per_epoch, 1),
                  "cpu_seconds_per_epoch": _cpu_per_epoch(result.history),
                  "total_seconds": round(train_s, 1), "machine": f"{os.cpu_count()} CPU cores"},
        extra={
            **result.card.extra,
            "per_patient": {s.patient: {"accuracy": round(s.accuracy, 4), "iou": round(s.iou, 4),
                                        "patches": s.patches} for s in scores},
            "inference_speed": speed,
            "inference_note": "tf.function, fixed batch of 50x50x3 float32 patches, on the "
            f"{os.cpu_count()}-core CPU that trained it (shared with other jobs at the time: "
            "see load_average_1min)",
            "reproduce": "python scripts/train_demo_models.py",
        },
    )
    return {"card": card.to_dict(), "train_seconds": train_s}


def main() -> int:
    args = parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    all_seeds = seeds(args.train_seeds) + seeds(args.val_seeds) + seeds(args.test_seeds)
    slides = make_slides(args.work, all_seeds, args.size)
    report = {}
    if args.only in (None, "unet"):
        report["unet"] = train_unet_demo(args, slides)
    if args.only in (None, "patch"):
        report["patch"] = train_patch_demo(args, slides)
    # Training logs, curves and checkpoints stay in the scratch folder, not in the package.
    for kind in report:
        logs = args.out / f"{kind}_demo.training"
        if logs.is_dir():
            dest = args.work / f"{kind}_demo.training"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.move(str(logs), dest)
    (args.work / "demo_training_report.json").write_text(json.dumps(report, indent=2))
    for kind, r in report.items():
        path = args.out / f"{kind}_demo.keras"
        print(f"{kind}: {path} {path.stat().st_size / 1e6:.2f} MB, "
              f"{r['card']['training'].get('seconds_per_epoch')} s/epoch, "
              f"validation {json.dumps(r['card']['validation'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
