"""Random training augmentation inside ``tf.data``: flips, 90-degree turns, colour jitter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorflow as tf


@dataclass(frozen=True)
class Augment:
    """Random augmentation applied to training tiles (never to validation).

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees.
        brightness: maximum brightness shift, fraction of full scale (0.1 = +-25 grey levels).
        contrast: maximum relative contrast change (0.1 = factor 0.9..1.1).
        saturation: maximum relative saturation change.
        hue: maximum hue shift, fraction of the colour circle (0.02 = +-7 degrees).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.08
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02

    @classmethod
    def off(cls) -> Augment:
        return cls(False, False, 0.0, 0.0, 0.0, 0.0)


def augment_tf(image: tf.Tensor, mask: tf.Tensor | None, aug: Augment) -> tuple[Any, Any]:
    """Augment one RGB tile (float32, 0..255) and its mask (same geometric transform)."""
    import tensorflow as tf

    # Geometric transforms on image and mask stacked, so they can never disagree.
    both = image if mask is None else tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    if aug.flips:
        both = tf.image.random_flip_left_right(both)
        both = tf.image.random_flip_up_down(both)
    if aug.rot90:
        both = tf.image.rot90(both, k=tf.random.uniform((), 0, 4, dtype=tf.int32))
    image = both[..., :3]
    if mask is not None:
        mask = both[..., 3:]
    x = image / 255.0
    if aug.brightness > 0:
        x = tf.image.random_brightness(x, aug.brightness)
    if aug.contrast > 0:
        x = tf.image.random_contrast(x, 1 - aug.contrast, 1 + aug.contrast)
    if aug.saturation > 0:
        x = tf.image.random_saturation(x, 1 - aug.saturation, 1 + aug.saturation)
    if aug.hue > 0:
        x = tf.image.random_hue(x, aug.hue)
    image = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    return image, mask
