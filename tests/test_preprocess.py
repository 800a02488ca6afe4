"""The one input rule (:func:`wsi_seg.stages.models.scale_input`) gives the same float32 values
in every library that runs it: NumPy (evaluation), TensorFlow's ``tf.data`` (training) and
``keras.ops`` inside the compiled forward pass (inference, on the active Keras backend:
``scripts/test.sh`` runs this file on TensorFlow and again on JAX), for every normalisation
and channel count, and the values are the documented ones.
"""

from __future__ import annotations

import numpy as np
import pytest

from wsi_seg.stages.card import IMAGENET_MEAN, IMAGENET_STD, NORMALISATIONS, InputNorm
from wsi_seg.stages.models import preprocess, preprocess_ops, preprocess_tf

RULES = [
    InputNorm(c, n, *(((0.5,) * c, (0.25,) * c) if n == "mean_std" else (None, None)))
    for n in NORMALISATIONS for c in (1, 3) if not (n == "imagenet" and c == 1)
]


def _ids(rule: InputNorm) -> str:
    return f"{rule.normalisation}-{rule.channels}"


def _tiles() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 17, 19, 3), dtype=np.uint8)


def test_every_normalisation_is_covered() -> None:
    assert {r.normalisation for r in RULES} == set(NORMALISATIONS)


@pytest.mark.parametrize("rule", RULES, ids=_ids)
def test_numpy_tf_and_keras_ops_agree_bit_for_bit(rule: InputNorm) -> None:
    import keras

    tiles = _tiles()
    a = preprocess(tiles, rule)
    b = np.asarray(preprocess_tf(tiles, rule))
    c = keras.ops.convert_to_numpy(preprocess_ops(keras.ops.convert_to_tensor(tiles), rule))
    assert a.dtype == np.float32 and a.shape == (3, 17, 19, rule.channels)
    np.testing.assert_array_equal(a, b)  # bit-identical, not merely close
    if keras.backend.backend() == "tensorflow":
        np.testing.assert_array_equal(a, c)
    else:
        # XLA rewrites a division by a constant as a multiplication by its reciprocal, which
        # rounds differently: a few float32 roundings, amplified by 1 / std for mean_std
        # (seen: 6e-8 on 0..1, 7e-7 on ImageNet-scaled values near 2.4).
        np.testing.assert_allclose(a, c, rtol=1e-6, atol=1e-6)
    # float input (colour-jittered tiles in training) takes the same path
    jittered = tiles.astype(np.float32) * 0.9
    np.testing.assert_array_equal(preprocess(jittered, rule),
                                  np.asarray(preprocess_tf(jittered, rule)))


def test_the_compiled_pass_normalises_as_training_does() -> None:
    """Inside a compiled function of the active backend (``tf.function`` or ``jax.jit``), the
    rule gives what ``tf.data`` gave the model in training."""
    import keras

    rule = InputNorm(3, "imagenet")
    tiles = _tiles()
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        out = np.asarray(jax.jit(lambda x: preprocess_ops(x, rule))(tiles))
    elif backend == "tensorflow":
        import tensorflow as tf

        out = tf.function(lambda x: preprocess_ops(x, rule))(tf.constant(tiles)).numpy()
    else:
        pytest.skip(f"no compiled function for backend {backend}")
    np.testing.assert_allclose(out, np.asarray(preprocess_tf(tiles, rule)), rtol=0, atol=1e-6)


def test_documented_values() -> None:
    white = np.full((1, 2, 2, 3), 255, np.uint8)
    black = np.zeros((1, 2, 2, 3), np.uint8)
    np.testing.assert_allclose(preprocess(white, InputNorm(1, "divide_255")), 1.0, rtol=1e-6)
    np.testing.assert_allclose(preprocess(black, InputNorm(3, "minus1_1")), -1.0)
    net = preprocess(white, InputNorm(3, "imagenet"))[0, 0, 0]
    np.testing.assert_allclose(net, (1 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD),
                               rtol=1e-6)
    grey = preprocess(black, InputNorm(1, "mean_std", (0.5,), (0.25,)))
    np.testing.assert_allclose(grey, -2.0)


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"normalisation": "imagenet", "channels": 1}, "needs 3 channels"),
    ({"normalisation": "mean_std"}, "needs mean"),
    ({"normalisation": "mean_std", "mean": (0.5,) * 3, "std": (0.0,) * 3}, "positive"),
    ({"normalisation": "mean_std", "mean": (0.5,), "std": (0.2,)}, "3 finite"),
    ({"normalisation": "divide_255", "mean": (0.5,) * 3}, "belong to"),
    ({"normalisation": "zscore"}, "must be one of"),
])
def test_bad_rules_are_refused_in_one_line(kwargs: dict[str, object], says: str) -> None:
    with pytest.raises(ValueError, match=says) as exc:
        InputNorm(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(exc.value)
