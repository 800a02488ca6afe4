"""``wsi-seg evaluate``: a model's Dice, IoU and accuracy on image and mask folders.

Each image (at the model's resolution) is predicted exactly as ``run`` predicts a slide, with
run's window grid, padding, blending and defaults (:class:`WindowOptions`), and thresholded at
the card's threshold. Scores follow the one IoU/Dice rule of :mod:`wsi_seg.evaluation.metrics`:
an image with empty truth and empty prediction has no Dice or IoU (None), is left out of the
means and counted in ``empty_both``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.scores import mean_score
from wsi_seg.evaluation.metrics import OverlapScore, iou_dice, summarize_scores
from wsi_seg.orchestration.pipeline import CHUNK_WINDOWS, RunConfig
from wsi_seg.stages.blend import (
    BLEND_MODES,
    BlendSpec,
    PredictFn,
    blend_mode,
    sliding_window_inference,
)
from wsi_seg.stages.card import ModelCard
from wsi_seg.stages.infer import InferConfig, Predictor
from wsi_seg.stages.tiling import step_for
from wsi_seg.training.images import image_files, read_mask, read_rgb


@dataclass(frozen=True)
class ImageScore:
    """Scores of one image at the model's threshold (Dice/IoU None when both masks are empty:
    undefined); pixel counts in the image's pixels."""

    name: str
    dice: float | None
    iou: float | None
    accuracy: float
    tumour_px: int
    predicted_px: int
    intersection_px: int


@dataclass(frozen=True)
class WindowOptions:
    """How ``wsi-seg run`` places and blends windows, so ``evaluate`` scores what ``run``
    produces. The defaults are run's (:class:`wsi_seg.orchestration.pipeline.RunConfig`).

    Attributes:
        overlap: fraction of a window shared with the next (MONAI's step rule).
        stride_px: window step in working pixels, overriding ``overlap``.
        blend: ``gaussian``, ``hann`` or ``constant``; None: run's choice for the model kind
            (:func:`wsi_seg.stages.blend.blend_mode`).
        sigma_scale: Gaussian sigma as a fraction of the window edge.
        batch_size: windows per model call; None: the device's default (16 CPU, 128 GPU).
    """

    overlap: float = RunConfig.overlap
    stride_px: int | None = RunConfig.stride_px
    blend: str | None = RunConfig.blend
    sigma_scale: float = RunConfig.sigma_scale
    batch_size: int | None = InferConfig.batch_size

    def check(self, roi_px: int | None = None) -> None:
        """WsiSegError naming the option for a value that cannot be right (``roi_px``: the
        model's window edge, which bounds the stride)."""
        if not 0 <= self.overlap < 1:
            raise WsiSegError(f"--overlap must lie in [0, 1), got {self.overlap:g}")
        if self.stride_px is not None and self.stride_px < 1:
            raise WsiSegError(f"--stride must be at least 1 px, got {self.stride_px}")
        if self.stride_px is not None and roi_px is not None and self.stride_px > roi_px:
            # Pixels between windows would be predicted by none and score as background.
            raise WsiSegError(f"--stride {self.stride_px} px is larger than the model's "
                              f"{roi_px} px window: windows would leave gaps")
        if self.blend is not None and self.blend not in BLEND_MODES:
            raise WsiSegError(f"unknown blend mode {self.blend!r}; use one of "
                              f"{', '.join(BLEND_MODES)}")
        if not (math.isfinite(self.sigma_scale) and self.sigma_scale > 0):
            raise WsiSegError(f"--sigma-scale must be positive, got {self.sigma_scale:g}")
        if self.batch_size is not None and self.batch_size < 1:
            raise WsiSegError(f"--batch-size must be at least 1, got {self.batch_size}")

    def spec(self, card: ModelCard) -> BlendSpec:
        """The blend specification ``run`` uses for this model (see ``pipeline.prepare_slide``)."""
        roi = card.window_px
        self.check(roi)
        step = self.stride_px or step_for(roi, self.overlap)
        return BlendSpec(roi, step, blend_mode(card.kind, self.blend), self.sigma_scale,
                         self.batch_size or CHUNK_WINDOWS)


def predict_image(image: np.ndarray, predict: PredictFn, spec: BlendSpec) -> np.ndarray:
    """Tumour probability ``(h, w)`` float32 of an RGB uint8 image at the model's resolution.

    Exactly :func:`wsi_seg.stages.blend.sliding_window_inference`, the specification the ``run``
    mosaic equals bit for bit: ``run``'s window grid, padding and importance-weighted blend.
    """
    return sliding_window_inference(
        image, predict, spec.roi_px, mode=spec.mode, sigma_scale=spec.sigma_scale,
        batch_size=spec.batch_size, step_px=spec.step_px,
    )


def overlap_scores(pred: np.ndarray, truth: np.ndarray
                   ) -> tuple[float | None, float | None, float]:
    """Dice, IoU and accuracy of two boolean masks; Dice/IoU None when both are empty."""
    score = iou_dice(pred, truth)  # the one IoU/Dice rule (wsi_seg.evaluation.metrics)
    acc = float(np.mean(pred.astype(bool) == truth.astype(bool)))
    return score.dice, score.iou, acc


def evaluate_folder(
    model_path: Path,
    images_dir: Path,
    masks_dir: Path,
    threshold: float | None = None,
    mask_threshold: int = 128,
    window: WindowOptions = WindowOptions(),
) -> tuple[list[ImageScore], ModelCard]:
    """Score a model on images and masks with matching stems (images at the model's µm/px).

    Each image is predicted as ``run`` predicts a slide (:func:`predict_image`) and
    thresholded at ``threshold`` (0..1), the card's by default; masks are binarised at
    ``mask_threshold`` (0..255) unless they hold only 0 and 1.
    """
    if threshold is not None and not 0 <= threshold <= 1:
        raise WsiSegError(f"--threshold must lie in [0, 1], got {threshold:g}")
    if not 0 <= mask_threshold <= 255:
        raise WsiSegError(f"--mask-threshold must lie in 0..255, got {mask_threshold}")
    window.check()
    pairs = _matching_files(images_dir, masks_dir)
    with Predictor.from_path(model_path, InferConfig(batch_size=window.batch_size)) as predictor:
        card = predictor.card
        spec = window.spec(card)
        thr = card.threshold if threshold is None else threshold
        scores = [_score_image(stem, image, mask, predictor, spec, thr, mask_threshold)
                  for stem, (image, mask) in pairs.items()]
    return scores, card


def _matching_files(images_dir: Path, masks_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Image and mask files by stem, sorted; WsiSegError for a missing folder, no images or
    an image without a mask."""
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise WsiSegError("folder not found", d)
    images, masks = image_files(images_dir), image_files(masks_dir)
    if not images:
        raise WsiSegError("no images found", images_dir)
    orphans = sorted(set(images) - set(masks))
    if orphans:
        raise WsiSegError(f"{len(orphans)} image(s) without a mask, e.g. {images[orphans[0]].name}",
                          masks_dir)
    return {stem: (images[stem], masks[stem]) for stem in sorted(images)}


def _score_image(stem: str, image_path: Path, mask_path: Path, predict: PredictFn,
                 spec: BlendSpec, threshold: float, mask_threshold: int) -> ImageScore:
    """One image's scores: predicted as ``run`` would, thresholded at ``threshold``."""
    img = read_rgb(image_path)
    truth = read_mask(mask_path, mask_threshold)
    if truth.shape != img.shape[:2]:
        raise WsiSegError(
            f"mask is {truth.shape[1]}x{truth.shape[0]} px, image {img.shape[1]}x{img.shape[0]} px",
            mask_path,
        )
    pred = predict_image(img, predict, spec) >= threshold
    dice, iou, accuracy = overlap_scores(pred, truth)
    inter = int(np.sum(pred & truth.astype(bool)))
    return ImageScore(stem, dice, iou, accuracy, int(truth.sum()), int(pred.sum()), inter)


class ImageSummary(TypedDict):
    """:func:`summarise_images`: counts, and scores that are None when undefined."""

    images: float
    mean_dice: float | None
    mean_iou: float | None
    mean_accuracy: float | None
    empty_both: float  # images without Dice/IoU (empty vs empty), left out of the means
    pooled_dice: float | None
    pooled_iou: float | None


def summarise_images(scores: Sequence[ImageScore]) -> ImageSummary:
    """Mean Dice/IoU (over images with tumour in truth or prediction) and mean accuracy;
    pooled Dice/IoU over all pixels; the count of empty-vs-empty images. A score with no
    defined value to average is None."""
    # Mean = run's macro, pooled = run's micro: the same rule as `run` (wsi_seg.evaluation.metrics).
    run = summarize_scores(
        OverlapScore(s.intersection_px, s.predicted_px - s.intersection_px,
                     s.tumour_px - s.intersection_px) for s in scores)
    return {
        "images": float(len(scores)),
        "mean_dice": run.macro_dice,
        "mean_iou": run.macro_iou,
        "mean_accuracy": mean_score(s.accuracy for s in scores).mean,
        "empty_both": float(run.n_empty_both),
        "pooled_dice": run.micro_dice,
        "pooled_iou": run.micro_iou,
    }
