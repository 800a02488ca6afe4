"""Model builders and the one input preprocessing shared by training and inference.

Two kinds of model, both from standard Keras layers only (so files load in safe mode):

* :func:`build_unet`: encoder-decoder with skip connections, dense tumour probability per pixel,
  output ``(n, h, w, 1)``;
* :func:`build_patch_cnn`: IDC-style classifier (two conv blocks with pooling and dropout, then
  dense), one tumour probability per patch, output ``(n, 1)``.

The last layer of both is a float32 sigmoid ``Activation``: under mixed precision everything
else computes in float16 but the probabilities (and the loss on them) stay float32.

:func:`scale_input` is the one input rule (greyscale, then the card's scaling), written once
for every array library: :func:`preprocess` (NumPy), :func:`preprocess_tf` (``tf.data`` at
training) and :func:`preprocess_ops` (inside the compiled forward pass at inference, on any
Keras backend) only cast and call it, so the model never sees inputs scaled differently from how
it was trained; tests hold the three equal on TensorFlow and JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from wsi_seg.core.errors import ModelError
from wsi_seg.stages.card import InputNorm

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from wsi_seg.stages.card import ModelCard

#: ITU-R BT.601 luma weights, the ones OpenCV and PIL use for RGB -> grey.
GREY_WEIGHTS = (0.299, 0.587, 0.114)


def _keras() -> Any:
    import keras

    return keras


def build_unet(
    input_size_px: int = 256,
    channels: int = 3,
    depth: int = 4,
    base_filters: int = 16,
    kernel_size: int = 3,
    dropout: float = 0.0,
    batch_norm: bool = True,
    input_downsample: int = 1,
) -> keras.Model:
    """A UNet with ``depth`` resolution levels.

    Level ``i`` (0 = full resolution) has ``base_filters * 2**i`` filters, so ``depth=4,
    base_filters=32`` gives 32, 64, 128, 256 filters with 3 poolings; the input side must be
    divisible by ``2**(depth - 1)``.

    Args:
        input_size_px: side of the square input, pixels.
        channels: 1 (greyscale) or 3 (RGB).
        depth: number of resolution levels (>= 2).
        base_filters: filters at full resolution.
        kernel_size: convolution kernel side, pixels.
        dropout: dropout rate at the bottleneck (0 disables it).
        batch_norm: batch normalisation after each convolution.
        input_downsample: process at ``1/input_downsample`` of the input resolution: the input
            is average-pooled by this factor and the logits are upsampled bilinearly back to
            the input size. 2 makes the network about 3x faster on a CPU (the full-resolution
            levels dominate the cost) at the price of 2-pixel detail in the output.
    """
    keras = _keras()
    layers = keras.layers
    _check_builder(input_size_px, channels, kernel_size, dropout)
    _check_unet(input_size_px, depth, input_downsample)

    def conv_block(x: Any, filters: int, name: str) -> Any:
        return _conv_block(layers, x, filters, name, kernel_size, batch_norm)

    inputs = keras.Input((input_size_px, input_size_px, channels), name="image")
    x = inputs
    if input_downsample > 1:
        x = layers.AveragePooling2D(input_downsample, name="input_pool")(x)
    skips = []
    for level in range(depth - 1):
        x = conv_block(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = conv_block(x, base_filters * 2 ** (depth - 1), "bottleneck")
    if dropout > 0:
        x = layers.Dropout(dropout, name="bottleneck_dropout")(x)
    for level in reversed(range(depth - 1)):
        filters = base_filters * 2**level
        x = layers.Conv2DTranspose(filters, 2, strides=2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = conv_block(x, filters, f"dec{level}")
    x = layers.Conv2D(1, 1, name="logits")(x)
    if input_downsample > 1:
        x = layers.UpSampling2D(input_downsample, interpolation="bilinear", name="output_up")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name="unet")


def _check_unet(input_size_px: int, depth: int, input_downsample: int) -> None:
    """ValueError unless the input side survives ``depth - 1`` poolings after the input pool."""
    if depth < 2:
        raise ValueError(f"depth must be >= 2, not {depth}")
    if input_downsample < 1:
        raise ValueError(f"input_downsample must be >= 1, not {input_downsample}")
    divisor = input_downsample * 2 ** (depth - 1)
    if input_size_px % divisor:
        raise ValueError(
            f"input_size_px {input_size_px} must be divisible by "
            f"input_downsample * 2**(depth-1) = {divisor}"
        )


def _conv_block(layers: Any, x: Any, filters: int, name: str, kernel_size: int,
                batch_norm: bool) -> Any:
    """Two (conv, batch norm, ReLU) stages, as both builders use them; without batch norm the
    convolutions get biases (with it a bias would only duplicate the norm's offset). Layer
    names are part of saved models: ``<name>_conv1``, ``<name>_bn1``, ``<name>_relu1``, then 2."""
    for i in (1, 2):
        x = layers.Conv2D(
            filters, kernel_size, padding="same", use_bias=not batch_norm,
            kernel_initializer="he_normal", name=f"{name}_conv{i}",
        )(x)
        if batch_norm:
            x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_patch_cnn(
    input_size_px: int = 50,
    channels: int = 3,
    filters: tuple[int, ...] = (32, 64),
    kernel_size: int = 3,
    dense_units: int = 128,
    dropout: float = 0.25,
    batch_norm: bool = False,
) -> keras.Model:
    """IDC-style patch classifier: conv blocks (2 convs, max-pool, dropout), then dense.

    Args:
        input_size_px: side of the square patch, pixels (IDC: 50).
        channels: 1 (greyscale) or 3 (RGB).
        filters: filters of each conv block (the IDC seed uses two blocks).
        kernel_size: convolution kernel side, pixels.
        dense_units: width of the hidden dense layer.
        dropout: dropout after each block and after the dense layer (0 disables it).
        batch_norm: batch normalisation after each convolution.
    """
    keras = _keras()
    layers = keras.layers
    _check_builder(input_size_px, channels, kernel_size, dropout)
    if not filters or input_size_px < 2 ** len(filters):
        raise ValueError(f"{len(filters)} pooling blocks do not fit a {input_size_px} px input")
    inputs = keras.Input((input_size_px, input_size_px, channels), name="patch")
    x = inputs
    for b, f in enumerate(filters):
        x = _conv_block(layers, x, f, f"block{b}", kernel_size, batch_norm)
        x = layers.MaxPooling2D(2, name=f"block{b}_pool")(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"block{b}_dropout")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(dense_units, activation="relu", name="dense")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dense_dropout")(x)
    x = layers.Dense(1, name="logit")(x)
    outputs = layers.Activation("sigmoid", dtype="float32", name="probability")(x)
    return keras.Model(inputs, outputs, name="patch_cnn")


def _check_builder(input_size_px: int, channels: int, kernel_size: int, dropout: float) -> None:
    if input_size_px < 8:
        raise ValueError(f"input_size_px must be >= 8, not {input_size_px}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, not {kernel_size}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), not {dropout}")


BUILDERS: dict[str, Any] = {"unet": build_unet, "patch": build_patch_cnn}


def build_model(kind: str, **kwargs: Any) -> keras.Model:
    """Build a model of ``kind`` (``"unet"`` or ``"patch"``) from builder keyword arguments."""
    try:
        builder = BUILDERS[kind]
    except KeyError:
        raise ModelError(f"unknown model kind {kind!r}; choose one of {sorted(BUILDERS)}") from None
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return builder(**kwargs)


# -- preprocessing -------------------------------------------------------------------------------
def scale_input(x: Any, norm: InputNorm, const: Any = None) -> Any:
    """THE input rule, for training and inference alike: greyscale (BT.601 luma, when the model
    takes one channel), then the card's scaling.

    ``x`` is a float32 ``(..., h, w, 3)`` (or ``(..., h, w, 1)``) array of 0..255 values of any
    array library whose arrays take Python operators and NumPy float32 constants (NumPy,
    TensorFlow, ``keras.ops`` tensors of every backend): this is the one place where the
    arithmetic is written, and each caller only casts. The order of operations is part of the
    rule (it fixes float32 rounding). ``const`` turns the per-channel mean and std (float32
    NumPy vectors) into the library's arrays where its operators do not take NumPy's.
    """
    if norm.channels == 1 and x.shape[-1] == 3:
        r, g, b = (np.float32(w) for w in GREY_WEIGHTS)
        x = (x[..., 0:1] * r + x[..., 1:2] * g) + x[..., 2:3] * b
    if norm.normalisation == "divide_255":
        return x / np.float32(255.0)
    if norm.normalisation == "minus1_1":
        return x / np.float32(127.5) - np.float32(1.0)
    mean_std = norm.mean_std()
    if mean_std is None:
        raise ModelError(f"unknown input normalisation {norm.normalisation!r}")
    mean, std = (np.asarray(v, np.float32) for v in mean_std)
    if const is not None:
        mean, std = const(mean), const(std)
    return (x / np.float32(255.0) - mean) / std


def _norm(card_or_norm: ModelCard | InputNorm) -> InputNorm:
    return card_or_norm if isinstance(card_or_norm, InputNorm) else card_or_norm.input_norm


def preprocess(tiles_uint8_nhwc_rgb: np.ndarray, card: ModelCard | InputNorm) -> np.ndarray:
    """Model input from RGB tiles, in NumPy (:func:`scale_input`).

    Args:
        tiles_uint8_nhwc_rgb: ``(n, h, w, 3)`` (or one ``(h, w, 3)`` tile) RGB values 0..255,
            uint8 (float values in 0..255 are accepted too, e.g. after colour jitter).
            Greyscale input ``(..., 1)`` is accepted for a 1-channel model.
        card: the model's card, or its :class:`~wsi_seg.stages.card.InputNorm`.

    Returns:
        float32 array of the same leading shape with the model's channels.
    """
    norm = _norm(card)
    x = np.asarray(tiles_uint8_nhwc_rgb)
    if x.ndim not in (3, 4) or x.shape[-1] not in (1, 3):
        raise ModelError(f"tiles must be (n, h, w, 3) RGB, not shape {x.shape}")
    if norm.channels == 3 and x.shape[-1] == 1:
        raise ModelError("model expects RGB tiles but got greyscale ones")
    out = scale_input(x.astype(np.float32, copy=False), norm)
    return np.asarray(out, dtype=np.float32)


def preprocess_tf(tiles: tf.Tensor, norm: InputNorm) -> tf.Tensor:
    """:func:`scale_input` on TensorFlow tensors, for ``tf.data`` pipelines.

    Args:
        tiles: ``(..., h, w, 3)`` RGB, any numeric dtype, values 0..255.
        norm: the model's input rule.
    """
    import tensorflow as tf

    return scale_input(tf.cast(tiles, tf.float32), norm, tf.constant)


def preprocess_ops(tiles: Any, norm: InputNorm) -> Any:
    """:func:`scale_input` on ``keras.ops`` tensors of the active backend, run inside a
    compiled forward pass so uint8 tiles go to the device and are normalised there.

    Args:
        tiles: ``(..., h, w, 3)`` RGB tensor of the active backend, any numeric dtype, 0..255.
        norm: the model's input rule.
    """
    from keras import ops

    return scale_input(ops.cast(tiles, "float32"), norm,
                       lambda v: ops.convert_to_tensor(v, "float32"))
