"""Cards that describe the model's output (format 2): classes, activations, normalisations and
undefined input sizes; format-1 cards keep meaning exactly what they meant; the compiled pass
keeps what the card says (tumour probability, class maps) on the active Keras backend.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from wsi_seg.core.errors import ModelError
from wsi_seg.stages.card import (
    CARD_FORMAT,
    CARD_FORMAT_2,
    QUPATH_COLORS,
    WEIGHTS_DIR,
    ModelCard,
    card_path,
    load_model,
    save_model,
)

FIVE = ("Background", "Tumor", "Stroma", "Immune cells", "Necrosis")


def _five(**kw: object) -> ModelCard:
    fields: dict[str, object] = dict(kind="unet", input_size_px=32, channels=3, mpp=1.0,
                                     output="softmax", classes=FIVE, tumour_classes=("Tumor",),
                                     background_classes=("Background",))
    fields.update(kw)
    return ModelCard(**fields)  # type: ignore[arg-type]


# -- format 1 stays format 1 -------------------------------------------------------------------
@pytest.mark.parametrize("name", ["unet_demo.json", "patch_demo.json"])
def test_bundled_format_1_cards_read_and_write_back_byte_for_byte(name: str) -> None:
    text = (WEIGHTS_DIR / name).read_text(encoding="utf-8")
    card = ModelCard.from_json(text)
    assert card.to_json() == text  # the mosaic metadata quotes it: same bytes, same mosaics
    assert json.loads(text)["format"] == CARD_FORMAT
    # and it means what format 1 meant: one sigmoid channel, the tumour probability
    assert (card.output, card.classes, card.n_outputs, card.n_maps) == ("sigmoid", (), 1, 1)
    assert not card.class_maps and card.tumour_indices == (0,)
    assert card.window_px == card.input_size_px


def test_a_card_using_new_fields_says_format_2_and_round_trips() -> None:
    card = _five(normalisation="mean_std", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2),
                 input_size_px=None, size_multiple_px=8, tile_px=128, precision="float32",
                 class_colors=((0, 0, 0), (200, 0, 0), (1, 2, 3), (4, 5, 6), (7, 8, 9)))
    data = json.loads(card.to_json())
    assert data["format"] == CARD_FORMAT_2
    assert data["classes"] == list(FIVE) and data["input_size_px"] is None
    back = ModelCard.from_json(card.to_json())
    assert back == card and isinstance(back.classes, tuple) and isinstance(back.mean, tuple)
    assert back.window_px == 128 and back.color_of(2) == (1, 2, 3)


def test_an_unknown_card_format_is_refused() -> None:
    text = ModelCard("unet", 32, 3, 1.0).to_json().replace(CARD_FORMAT, "wsi-seg-model-card/9")
    with pytest.raises(ValueError, match="upgrade wsi-seg"):
        ModelCard.from_json(text)


# -- what the output fields mean -----------------------------------------------------------------
def test_classes_maps_and_tumour_channels() -> None:
    five = _five()
    assert five.class_maps and five.n_maps == 6 and five.tumour_indices == (1,)
    assert five.mapped_classes == (1, 2, 3, 4)  # all but the background
    assert five.activation == "none" and five.exclusive
    two = _five(classes=("Background", "Tumor"))
    assert not two.class_maps and two.n_maps == 1  # the tumour probability says it all
    logits = _five(output="logits")
    assert logits.activation == "softmax" and logits.exclusive
    one_logit = ModelCard("unet", 32, 3, 1.0, output="logits")
    assert one_logit.activation == "sigmoid" and one_logit.n_maps == 1
    multi_label = _five(output="sigmoid", tumour_classes=("Tumor", "Necrosis"))
    assert multi_label.class_maps and not multi_label.exclusive


def test_colours_default_to_qupaths_then_a_palette() -> None:
    five = _five()
    assert five.color_of(1) == QUPATH_COLORS["tumor"]
    assert five.color_of(2) == QUPATH_COLORS["stroma"]
    other = _five(classes=("Background", "Tumor", "Fat"), background_classes=())
    assert other.color_of(2) not in QUPATH_COLORS.values()


@pytest.mark.parametrize(("change", "says"), [
    ({"classes": ("Tumor",), "tumour_classes": ("Tumor",)}, "one class needs no name list"),
    ({"tumour_classes": ()}, "tumour_classes must name"),
    ({"tumour_classes": ("Cancer",)}, "not among the classes"),
    ({"background_classes": ("Tumor",)}, "both tumour and background"),
    ({"classes": ("A", "a", "Tumor"), "background_classes": ()}, "distinct"),
    ({"output": "relu"}, "output must be one of"),
    ({"output": "softmax", "classes": (), "tumour_classes": (), "background_classes": ()},
     "softmax output needs at least 2"),
    ({"class_colors": ((1, 2, 3),)}, "one \\[r, g, b\\]"),
    ({"input_size_px": None, "size_multiple_px": 8, "tile_px": 100}, "multiple of 8"),
    ({"input_size_px": 30, "size_multiple_px": 8}, "not a multiple of size_multiple_px"),
    ({"precision": "float16"}, "precision must be"),
    ({"normalisation": "imagenet", "channels": 1}, "needs 3 channels"),
])
def test_inconsistent_output_fields_are_refused_in_one_line(change: dict[str, object],
                                                            says: str) -> None:
    with pytest.raises(ValueError, match=says) as exc:
        _five(**change)
    assert "\n" not in str(exc.value)


def test_the_window_of_an_undefined_input() -> None:
    fcn = ModelCard("unet", None, 3, 1.0, size_multiple_px=16)
    assert fcn.window_px == 256
    odd = ModelCard("unet", None, 3, 1.0, size_multiple_px=48)
    assert odd.window_px == 288  # 256 rounded up to the multiple
    assert fcn.at_tile(512).window_px == 512 and fcn.at_tile(None) is fcn
    with pytest.raises(ValueError, match=r"multiple of 16 .*use e\.g\. --tile 496"):
        fcn.at_tile(500)
    fixed = ModelCard("unet", 64, 3, 1.0)
    assert fixed.at_tile(64) is fixed
    with pytest.raises(ValueError, match="takes 64 px tiles only"):
        fixed.at_tile(128)


# -- the compiled pass keeps what the card says (runs on the active backend) ---------------------
def _linear_unet(path: Path, card: ModelCard, kernel: np.ndarray, activation: str) -> Path:
    """A per-pixel model: a 1x1 conv of the normalised RGB with a chosen kernel."""
    import keras

    size = card.input_size_px
    inp = keras.Input((size, size, 3))
    out = keras.layers.Conv2D(kernel.shape[-1], 1, use_bias=False, activation=activation,
                              kernel_initializer=keras.initializers.Constant(kernel),
                              dtype="float32")(inp)
    save_model(keras.Model(inp, out), card, path)
    return path


def _probe() -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)


def test_the_pass_applies_softmax_to_logits_and_sums_tumour_classes(tmp_path: Path) -> None:
    from wsi_seg.stages.backends import make_engine

    kernel = np.random.default_rng(0).normal(size=(1, 1, 3, 5)).astype(np.float32) * 3
    card = _five(output="logits", tumour_classes=("Tumor", "Necrosis"))
    model, served = load_model(_linear_unet(tmp_path / "l.keras", card, kernel, "linear"))
    engine = make_engine(model, served, batch_size=2, device="cpu")
    out = np.asarray(engine.fetch(engine.launch(_probe())))
    assert out.shape == (2, 32, 32, 6)
    logits = (_probe().astype(np.float32) / 255) @ kernel[0, 0]
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(out[..., 1:], probs, atol=1e-5)
    np.testing.assert_allclose(out[..., 0], probs[..., 1] + probs[..., 4], atol=1e-5)


def test_a_two_class_softmax_keeps_the_tumour_channel_only(tmp_path: Path) -> None:
    from wsi_seg.stages.backends import make_engine

    kernel = np.array([[[[2.0, -1.0], [0.0, 1.0], [-1.0, 2.0]]]], np.float32)
    card = _five(classes=("Background", "Tumor"))
    model, served = load_model(_linear_unet(tmp_path / "s.keras", card, kernel, "softmax"))
    engine = make_engine(model, served, batch_size=2, device="cpu")
    out = np.asarray(engine.fetch(engine.launch(_probe())))
    logits = (_probe().astype(np.float32) / 255) @ kernel[0, 0]
    want = np.exp(logits[..., 1]) / np.exp(logits).sum(-1)
    assert out.shape == (2, 32, 32)
    np.testing.assert_allclose(out, want, atol=1e-5)


def test_a_sigmoid_multi_label_model_takes_the_largest_tumour_class(tmp_path: Path) -> None:
    from wsi_seg.stages.backends import make_engine

    kernel = np.random.default_rng(1).normal(size=(1, 1, 3, 3)).astype(np.float32)
    card = _five(output="sigmoid", classes=("Tumor", "DCIS", "Stroma"),
                 tumour_classes=("Tumor", "DCIS"), background_classes=())
    model, served = load_model(_linear_unet(tmp_path / "m.keras", card, kernel, "sigmoid"))
    engine = make_engine(model, served, batch_size=2, device="cpu")
    out = np.asarray(engine.fetch(engine.launch(_probe())))
    probs = 1 / (1 + np.exp(-((_probe().astype(np.float32) / 255) @ kernel[0, 0])))
    assert out.shape == (2, 32, 32, 4)
    np.testing.assert_allclose(out[..., 0], np.maximum(probs[..., 0], probs[..., 1]),
                               atol=1e-5)


def test_a_card_whose_classes_do_not_match_the_output_is_refused(tmp_path: Path) -> None:
    kernel = np.zeros((1, 1, 3, 5), np.float32)
    path = _linear_unet(tmp_path / "c.keras", _five(), kernel, "softmax")
    card = json.loads(card_path(path).read_text())
    card["classes"], card["tumour_classes"] = ["Background", "Tumor", "Stroma"], ["Tumor"]
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(ModelError, match=r"output \(n, 32, 32, 5\) does not fit") as exc:
        load_model(path)
    assert "\n" not in str(exc.value)
