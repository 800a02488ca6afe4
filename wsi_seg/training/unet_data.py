"""UNet training data: ``DIR/images/<stem>.<ext>`` with ``DIR/masks/<stem>.<ext>``.

Stems match; images may have any size. Masks are binarised
(:func:`wsi_seg.training.images.read_mask`). Training draws random crops (or whole images
resized); validation uses fixed tiles on ``run``'s window grid, padded as ``run`` pads, so
validation sees what inference sees.
Inputs are preprocessed inside the pipeline by :func:`wsi_seg.stages.models.preprocess_tf`,
exactly as :func:`wsi_seg.stages.models.preprocess` does at inference.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.stages.card import InputNorm
from wsi_seg.stages.models import preprocess_tf
from wsi_seg.stages.slide import BACKGROUND_RGB
from wsi_seg.stages.tiling import window_starts
from wsi_seg.training.augment import Augment, augment_tf
from wsi_seg.training.images import IMAGE_SUFFIXES, image_files, read_mask, read_rgb

if TYPE_CHECKING:
    import tensorflow as tf

TILE_MODES = ("crop", "resize")


@dataclass(frozen=True)
class Pair:
    """An image and its tumour mask (same stem)."""

    image: Path
    mask: Path


def find_pairs(folder: str | Path) -> list[Pair]:
    """Pairs of ``folder/images/*`` and ``folder/masks/*`` matched by stem, sorted by stem.

    Raises WsiSegError for a missing or empty ``images`` folder and for images without masks.
    Masks without an image are ignored (a mask alone cannot train anything).
    """
    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    if not root.is_dir():
        raise WsiSegError("training folder not found", root)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise WsiSegError(
                f"expected sub-folders images/ and masks/ with matching file stems; {d.name}/ "
                "is missing",
                root,
            )
    images, masks = image_files(images_dir), image_files(masks_dir)
    if not images:
        raise WsiSegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found", images_dir)
    orphans = sorted(set(images) - set(masks))
    if orphans:
        shown = ", ".join(images[s].name for s in orphans[:3])
        more = f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
        raise WsiSegError(f"{len(orphans)} image(s) without a mask in masks/: {shown}{more}", root)
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def load_pairs(
    pairs: Sequence[Pair], mask_threshold: int = 128
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read every pair: RGB images and 0/1 masks. WsiSegError if a mask's size differs."""
    images, masks = [], []
    for pair in pairs:
        img = read_rgb(pair.image)
        mask = read_mask(pair.mask, mask_threshold)
        if mask.shape != img.shape[:2]:
            raise WsiSegError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} px but its image "
                f"{pair.image.name} is {img.shape[1]}x{img.shape[0]} px",
                pair.mask,
            )
        images.append(img)
        masks.append(mask)
    return images, masks


def pad_to(img: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad each axis shorter than ``size`` pixels to ``size`` with ``value``, centred.

    Centred (half before, the rest after) because that is where
    :func:`wsi_seg.stages.tiling.window_starts` puts the single window of a short axis and where
    ``run`` and ``evaluate`` pad it (:func:`wsi_seg.stages.blend.sliding_window_inference`): a
    training or validation image smaller than the model input is seen as inference sees it.
    Longer axes are left alone.
    """
    pads = [_centred_pad(n, size) for n in img.shape[:2]] + [(0, 0)] * (img.ndim - 2)
    if not any(a or b for a, b in pads):
        return img
    return np.pad(img, pads, constant_values=value)


def _centred_pad(length: int, size: int) -> tuple[int, int]:
    """``(before, after)`` pixels that bring an axis of ``length`` px to the window ``size``."""
    if length >= size:
        return 0, 0
    before = -int(window_starts(length, size, size)[0])
    return before, size - length - before


def resize_pair(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (area/linear) and its mask (nearest) to ``size`` x ``size``."""
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= size else cv2.INTER_LINEAR
    return (
        cv2.resize(img, (size, size), interpolation=interp),
        cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST),
    )


def grid_tiles(
    img: np.ndarray, mask: np.ndarray, size: int, step: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut an image and mask into ``size`` tiles on a grid (deterministic, for validation).

    The grid is ``run``'s (:func:`wsi_seg.stages.tiling.window_starts`, last window moved inside,
    short axes padded centred with glass white); ``step`` defaults to ``size``.
    """
    img, mask = pad_to(img, size, BACKGROUND_RGB), pad_to(mask, size, 0)
    step = step or size
    h, w = mask.shape
    xs, ms = [], []
    for y in window_starts(h, size, step).tolist():
        for x in window_starts(w, size, step).tolist():
            xs.append(img[y : y + size, x : x + size])
            ms.append(mask[y : y + size, x : x + size])
    return np.stack(xs), np.stack(ms)


def fixed_tiles(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: int,
    mode: str,
    max_tiles: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic validation tiles: grid tiles (``mode="crop"``) or resized images.

    Returns RGB uint8 ``(n, size, size, 3)`` and 0/1 uint8 ``(n, size, size, 1)``; at most
    ``max_tiles``, evenly spaced over the list when there are more.
    """
    xs, ys = [], []
    for img, mask in zip(images, masks, strict=True):
        if mode == "resize":
            a, b = resize_pair(img, mask, size)
            xs.append(a[None])
            ys.append(b[None])
        else:
            a, b = grid_tiles(img, mask, size)
            xs.append(a)
            ys.append(b)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_tiles:
        keep = np.linspace(0, len(x) - 1, max_tiles).round().astype(int)
        x, y = x[keep], y[keep]
    return x, y[..., None]


def random_crops(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless random ``size`` crops; images are drawn in proportion to their area, so every
    pixel is equally likely to be seen. Images smaller than ``size`` are padded white, centred
    (:func:`pad_to`)."""
    rng = np.random.default_rng(seed)
    padded = [
        (pad_to(i, size, BACKGROUND_RGB), pad_to(m, size, 0))
        for i, m in zip(images, masks, strict=True)
    ]
    areas = np.array([m.size for _, m in padded], dtype=np.float64)
    p = areas / areas.sum()
    while True:
        k = int(rng.choice(len(padded), p=p))
        img, mask = padded[k]
        h, w = mask.shape
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        yield img[y : y + size, x : x + size], mask[y : y + size, x : x + size, None]


def unet_train_dataset(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: int,
    channels: int,
    normalisation: str,
    batch_size: int,
    mode: str = "crop",
    aug: Augment | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Endless batches ``(x, y)`` for UNet training: crops (or resized images), augmented.

    ``x`` is the preprocessed model input (float32, ``channels`` channels), ``y`` the float32
    0/1 mask ``(batch, size, size, 1)``.
    """
    import tensorflow as tf

    aug = aug or Augment()
    spec = (
        tf.TensorSpec((size, size, 3), tf.uint8),
        tf.TensorSpec((size, size, 1), tf.uint8),
    )
    if mode == "resize":
        pairs = [resize_pair(i, m, size) for i, m in zip(images, masks, strict=True)]
        x = np.stack([a for a, _ in pairs])
        y = np.stack([b for _, b in pairs])[..., None]
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    elif mode == "crop":
        ds = tf.data.Dataset.from_generator(
            lambda: random_crops(images, masks, size, seed), output_signature=spec
        )
    else:
        raise WsiSegError(f"unknown tile mode {mode!r}; use crop or resize")

    def prepare(img: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img, mask = augment_tf(tf.cast(img, tf.float32), mask, aug)
        return preprocess_tf(img, InputNorm(channels, normalisation)), tf.cast(mask, tf.float32)

    return (
        ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def fixed_dataset(
    x_rgb: np.ndarray, y: np.ndarray, channels: int, normalisation: str, batch_size: int
) -> tf.data.Dataset:
    """Batches of fixed tiles (validation), preprocessed like training tiles."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x_rgb, y.astype(np.float32)))
    norm = InputNorm(channels, normalisation)
    return (
        ds.map(lambda a, b: (preprocess_tf(a, norm), b))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
