"""``wsi-seg model import`` then ``wsi-seg run``, as a user does it, for the models users bring:
Keras 2 files written by the real Keras 2 (tf-keras), 2- and 5-class softmax heads, logits,
an ImageNet-normalised pretrained-style encoder, a fully convolutional ``None x None`` UNet at
two tile sizes, a 2-class softmax patch classifier and a keras-hub segmenter. Every run's
outputs pass the checks the bundled models' pass (OME-Zarr validator, QuPath's GeoJSON rules),
and every refusal of the import is one line naming the file and saying what to change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from tests.keras2_fixtures import keras2_files
from tests.model_fixtures import tiny_keras_hub_segmenter
from tests.synth_fixtures import synthetic
from wsi_seg.cli import main
from wsi_seg.stages.card import read_card

FIVE = "Background,Tumor,Stroma,Immune cells,Necrosis"


@pytest.fixture(scope="module")
def k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Keras 2 files written by tf-keras (:mod:`tests.keras2_fixtures`)."""
    return keras2_files(tmp_path_factory)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic(tmp_path_factory, "t2.tif")  # 2000 x 1200 px at 0.5 µm/px


def _import(src: Path, out: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    rc = main(["model", "import", str(src), "--out", str(out), *args])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.is_file() and out.with_suffix(".json").is_file()
    return text


def _run(slide: Path, model: Path, out: Path, *args: str) -> dict[str, Any]:
    rc = main(["run", str(slide), "--out", str(out), "--model", str(model), "--quiet",
               "--scheduler", "threads", *args])
    assert rc == 0
    report = json.loads((out / slide.stem / "report.json").read_text())
    _check_outputs(out / slide.stem)
    return report


def _check_outputs(slide_dir: Path) -> None:
    """The checks every run's outputs pass: OME-Zarr valid (the class image too), GeoJSON as
    QuPath imports it (classification name and [r, g, b], polygons valid on its 0.01 px grid)."""
    exe = Path(sys.executable).with_name("ome-zarr-models")
    stores = [slide_dir / "mask.zarr"]
    if (slide_dir / "mask.zarr" / "classes").is_dir():
        stores.append(slide_dir / "mask.zarr" / "classes")
    for store in stores:
        done = subprocess.run([str(exe), "validate", str(store)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0 and "Valid" in done.stdout, done.stdout + done.stderr
    for name in ("tumor.geojson", "classes.geojson"):
        path = slide_dir / name
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        assert doc["type"] == "FeatureCollection"
        for f in doc["features"]:
            cls = f["properties"]["classification"]
            assert isinstance(cls["name"], str) and len(cls["color"]) == 3
            geom = shape(f["geometry"])
            assert geom.is_valid and shapely.set_precision(geom, 0.01).is_valid


# -- Keras 2 files, as tf-keras wrote them -----------------------------------------------------
def test_keras2_h5_unet_imports_and_runs(k2: Path, slide: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    text = _import(k2 / "unet.h5", tmp_path / "unet.keras", "--mpp", "2.0",
                   "--normalisation", "divide_255", "--trained-on", "tf-keras fixture",
                   capsys=capsys)
    assert "1 channel, sigmoid probabilities" in text
    assert "loaded back safely; one forward pass" in text
    card = read_card(tmp_path / "unet.keras")
    assert (card.input_size_px, card.output, card.classes, card.mpp) == (64, "sigmoid", (), 2.0)
    report = _run(slide, tmp_path / "unet.keras", tmp_path / "out")
    assert report["tiles"] > 0 and report["classes"] == []
    # The imported model predicts what tf-keras predicted for the same inputs.
    model = keras.saving.load_model(tmp_path / "unet.keras", safe_mode=True, compile=False)
    x = np.load(k2 / "x.npy")
    np.testing.assert_allclose(np.asarray(model(x)), np.load(k2 / "y.npy"), atol=1e-5)


def test_keras2_json_plus_weights_imports_and_runs(k2: Path, slide: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    _import(k2 / "unet.json", tmp_path / "j.keras", "--weights", str(k2 / "unet_w.h5"),
            "--mpp", "2.0", "--normalisation", "divide_255", capsys=capsys)
    a = _run(slide, tmp_path / "j.keras", tmp_path / "out")
    _import(k2 / "unet.h5", tmp_path / "h.keras", "--mpp", "2.0", "--normalisation",
            "divide_255", capsys=capsys)
    b = _run(slide, tmp_path / "h.keras", tmp_path / "out2")
    # Same network, same weights: the same mosaic bytes.
    za = sorted((tmp_path / "out" / slide.stem / "mask.zarr" / "0").rglob("*"))
    zb = sorted((tmp_path / "out2" / slide.stem / "mask.zarr" / "0").rglob("*"))
    assert [p.read_bytes() for p in za if p.is_file()] == \
        [p.read_bytes() for p in zb if p.is_file()]
    assert a["tumour_mm2"] == b["tumour_mm2"]


def test_keras2_two_class_softmax_unet(k2: Path, slide: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    text = _import(k2 / "softmax_unet.h5", tmp_path / "s.keras", "--mpp", "2.0",
                   "--normalisation", "minus1_1", "--classes", "Background,Tumor",
                   capsys=capsys)
    assert "probability of Tumor" in text and "classes.geojson" not in text
    card = read_card(tmp_path / "s.keras")
    assert card.output == "softmax" and card.background_classes == ("Background",)
    report = _run(slide, tmp_path / "s.keras", tmp_path / "out")
    assert report["classes"] == []  # two exclusive classes: the tumour probability says it
    assert not (tmp_path / "out" / slide.stem / "mask.zarr" / "classes").exists()


def test_keras2_logits_head_gets_its_sigmoid_at_run_time(k2: Path, slide: Path,
                                                         tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    text = _import(k2 / "logits_unet.h5", tmp_path / "l.keras", "--mpp", "2.0",
                   "--normalisation", "divide_255", capsys=capsys)
    assert "logits; a sigmoid is applied at run time" in text
    _run(slide, tmp_path / "l.keras", tmp_path / "out")
    # The run's compiled pass gives sigmoid(logit) of the model's own output.
    from wsi_seg.stages.backends import make_engine
    from wsi_seg.stages.card import load_model
    from wsi_seg.stages.models import preprocess
    from wsi_seg.tools.model_import import probe_tile

    model, card = load_model(tmp_path / "l.keras")
    assert (card.output, card.activation) == ("logits", "sigmoid")
    tile = probe_tile(64)
    engine = make_engine(model, card, batch_size=1, device="cpu")
    got = np.asarray(engine.fetch(engine.launch(tile)))
    logit = np.asarray(model(preprocess(tile, card)))[..., 0]
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-logit)), atol=1e-6)


def test_keras2_two_class_softmax_patch_classifier(k2: Path, slide: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    text = _import(k2 / "patch.h5", tmp_path / "p.keras", "--mpp", "8.0", "--normalisation",
                   "divide_255", "--classes", "Non-IDC,IDC", capsys=capsys)
    assert "one score per 50 px patch" in text
    card = read_card(tmp_path / "p.keras")
    assert card.kind == "patch" and card.tumour_classes == ("IDC",)  # the tumour-name rule
    report = _run(slide, tmp_path / "p.keras", tmp_path / "out", "--stride", "25")
    assert report["tiles"] > 0


# -- Keras 3 models of every output kind --------------------------------------------------------
def _five_class_unet(path: Path, side: int | None = 64) -> Path:
    inp = keras.Input((side, side, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inp)
    p = keras.layers.MaxPooling2D()(x)
    y = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(p)
    u = keras.layers.UpSampling2D()(y)
    c = keras.layers.Concatenate()([u, x])
    # Biases that give each class some pixels on tissue, so every class has polygons.
    bias = keras.initializers.Constant([0.0, 0.6, 0.5, 0.2, 0.1])
    out = keras.layers.Conv2D(5, 1, activation="softmax", bias_initializer=bias)(c)
    keras.utils.set_random_seed(3)
    keras.Model(inp, out).save(path)
    return path


def test_five_class_softmax_unet_classes_reach_geojson_and_report(
        slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _five_class_unet(tmp_path / "five_src.keras")
    text = _import(src, tmp_path / "five.keras", "--mpp", "2.0", "--normalisation",
                   "imagenet", "--classes", FIVE, "--threshold", "0.3", capsys=capsys)
    assert "classes.geojson (Tumor, Stroma, Immune cells, Necrosis)" in text
    report = _run(slide, tmp_path / "five.keras", tmp_path / "out", "--min-area-um2", "0")
    names = [c["name"] for c in report["classes"]]
    assert names == ["Tumor", "Stroma", "Immune cells", "Necrosis"]
    doc = json.loads((tmp_path / "out" / slide.stem / "classes.geojson").read_text())
    seen = {f["properties"]["classification"]["name"] for f in doc["features"]}
    assert seen and seen <= set(names)
    for c in report["classes"]:
        assert c["regions"] == sum(f["properties"]["classification"]["name"] == c["name"]
                                   for f in doc["features"])
    assert (tmp_path / "out" / "summary_classes.csv").read_text().count("\n") == 5
    assert "## Classes" in (tmp_path / "out" / "summary.md").read_text()


def test_imagenet_normalised_pretrained_style_encoder(slide: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    """A MobileNetV2 encoder (keras.applications, random weights: nothing downloaded) nested
    as a layer, upsampled back to the input: the pretrained-encoder segmenter of tutorials."""
    keras.utils.set_random_seed(0)
    encoder = keras.applications.MobileNetV2(input_shape=(64, 64, 3), alpha=0.35,
                                             include_top=False, weights=None)
    inp = keras.Input((64, 64, 3))
    x = keras.layers.UpSampling2D(32, interpolation="bilinear")(encoder(inp))
    out = keras.layers.Conv2D(1, 1, activation="sigmoid")(x)
    keras.Model(inp, out).save(tmp_path / "mnv2.keras")
    text = _import(tmp_path / "mnv2.keras", tmp_path / "m.keras", "--mpp", "2.0",
                   "--normalisation", "imagenet", capsys=capsys)
    assert "imagenet (mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225)" in text
    report = _run(slide, tmp_path / "m.keras", tmp_path / "out")
    assert report["tiles"] > 0


def test_undefined_input_unet_runs_at_two_tile_sizes(slide: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = _five_class_unet(tmp_path / "fcn_src.keras", side=None)
    text = _import(src, tmp_path / "fcn.keras", "--mpp", "2.0", "--normalisation",
                   "divide_255", "--classes", FIVE, "--tile", "64", capsys=capsys)
    assert "any multiple of 2 px (run with 64 px" in text
    a = _run(slide, tmp_path / "fcn.keras", tmp_path / "out64")
    b = _run(slide, tmp_path / "fcn.keras", tmp_path / "out128", "--tile", "128")
    prov = [json.loads((tmp_path / d / slide.stem / "mask.zarr" / "zarr.json").read_text())
            ["attributes"]["wsi_seg"]["tile_px"] for d in ("out64", "out128")]
    assert prov == [64, 128]
    assert a["tiles"] > b["tiles"]  # bigger windows, fewer of them
    rc = main(["run", str(slide), "--out", str(tmp_path / "bad"), "--model",
               str(tmp_path / "fcn.keras"), "--tile", "65", "--quiet"])
    assert rc == 2 and "not a multiple of 2 px" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_keras_hub_segmenter_imports_and_runs(slide: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    tiny_keras_hub_segmenter(tmp_path / "deeplab.keras")
    text = _import(tmp_path / "deeplab.keras", tmp_path / "d.keras", "--mpp", "2.0",
                   "--normalisation", "imagenet", "--classes", "Background,Tumor",
                   capsys=capsys)
    assert "2 channels of logits; a softmax is applied at run time" in text
    report = _run(slide, tmp_path / "d.keras", tmp_path / "out")
    assert report["tiles"] > 0


# -- refusals: one line, naming the file, saying what to change, nothing written ----------------
def _refused(args: list[str], capsys: pytest.CaptureFixture[str], out: Path) -> str:
    rc = main(["model", "import", *args, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert not out.exists() and not out.with_suffix(".json").exists()
    return err


@pytest.mark.parametrize(("name", "extra", "says"), [
    ("unet.h5", ["--kind", "patch"], "drop --kind or use --kind unet"),
    ("unet.h5", ["--output", "softmax"], "drop --output or use --output sigmoid"),
    ("softmax_unet.h5", [], "name them in order with --classes"),
    ("softmax_unet.h5", ["--classes", "A,B,C"], "names 3 classes but the model has 2"),
    ("softmax_unet.h5", ["--classes", "Stroma,Fat"], "say which are with --tumour-classes"),
    ("unet.h5", ["--classes", "Background,Tumor"], "drop --classes"),
    ("unet.h5", ["--tile", "128"], "takes 64 px tiles only"),
    ("lambda.h5", [], "Lambda"),
    ("custom.h5", [], "custom class"),
    ("valid_unet.h5", [], "needs a same-size mask"),
    ("two_inputs.h5", [], "2 inputs"),
    ("unet_w.h5", [], "weights"),
])
def test_import_refusals(k2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                         name: str, extra: list[str], says: str) -> None:
    err = _refused([str(k2 / name), "--mpp", "1", "--normalisation", "divide_255", *extra],
                   capsys, tmp_path / "m.keras")
    assert says in err and name in err


def test_probabilities_that_are_not_are_refused(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A head the graph cannot name (ReLU), said to be a softmax, must sum to 1: it does not."""
    inp = keras.Input((32, 32, 3))
    out = keras.layers.Conv2D(3, 1, activation="relu",
                              kernel_initializer=keras.initializers.Constant(2.0))(inp)
    keras.Model(inp, out).save(tmp_path / "relu.keras")
    err = _refused([str(tmp_path / "relu.keras"), "--mpp", "1", "--normalisation",
                    "divide_255", "--classes", "Background,Tumor,Stroma", "--output",
                    "softmax"], capsys, tmp_path / "m.keras")
    assert "not a softmax" in err or "use --output logits" in err


def test_import_needs_a_keras_name_and_never_overwrites_its_source(
        k2: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _refused([str(k2 / "unet.h5"), "--mpp", "1", "--normalisation", "divide_255"],
                   capsys, tmp_path / "m.h5")
    assert "MODEL.keras" in err
    src = tmp_path / "same.keras"
    _five_class_unet(src)
    rc = main(["model", "import", str(src), "--out", str(src), "--mpp", "1",
               "--normalisation", "divide_255", "--classes", FIVE])
    assert rc == 2 and "would overwrite" in capsys.readouterr().err


def test_model_show_prints_the_card_without_a_framework(tmp_path: Path) -> None:
    code = ("import sys; from wsi_seg.cli import main; rc = main(['model', 'show', "
            "'bundled:patch']); print('keras' in sys.modules, 'tensorflow' in sys.modules); "
            "sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "one score per 50 px patch" in done.stdout
    assert done.stdout.strip().endswith("False False")
