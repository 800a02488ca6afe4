"""Tiny real Keras models with known outputs, saved with cards, for pipeline tests.

Each is a genuine ``.keras`` archive loaded through the safe loader and run by TensorFlow; only
their weights are chosen by hand so the expected mosaic can be computed independently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_seg.stages.card import ModelCard, save_model


def _save(model: object, path: Path, kind: str, roi: int, mpp: float) -> Path:
    card = ModelCard(kind=kind, input_size_px=roi, channels=3, mpp=mpp, name=path.stem,
                     trained_on="hand-set weights (test fixture)")
    save_model(model, card, path)
    return path


def constant_unet(path: Path, value: float = 0.6, roi: int = 64, mpp: float = 1.0) -> Path:
    """Outputs ``value`` everywhere: a 1x1 conv with zero kernel and bias logit(value)."""
    import keras

    logit = float(np.log(value / (1 - value)))
    inp = keras.Input((roi, roi, 3))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid", kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(logit),
                              dtype="float32")(inp)
    return _save(keras.Model(inp, out), path, "unet", roi, mpp)


def red_channel_unet(path: Path, roi: int = 64, mpp: float = 1.0) -> Path:
    """A per-pixel model: probability = red / 255 (input is already divided by 255)."""
    import keras

    inp = keras.Input((roi, roi, 3))
    pick_red = np.array([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1)
    out = keras.layers.Conv2D(1, 1, activation="linear", use_bias=False,
                              kernel_initializer=keras.initializers.Constant(pick_red),
                              dtype="float32")(inp)
    return _save(keras.Model(inp, out), path, "unet", roi, mpp)


def mean_red_patch(path: Path, roi: int = 50, mpp: float = 4.0) -> Path:
    """A patch classifier: score = mean red / 255 over the patch."""
    import keras

    inp = keras.Input((roi, roi, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, activation="linear", use_bias=False,
                             kernel_initializer=keras.initializers.Constant(
                                 np.array([[1.0], [0.0], [0.0]])), dtype="float32")(x)
    return _save(keras.Model(inp, out), path, "patch", roi, mpp)


def small_unet(path: Path, roi: int = 64, mpp: float = 1.0, seed: int = 0) -> Path:
    """A randomly initialised (seeded) small UNet: a realistic, non-trivial network."""
    import keras

    from wsi_seg.stages.models import build_unet

    keras.utils.set_random_seed(seed)
    model = build_unet(input_size_px=roi, channels=3, depth=3, base_filters=4)
    return _save(model, path, "unet", roi, mpp)


def tiny_keras_hub_segmenter(path: Path) -> Path:
    """A keras-hub ``DeepLabV3ImageSegmenter`` (2 classes, logits, 64 px) over a tiny
    ``ResNetBackbone``, random weights, nothing downloaded, saved as a Keras 3 archive (no
    card). keras-hub is in the dev extra: missing, this fails rather than skips."""
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    # ResNet insists on 64 filters in its stem and first stack; the rest stays small (about
    # 0.4 M parameters in all).
    encoder = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 16, 16], stackwise_num_blocks=[1, 1, 1],
        stackwise_num_strides=[1, 2, 2], block_type="basic_block", image_shape=(64, 64, 3))
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder, spatial_pyramid_pooling_key="P4", upsampling_size=4,
        dilation_rates=[2], low_level_feature_key="P2", projection_filters=8,
        image_shape=(64, 64, 3))
    keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=2).save(path)
    return path
