"""Keras 2 model files written by the real Keras 2 (the ``tf-keras`` package), for the tests.

They are written once per test session, in a subprocess (so the test process stays a clean
Keras 3 one), into ``<pytest basetemp>/keras2/``, with tf-keras' own predictions beside them as
``.npy``. tf-keras is in the dev extra: without it the writer fails, and the tests with it (a
skip would hide that the Keras 2 path went untested).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Writes every Keras 2 file the tests read, with tf-keras, into argv[1].
KERAS2_WRITER = r'''
import sys
from pathlib import Path

import numpy as np
import tf_keras as keras

L = keras.layers
out = Path(sys.argv[1])
keras.utils.set_random_seed(0)


def unet(classes=1, activation="sigmoid", side=64, padding="same"):
    # BatchNormalization, SeparableConv2D, SpatialDropout2D and Conv2DTranspose each need a
    # repair before Keras 3 rebuilds them from a Keras 2 config.
    inp = keras.Input((side, side, 3))
    c1 = L.Conv2D(4, 3, padding=padding, activation="relu")(inp)
    c1 = L.BatchNormalization()(c1)
    c1 = L.Conv2D(4, 3, padding=padding, activation="relu")(c1)
    p = L.MaxPooling2D()(c1)
    c2 = L.SeparableConv2D(8, 3, padding="same", activation="relu")(p)
    c2 = L.SpatialDropout2D(0.1)(c2)
    u = L.Conv2DTranspose(4, 2, strides=2)(c2)
    x = L.Concatenate()([u, c1])
    x = L.Conv2D(4, 3, padding="same", activation="relu")(x)
    return keras.Model(inp, L.Conv2D(classes, 1, activation=activation)(x))


class MyScale(L.Layer):
    def call(self, x):
        return x * 2.0


m = unet()
m.save(out / "unet.h5")
(out / "unet.json").write_text(m.to_json())
m.save_weights(out / "unet_w.h5")
m.save_weights(out / "unet_w.weights.h5")  # tf-keras writes the Keras 3 layout here
x = np.random.default_rng(0).random((2, 64, 64, 3)).astype("float32")
np.save(out / "x.npy", x)
np.save(out / "y.npy", m.predict(x, verbose=0))

# A pretrained-encoder style model: a Functional encoder and a Sequential head used as layers.
e_in = keras.Input((64, 64, 3))
encoder = keras.Model(e_in, L.MaxPooling2D()(L.Conv2D(8, 3, padding="same")(e_in)), name="enc")
head = keras.Sequential([keras.Input((64, 64, 8)), L.Conv2D(1, 1, activation="sigmoid")],
                        name="head")
inp = keras.Input((64, 64, 3))
nested = keras.Model(inp, head(L.UpSampling2D()(encoder(inp))))
nested.save(out / "nested.h5")
np.save(out / "y_nested.npy", nested.predict(x, verbose=0))

softmax = unet(classes=2, activation="softmax")
softmax.save(out / "softmax_unet.h5")
softmax.save_weights(out / "softmax_w.h5")
unet(activation="linear").save(out / "logits_unet.h5")

inp = keras.Input((50, 50, 3))
x = L.Conv2D(8, 3, activation="relu")(inp)
x = L.MaxPooling2D()(x)
x = L.BatchNormalization()(x)
x = L.GlobalAveragePooling2D()(x)
keras.Model(inp, L.Dense(2, activation="softmax")(x)).save(out / "patch.h5")

inp = keras.Input((16, 16, 3))
keras.Model(inp, L.Lambda(lambda t: t * 2.0)(inp)).save(out / "lambda.h5")
keras.Model(inp, MyScale()(inp)).save(out / "custom.h5")
unet(padding="valid").save(out / "valid_unet.h5")  # output 60x60 from a 64x64 input

a, b = keras.Input((32, 32, 3)), keras.Input((32, 32, 3))
keras.Model([a, b], L.Conv2D(1, 1, activation="sigmoid")(L.Add()([a, b]))).save(
    out / "two_inputs.h5")
inp = keras.Input((64, 32, 3))
keras.Model(inp, L.Conv2D(1, 1, activation="sigmoid")(inp)).save(out / "non_square.h5")
'''


def keras2_files(factory: pytest.TempPathFactory) -> Path:
    """The folder of Keras 2 files (see :data:`KERAS2_WRITER`), written on first use."""
    out = factory.getbasetemp() / "keras2"
    if not (out / "done").exists():
        out.mkdir(exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        done = subprocess.run([sys.executable, "-c", KERAS2_WRITER, str(out)], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        (out / "done").touch()
    return out
