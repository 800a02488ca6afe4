"""Training losses: plain functions of a batch's truth and predicted probabilities.

Written with ``keras.ops`` so they run on any Keras backend (TensorFlow, JAX). Each returns
one scalar: the mean over the batch's pixels (a UNet) or patches (a patch classifier).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

LOSSES = ("bce", "dice", "bce_dice", "focal")
SMOOTH = 1.0  # soft-Dice smoothing, pixels: keeps the loss finite on tumour-free batches


def _f32(y_true: Any, y_pred: Any) -> tuple[Any, Any]:
    # Under mixed precision predictions arrive as float16; the sums below need float32.
    from keras import ops

    return ops.cast(y_true, "float32"), ops.cast(y_pred, "float32")


def bce(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy, mean over pixels (or patches)."""
    import keras

    y_true, y_pred = _f32(y_true, y_pred)
    return keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))


def dice_loss(y_true: Any, y_pred: Any) -> Any:
    """1 - soft Dice over the whole batch (batch-global, so empty tiles do not dominate)."""
    from keras import ops

    y_true, y_pred = _f32(y_true, y_pred)
    inter = ops.sum(y_true * y_pred)
    return 1.0 - (2.0 * inter + SMOOTH) / (ops.sum(y_true) + ops.sum(y_pred) + SMOOTH)


def bce_dice(y_true: Any, y_pred: Any) -> Any:
    """BCE + soft-Dice loss: BCE's per-pixel gradients plus Dice's robustness to imbalance."""
    return bce(y_true, y_pred) + dice_loss(y_true, y_pred)


def focal(y_true: Any, y_pred: Any) -> Any:
    """Binary focal loss (gamma 2): down-weights easy pixels."""
    import keras

    y_true, y_pred = _f32(y_true, y_pred)
    return keras.ops.mean(keras.losses.binary_focal_crossentropy(y_true, y_pred, gamma=2.0))


LOSS_FUNCTIONS: dict[str, Callable[[Any, Any], Any]] = {
    "bce": bce, "dice": dice_loss, "bce_dice": bce_dice, "focal": focal,
}
