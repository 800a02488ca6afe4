"""Training a UNet on ``images/`` + ``masks/`` folders (:func:`train_unet`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.stages.card import ModelCard
from wsi_seg.stages.models import build_model
from wsi_seg.training.config import TrainConfig, TrainResult
from wsi_seg.training.fit_loop import fit
from wsi_seg.training.unet_data import (
    TILE_MODES,
    find_pairs,
    fixed_dataset,
    fixed_tiles,
    load_pairs,
    unet_train_dataset,
)


@dataclass(frozen=True)
class UnetOptions:
    """Data and architecture of a UNet run.

    Attributes:
        train_dir, valid_dir: folders with ``images/`` and ``masks/``.
        mpp: resolution of the training images, µm/px (written to the card; inference reads
            slides at this resolution).
        input_size_px: side of the model input, pixels.
        channels: 1 (greyscale) or 3 (RGB).
        tile_mode: ``crop`` (random crops, any image size) or ``resize`` (whole images resized).
        mask_threshold: mask grey value (0..255) at or above which a pixel is tumour.
        depth, base_filters, kernel_size, dropout, input_downsample: see
            :func:`wsi_seg.stages.models.build_unet`.
        normalisation: input normalisation (card).
        threshold: output threshold written to the card.
        trained_on: the card's ``trained_on`` text (empty: describes the folders).
    """

    train_dir: Path
    valid_dir: Path
    mpp: float
    input_size_px: int = 256
    channels: int = 3
    tile_mode: str = "crop"
    mask_threshold: int = 128
    depth: int = 4
    base_filters: int = 16
    kernel_size: int = 3
    dropout: float = 0.0
    input_downsample: int = 1
    normalisation: str = "divide_255"
    threshold: float = 0.5
    trained_on: str = ""

    def spec(self) -> dict[str, Any]:
        """Model kind and builder arguments; WsiSegError for an architecture that cannot be
        built (checked now, before any data is read into a pipeline)."""
        args = dict(
            input_size_px=self.input_size_px, channels=self.channels, depth=self.depth,
            base_filters=self.base_filters, kernel_size=self.kernel_size, dropout=self.dropout,
            input_downsample=self.input_downsample,
        )
        try:
            build_model("unet", **args)
        except ValueError as exc:
            raise WsiSegError(f"bad UNet options: {exc}") from None
        return {"kind": "unet", "args": args}


def train_unet(opts: UnetOptions, cfg: TrainConfig) -> TrainResult:
    """Train a UNet on ``images/`` + ``masks/`` folders; see
    :mod:`wsi_seg.training.fit_loop` for the files written."""
    cfg.check()
    if opts.tile_mode not in TILE_MODES:
        raise WsiSegError(f"unknown tile mode {opts.tile_mode!r}; use crop or resize")
    train_pairs, valid_pairs = find_pairs(opts.train_dir), find_pairs(opts.valid_dir)
    images, masks = load_pairs(train_pairs, opts.mask_threshold)
    v_images, v_masks = load_pairs(valid_pairs, opts.mask_threshold)
    spec = opts.spec()
    size = opts.input_size_px
    steps = cfg.steps_per_epoch or _steps_per_pass(masks, size, cfg.batch_size, opts.tile_mode)
    train_ds = unet_train_dataset(
        images, masks, size, opts.channels, opts.normalisation, cfg.batch_size,
        opts.tile_mode, cfg.augment, cfg.data_seed(),
    )
    vx, vy = fixed_tiles(v_images, v_masks, size, opts.tile_mode)
    val_ds = fixed_dataset(vx, vy, opts.channels, opts.normalisation, cfg.batch_size)
    card = _card(opts, cfg, spec, steps, extra={
        "train_images": len(train_pairs), "valid_images": len(valid_pairs),
        "valid_tiles": len(vx), "valid_dir": str(opts.valid_dir),
        "tile_mode": opts.tile_mode, "mask_threshold": opts.mask_threshold,
    })
    return fit(spec, card, train_ds, steps, val_ds, cfg)


def _steps_per_pass(masks: list[np.ndarray], size: int, batch_size: int, mode: str) -> int:
    """Steps of one pass over the data: every pixel once in crops, or every image once."""
    if mode == "crop":
        return max(1, math.ceil(sum(m.size for m in masks) / (size * size) / batch_size))
    return max(1, math.ceil(len(masks) / batch_size))


def _card(opts: UnetOptions, cfg: TrainConfig, spec: dict[str, Any], steps: int,
          extra: dict[str, Any]) -> ModelCard:
    """The card template :func:`~wsi_seg.training.fit_loop.fit` fills with scores."""
    trained_on = opts.trained_on or (
        f"{extra['train_images']} image/mask pairs from {opts.train_dir} at {opts.mpp:g} µm/px "
        f"({opts.tile_mode} {opts.input_size_px} px)"
    )
    return ModelCard(
        kind="unet", input_size_px=opts.input_size_px, channels=opts.channels, mpp=opts.mpp,
        normalisation=opts.normalisation, threshold=opts.threshold, trained_on=trained_on,
        architecture={"builder": "build_unet", **spec["args"]},
        training=cfg.card_training(steps, extra),
        name=cfg.out.stem,
        extra={"validation_note": f"dice, iou and accuracy pool all pixels of "
               f"{extra['valid_tiles']} fixed tiles of {opts.valid_dir}, loss is their batch "
               "mean (used for model selection)"},
    )
