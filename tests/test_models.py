"""Model builders, preprocessing, model cards and safe loading."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from wsi_seg.core.errors import ModelError
from wsi_seg.stages.card import (
    ModelCard,
    bundled_model_path,
    card_path,
    declared_input_shape,
    load_model,
    save_model,
    unsafe_parts,
    verify_model_file,
)
from wsi_seg.stages.models import build_patch_cnn, build_unet, preprocess


def _unet_card(size: int = 32, channels: int = 3) -> ModelCard:
    return ModelCard(kind="unet", input_size_px=size, channels=channels, mpp=1.0)


def _tiny_unet(size: int = 32, channels: int = 3) -> keras.Model:
    return build_unet(size, channels, depth=2, base_filters=4)


def _one_line(exc: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(exc.value)
    assert "\n" not in text
    return text


# -- builders ---------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_output_shape_and_range(channels: int) -> None:
    model = build_unet(64, channels, depth=3, base_filters=4, dropout=0.1)
    x = np.random.default_rng(0).random((2, 64, 64, channels), np.float32)
    y = np.asarray(model(x, training=False))
    assert y.shape == (2, 64, 64, 1)
    assert y.min() >= 0 and y.max() <= 1


def test_unet_input_downsample_keeps_full_size_output() -> None:
    model = build_unet(64, 3, depth=3, base_filters=4, input_downsample=2)
    assert model.outputs[0].shape == (None, 64, 64, 1)
    with pytest.raises(ValueError, match="divisible"):
        build_unet(60, 3, depth=4, base_filters=4, input_downsample=2)


def test_patch_cnn_output_shape() -> None:
    model = build_patch_cnn(50, 3, filters=(8, 16), dense_units=16)
    y = np.asarray(model(np.zeros((5, 50, 50, 3), np.float32), training=False))
    assert y.shape == (5, 1)


def test_outputs_stay_float32_under_mixed_precision() -> None:
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        unet = build_unet(32, 3, depth=2, base_filters=4)
        patch = build_patch_cnn(50, 3, filters=(4, 8), dense_units=8)
        assert unet.layers[-2].compute_dtype == "float16"  # the body really is float16
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert unet.outputs[0].dtype == "float32"
    assert patch.outputs[0].dtype == "float32"


# -- preprocessing (the one rule across libraries: tests/test_preprocess.py) ---------------------
def test_preprocess_values() -> None:
    white = np.full((1, 2, 2, 3), 255, np.uint8)
    grey_card = ModelCard(kind="patch", input_size_px=50, channels=1, mpp=4.0)
    np.testing.assert_allclose(preprocess(white, grey_card), 1.0, rtol=1e-6)
    rgb_card = ModelCard(kind="patch", input_size_px=50, channels=3, mpp=4.0,
                         normalisation="minus1_1")
    np.testing.assert_allclose(preprocess(np.zeros((1, 2, 2, 3), np.uint8), rgb_card), -1.0)


def test_preprocess_rejects_bad_shapes() -> None:
    with pytest.raises(ModelError):
        preprocess(np.zeros((2, 4, 4, 2), np.uint8), _unet_card())
    with pytest.raises(ModelError):
        preprocess(np.zeros((2, 4, 4, 1), np.uint8), _unet_card(channels=3))


# -- cards ----------------------------------------------------------------------------------------
def test_card_json_round_trip() -> None:
    card = ModelCard(
        kind="patch", input_size_px=50, channels=3, mpp=4.0, threshold=0.4,
        trained_on="x", validation={"dice": 0.5}, versions={"keras": "3"}, sha256="ab",
        architecture={"filters": [8, 16]}, extra={"future_field": 1},
    )
    again = ModelCard.from_json(card.to_json())
    assert again == card
    assert json.loads(card.to_json())["format"] == "wsi-seg-model-card/1"


@pytest.mark.parametrize(
    "change", [{"kind": "vit"}, {"channels": 2}, {"mpp": 0.0}, {"threshold": 1.5},
               {"normalisation": "zscore"}, {"input_size_px": 4}],
)
def test_card_rejects_bad_fields(change: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(_unet_card(), **change)


# -- save / load ----------------------------------------------------------------------------------
def test_save_and_reload_predict_the_same(tmp_path: Path) -> None:
    model = _tiny_unet()
    path = tmp_path / "m.keras"
    card = save_model(model, _unet_card(), path)
    assert path.is_file() and card_path(path).is_file()
    assert len(card.sha256) == 64 and card.versions["keras"] == keras.__version__
    assert not list(tmp_path.glob(".*tmp*"))  # temporary files renamed away
    loaded, card2 = load_model(path)
    assert card2 == card
    x = np.random.default_rng(2).random((3, 32, 32, 3), np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded(x, training=False)), np.asarray(model(x, training=False)), atol=1e-6
    )


def _lambda_model() -> keras.Model:
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inp)
    x = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, x)


def test_lambda_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "lam.keras"
    save_model(_lambda_model(), _unet_card(), path)
    with pytest.raises(ModelError, match="Lambda") as exc:
        load_model(path)
    assert str(path) in _one_line(exc)


@keras.saving.register_keras_serializable(package="evil")
class _Custom(keras.layers.Layer):
    def call(self, x: object) -> object:
        return x


def test_custom_layer_is_refused(tmp_path: Path) -> None:
    inp = keras.Input((32, 32, 3))
    x = _Custom()(inp)
    x = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    path = tmp_path / "custom.keras"
    save_model(keras.Model(inp, x), _unet_card(), path)
    with pytest.raises(ModelError, match="custom class") as exc:
        load_model(path)
    _one_line(exc)


def test_lambda_refused_even_when_config_scan_misses_it(tmp_path: Path) -> None:
    """Keras' safe mode is the second gate: unsafe_parts is not the only defence."""
    path = tmp_path / "lam.keras"
    save_model(_lambda_model(), _unet_card(), path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert "a Lambda layer" in unsafe_parts(config)
    with pytest.raises(ValueError, match="Lambda"):
        keras.saving.load_model(path, safe_mode=True, compile=False)


def test_not_a_keras_file(tmp_path: Path) -> None:
    path = tmp_path / "fake.keras"
    path.write_bytes(b"not a zip at all")
    card_path(path).write_text(_unet_card().to_json())
    with pytest.raises(ModelError, match="not a Keras") as exc:
        load_model(path)
    _one_line(exc)


def test_missing_card(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(), _unet_card(), path)
    card_path(path).unlink()
    with pytest.raises(ModelError, match="card") as exc:
        load_model(path)
    _one_line(exc)


def test_malformed_card(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(), _unet_card(), path)
    card_path(path).write_text("{ nope")
    with pytest.raises(ModelError, match="bad model card") as exc:
        load_model(path)
    _one_line(exc)


def test_card_of_another_file_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.keras", tmp_path / "b.keras"
    save_model(_tiny_unet(), _unet_card(), a)
    save_model(_tiny_unet(), _unet_card(), b)
    card_path(a).write_text(card_path(b).read_text())
    with pytest.raises(ModelError, match="sha256") as exc:
        load_model(a)
    _one_line(exc)


def test_card_that_does_not_match_the_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(), _unet_card(), path)
    card = ModelCard.from_json(card_path(path).read_text())
    for change in ({"channels": 1}, {"input_size_px": 64}, {"kind": "patch"}):
        card_path(path).write_text(dataclasses.replace(card, **change).to_json())
        with pytest.raises(ModelError, match="does not") as exc:
            load_model(path)
        _one_line(exc)


def test_save_refuses_a_mismatched_card(tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        save_model(_tiny_unet(), _unet_card(size=64), tmp_path / "m.keras")
    with pytest.raises(ModelError):
        save_model(_tiny_unet(), _unet_card(), tmp_path / "m.h5")


def _rezip(src: Path, dst: Path, compression: int) -> Path:
    """``src``'s members rewritten with ``compression``, carded to match the new bytes."""
    from wsi_seg.stages.card import sha256_file

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", compression) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name))
    card = json.loads(card_path(src).read_text())
    card["sha256"] = sha256_file(dst)
    card_path(dst).write_text(json.dumps(card))
    return dst


def test_archive_members_are_checked_before_reading(tmp_path: Path) -> None:
    """Deflated members (a re-zipped model) load; other methods are refused: zipfile inflates
    a bzip2/lzma read whole before cutting it to the declared size."""
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(), _unet_card(), path)
    deflated = _rezip(path, tmp_path / "deflated.keras", zipfile.ZIP_DEFLATED)
    assert verify_model_file(deflated).input_size_px == 32
    load_model(deflated)
    bz = _rezip(path, tmp_path / "bz.keras", zipfile.ZIP_BZIP2)
    with pytest.raises(ModelError, match="compression method 12") as exc:
        verify_model_file(bz)
    _one_line(exc)


def test_oversized_card_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(), _unet_card(), path)
    with open(card_path(path), "r+b") as fh:
        fh.truncate(20 << 20)  # sparse: no disk used
    with pytest.raises(ModelError, match="model card is 20 MiB, more than the 16 MiB") as exc:
        verify_model_file(path)
    _one_line(exc)


def test_declared_input_shape(tmp_path: Path) -> None:
    path = tmp_path / "m.keras"
    save_model(_tiny_unet(48, 1), _unet_card(48, 1), path)
    config = json.loads(zipfile.ZipFile(path).read("config.json"))
    assert declared_input_shape(config) == (None, 48, 48, 1)
    assert declared_input_shape({"config": {"layers": []}}) is None
    assert declared_input_shape({"config": "nonsense"}) is None


# -- bundled demo models -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["unet", "patch"])
def test_bundled_models_load_and_predict(kind: str) -> None:
    path = bundled_model_path(kind)
    assert path.stat().st_size < 10_000_000
    model, card = load_model(path)
    assert card.kind == kind
    assert card.trained_on and "synth" in card.trained_on
    assert card.validation, "the card must carry held-out scores"
    tiles = np.full((2, card.input_size_px, card.input_size_px, 3), 230, np.uint8)
    y = np.asarray(model(preprocess(tiles, card), training=False))
    assert y.dtype == np.float32
    assert y.shape == ((2, card.input_size_px, card.input_size_px, 1) if kind == "unet"
                       else (2, 1))


def test_bundled_model_unknown_kind() -> None:
    with pytest.raises(ModelError):
        bundled_model_path("vit")


def test_seed_architectures_build() -> None:
    """The seeds' UNet: 4 levels of 32..256 filters on 224 x 224 greyscale."""
    model = build_unet(224, 1, depth=4, base_filters=32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)
             and not isinstance(layer, keras.layers.Conv2DTranspose)]
    assert {c.filters for c in convs} == {32, 64, 128, 256, 1}
    assert model.outputs[0].shape == (None, 224, 224, 1)
