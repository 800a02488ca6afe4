"""Epoch scores: Dice, IoU and accuracy as stateful Keras metrics pooled over a whole epoch.

Keras averages a plain metric function over the epoch's batches. A mean of per-batch Dice
weighs a batch with one tumour pixel like one full of tumour and changes with the batch size,
so these metrics instead add up the 0/1 counts ``(tp, fp, fn, tn)`` of every batch in metric
variables and score the sums: an epoch's Dice is the Dice of all its pixels (patches, for a
patch model). Keras calls ``reset_state`` at the start of each epoch and of each validation.

Empty vs empty (no tumour in truth or prediction all epoch) follows the one rule of
:mod:`wsi_seg.evaluation.metrics`: Dice and IoU are undefined. A metric tensor cannot hold None,
so the ratio is taken as it stands and 0 / 0 gives NaN; the training loop turns it into None
(:func:`~wsi_seg.evaluation.metrics.defined_score`) as the epoch's logs leave Keras, so the
history, ``state.json``, ``train_metrics.csv`` (``n/a``) and the card (``null``) never see NaN.
"""

from __future__ import annotations

import functools
from typing import Any

#: Scores logged per epoch (``dice``, ``val_dice``, ...): what ``--monitor`` and the card use.
SCORES = ("dice", "iou", "accuracy")
_THRESHOLD = 0.5  # probability at or above which a pixel (patch) counts as tumour


def score_metrics() -> list[Any]:
    """Fresh stateful Keras metrics, one per name in :data:`SCORES`, thresholding at 0.5."""
    cls = pooled_score_class()
    return [cls(name) for name in SCORES]


def _count_dtype() -> str:
    """float64 where the backend has it: a float32 sum stops counting single pixels beyond
    2**24 (16.7 Mpx). JAX has float64 only in x64 mode; without it the counts are float32,
    exact within a batch and rounded (relative 1e-7 per batch) across batches."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.read("jax_enable_x64"):
            return "float32"
    return "float64"


@functools.cache
def pooled_score_class() -> type:
    """The ``PooledScore`` metric class (defined on first use: Keras is imported only when
    training)."""
    import keras
    from keras import ops

    class PooledScore(keras.metrics.Metric):
        """Dice, IoU or accuracy of the 0/1 counts ``(tp, fp, fn, tn)`` summed so far."""

        def __init__(self, name: str, **kwargs: Any) -> None:
            if name not in SCORES:
                raise ValueError(f"unknown score {name!r}; use one of {', '.join(SCORES)}")
            super().__init__(name=name, **kwargs)
            self.counts = self.add_variable(shape=(4,), initializer="zeros",
                                            dtype=_count_dtype(), name="counts")

        def update_state(self, y_true: Any, y_pred: Any, sample_weight: Any = None) -> None:
            t = ops.reshape(ops.cast(y_true, "float32") >= _THRESHOLD, (-1,))
            p = ops.reshape(ops.cast(y_pred, "float32") >= _THRESHOLD, (-1,))
            not_t, not_p = ops.logical_not(t), ops.logical_not(p)
            pairs = ((t, p), (not_t, p), (t, not_p), (not_t, not_p))
            self.counts.assign_add(ops.stack(
                [ops.sum(ops.cast(ops.logical_and(a, b), self.counts.dtype)) for a, b in pairs]))

        def result(self) -> Any:
            tp, fp, fn, tn = (self.counts[i] for i in range(4))
            # No smoothing: 0 / 0 is NaN, the tensor's "undefined" (module docstring).
            if self.name == "dice":
                value = 2 * tp / (2 * tp + fp + fn)
            elif self.name == "iou":
                value = tp / (tp + fp + fn)
            else:
                value = (tp + tn) / ops.maximum(tp + fp + fn + tn, 1.0)
            return ops.cast(value, "float32")

        def reset_state(self) -> None:
            self.counts.assign(ops.zeros((4,), self.counts.dtype))

        def get_config(self) -> dict[str, Any]:
            return {"name": self.name}

    return PooledScore
