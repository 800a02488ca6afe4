"""Reading the models users bring (Keras 3 archives, real Keras 2 files) and describing them.

The Keras 2 files are written by the real Keras 2 (the ``tf-keras`` package) in a subprocess,
once per module, so this process stays a clean Keras 3 one; tf-keras' own predictions come back
as ``.npy`` to compare against what Keras 3 computes from the files it read.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import keras
import numpy as np
import pytest

from tests.keras2_fixtures import keras2_files
from tests.model_fixtures import tiny_keras_hub_segmenter
from wsi_seg.core.errors import ModelError
from wsi_seg.stages.model_files import (
    ModelShape,
    allowed_class,
    inspect_model,
    read_model,
    unsafe_parts,
)


@pytest.fixture(scope="module")
def k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of Keras 2 files written by tf-keras (:mod:`tests.keras2_fixtures`)."""
    return keras2_files(tmp_path_factory)


def _refusal(src: Path, weights: Path | None = None) -> str:
    """The one-line message ``read_model`` refuses ``src`` with; it names the file."""
    with pytest.raises(ModelError) as exc:
        read_model(src, weights)
    text = str(exc.value)
    assert "\n" not in text
    assert (weights or src).name in text
    return text


def _shape_refusal(model: keras.Model, path: Path) -> str:
    with pytest.raises(ModelError) as exc:
        inspect_model(model, path)
    text = str(exc.value)
    assert "\n" not in text and path.name in text
    return text


# -- Keras 2 files that load ------------------------------------------------------------------
UNET_SHAPE = ModelShape(input_size_px=64, channels=3, out_channels=1, spatial=True,
                        activation="sigmoid", size_multiple_px=1)


def test_keras2_full_model_h5_loads_and_predicts_as_keras2(k2: Path) -> None:
    model = read_model(k2 / "unet.h5")
    assert inspect_model(model, k2 / "unet.h5") == UNET_SHAPE
    x, want = np.load(k2 / "x.npy"), np.load(k2 / "y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("weights", ["unet_w.h5", "unet_w.weights.h5"])
def test_keras2_json_plus_weights_loads_and_predicts_as_keras2(k2: Path, weights: str) -> None:
    model = read_model(k2 / "unet.json", k2 / weights)
    assert inspect_model(model, k2 / "unet.json") == UNET_SHAPE
    x, want = np.load(k2 / "x.npy"), np.load(k2 / "y.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5, rtol=0)


def test_keras2_model_calling_nested_models_loads_and_predicts_as_keras2(k2: Path) -> None:
    model = read_model(k2 / "nested.h5")
    assert inspect_model(model, k2 / "nested.h5") == UNET_SHAPE  # sigmoid inside the head
    x, want = np.load(k2 / "x.npy"), np.load(k2 / "y_nested.npy")
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("name", "want"), [
    ("softmax_unet.h5", ModelShape(64, 3, 2, True, "softmax", 1)),
    ("patch.h5", ModelShape(50, 3, 2, False, "softmax", 1)),
    ("logits_unet.h5", ModelShape(64, 3, 1, True, "linear", 1)),
])
def test_keras2_heads_are_told_apart(k2: Path, name: str, want: ModelShape) -> None:
    assert inspect_model(read_model(k2 / name), k2 / name) == want


# -- Keras 3 ------------------------------------------------------------------------------------
def _fcn_unet(poolings: int) -> keras.Model:
    """A fully convolutional UNet on a ``None x None`` input, with skip concatenations."""
    inp = keras.Input((None, None, 3))
    x, skips = inp, []
    for _ in range(poolings):
        x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = keras.layers.MaxPooling2D()(x)
    for skip in reversed(skips):
        x = keras.layers.UpSampling2D()(x)
        x = keras.layers.Concatenate()([x, skip])
    return keras.Model(inp, keras.layers.Conv2D(1, 1, activation="sigmoid")(x))


def test_undefined_input_gets_its_size_multiple(tmp_path: Path) -> None:
    path = tmp_path / "fcn.keras"
    _fcn_unet(poolings=2).save(path)
    shape = inspect_model(read_model(path), path)
    assert shape == ModelShape(None, 3, 1, True, "sigmoid", size_multiple_px=4)


def test_undefined_input_whose_mask_shrinks_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((None, None, 1))
    model = keras.Model(inp, keras.layers.Conv2D(1, 3, activation="sigmoid")(inp))  # valid: -2
    text = _shape_refusal(model, tmp_path / "shrinks.keras")
    assert "not the input size" in text and "same-size mask" in text


def test_standard_keras3_config_is_clean(tmp_path: Path) -> None:
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation=keras.activations.gelu,
                            kernel_regularizer=keras.regularizers.L2(1e-4),
                            bias_initializer=keras.initializers.Constant(np.ones(4)))(inp)
    x = keras.layers.BatchNormalization()(x)
    model = keras.Model(inp, keras.layers.Softmax()(keras.layers.Conv2D(2, 1)(x)))
    config = {"module": "keras.src.models.functional", "class_name": "Functional",
              "config": model.get_config(), "registered_name": "Functional"}
    assert unsafe_parts(config) == []
    assert allowed_class("DTypePolicy", "keras", None)
    assert allowed_class("GlorotUniform", None, None)  # Keras 2 entries carry no module
    assert not allowed_class("Lambda", "keras.layers", None)
    assert not allowed_class("Conv2D", "evil.layers", None)
    gelu = {"module": "keras.activations", "class_name": "function", "config": "gelu",
            "registered_name": "gelu"}
    custom_fn = {**gelu, "module": "mylib", "config": "swish2", "registered_name": "swish2"}
    assert unsafe_parts({"activation": gelu}) == []
    assert unsafe_parts({"activation": custom_fn}) == ["custom function 'swish2' from module "
                                                       "'mylib'"]


@keras.saving.register_keras_serializable(package="Custom")
class Doubler(keras.layers.Layer):
    """A harmless custom layer: the allow-list must refuse it all the same."""

    def call(self, x: keras.KerasTensor) -> keras.KerasTensor:
        return x * 2.0


@keras.saving.register_keras_serializable(package="keras_hub")
class FakeHubLayer(Doubler):
    """Registered under keras-hub's package name by code that is not keras-hub."""


@pytest.mark.parametrize("layer", [Doubler, FakeHubLayer])
def test_registered_custom_class_in_a_keras_archive_is_refused(tmp_path: Path,
                                                               layer: type) -> None:
    if layer is FakeHubLayer:  # a spoof of keras-hub's registrations needs keras-hub present
        import keras_hub  # noqa: F401  (the dev extra installs it: missing fails, never skips)
    path = tmp_path / "custom.keras"
    inp = keras.Input((16, 16, 3))
    keras.Model(inp, keras.layers.Conv2D(1, 1)(layer()(inp))).save(path)
    text = _refusal(path)
    assert f"custom class '{keras.saving.get_registered_name(layer)}'" in text
    assert "rebuild it from standard Keras layers (or keras-hub)" in text


# -- refusals -----------------------------------------------------------------------------------
def test_lambda_layer_in_keras2_h5_is_refused(k2: Path) -> None:
    text = _refusal(k2 / "lambda.h5")
    assert "a Lambda layer" in text and "rebuild it from standard Keras layers" in text


def test_custom_layer_class_in_keras2_h5_is_refused(k2: Path) -> None:
    text = _refusal(k2 / "custom.h5")
    assert "custom class 'MyScale'" in text and "rebuild it from standard Keras layers" in text


def test_weights_only_h5_given_as_model_is_refused(k2: Path) -> None:
    text = _refusal(k2 / "unet_w.h5")
    assert "weights-only" in text and "--weights" in text


def test_json_without_weights_is_refused(k2: Path) -> None:
    assert "architecture JSON needs --weights W.h5" in _refusal(k2 / "unet.json")


def test_weights_of_another_model_are_refused(k2: Path) -> None:
    text = _refusal(k2 / "unet.json", k2 / "softmax_w.h5")
    assert "do not fit the architecture in unet.json" in text
    assert "weights saved from that same model" in text


def test_weights_declaring_far_more_values_are_refused_unread(k2: Path, tmp_path: Path) -> None:
    bomb = tmp_path / "bomb_w.h5"
    bomb.write_bytes((k2 / "unet_w.h5").read_bytes())
    with h5py.File(bomb, "a") as f:  # 4 GB declared, nothing written: a few kB on disk
        f["conv2d"].create_dataset("huge", shape=(10**9,), dtype="float32", chunks=(2**20,),
                                   compression="gzip")
    assert bomb.stat().st_size < 1_000_000
    assert "far more than" in _refusal(k2 / "unet.json", bomb)


def test_spatial_output_of_another_size_is_refused(k2: Path) -> None:
    path = k2 / "valid_unet.h5"
    text = _shape_refusal(read_model(path), path)
    assert "spatial output 60x60 is not the input size 64x64" in text
    assert "wsi-seg needs a same-size mask" in text


def test_two_inputs_are_refused(k2: Path) -> None:
    path = k2 / "two_inputs.h5"
    assert "2 inputs" in _shape_refusal(read_model(path), path)


def test_non_square_input_is_refused(k2: Path) -> None:
    path = k2 / "non_square.h5"
    text = _shape_refusal(read_model(path), path)
    assert "64x32 is not square" in text and "square input" in text


def test_truncated_h5_is_refused(k2: Path, tmp_path: Path) -> None:
    raw = (k2 / "unet.h5").read_bytes()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(raw[: len(raw) // 2])
    text = _refusal(cut)
    assert "truncated or damaged" in text and "model.save('m.h5')" in text


def test_text_file_named_h5_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "notes.h5"
    fake.write_text("not a model\n")
    text = _refusal(fake)
    assert "not an HDF5 file" in text and "model.save('m.h5')" in text


def test_unknown_suffix_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "model.pb"
    other.write_bytes(b"\x00")
    assert "expected a Keras 3 .keras archive" in _refusal(other)


# -- keras-hub ----------------------------------------------------------------------------------
def test_keras_hub_segmenter_loads_in_safe_mode(tmp_path: Path) -> None:
    path = tiny_keras_hub_segmenter(tmp_path / "deeplab.keras")

    model = read_model(path)
    assert type(model).__name__ == "DeepLabV3ImageSegmenter"
    # DeepLabV3 ends in a 1x1 conv without activation: per-pixel logits of each class.
    assert inspect_model(model, path) == ModelShape(64, 3, 2, True, "linear", 1)
    assert allowed_class("DeepLabV3ImageSegmenter",
                         "keras_hub.src.models.deeplab_v3.deeplab_v3_segmenter",
                         "keras_hub>DeepLabV3ImageSegmenter")
    assert not allowed_class("Nothing", "keras_hub.src.models", "keras_hub>Nothing")
