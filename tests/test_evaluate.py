"""``wsi-seg evaluate`` predicts as ``run`` does; training, evaluation and extraction share
run's window grid and padding (issue 12, "One rule, one place")."""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from wsi_seg.cli import main
from wsi_seg.stages.blend import sliding_window_inference
from wsi_seg.stages.card import ModelCard, save_model
from wsi_seg.stages.infer import InferConfig, Predictor
from wsi_seg.stages.tiling import step_for, window_starts
from wsi_seg.training.image_evaluation import WindowOptions, predict_image
from wsi_seg.training.unet_data import grid_tiles, pad_to

ROI = 32


def window_mean_unet(path: Path, roi: int = ROI) -> Path:
    """A UNet whose output is constant over each window: the window's mean red / 255.

    Neighbouring windows disagree wherever the image changes, so how overlaps are weighed
    shows in every overlap (a seam-revealing model)."""
    import keras

    inp = keras.Input((roi, roi, 3))
    red = keras.layers.Conv2D(1, 1, use_bias=False, dtype="float32",
                              kernel_initializer=keras.initializers.Constant(
                                  np.array([1.0, 0.0, 0.0]).reshape(1, 1, 3, 1)))(inp)
    mean = keras.layers.AveragePooling2D(roi, dtype="float32")(red)
    out = keras.layers.UpSampling2D(roi, dtype="float32")(mean)
    card = ModelCard(kind="unet", input_size_px=roi, channels=3, mpp=1.0, name=path.stem,
                     trained_on="hand-set weights (test fixture)")
    save_model(keras.Model(inp, out), card, path)
    return path


def mean_red_patch(path: Path, roi: int = 20) -> Path:
    """A patch classifier: score = mean red / 255 over the patch."""
    import keras

    inp = keras.Input((roi, roi, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    out = keras.layers.Dense(1, use_bias=False, dtype="float32",
                             kernel_initializer=keras.initializers.Constant(
                                 np.array([[1.0], [0.0], [0.0]])))(x)
    card = ModelCard(kind="patch", input_size_px=roi, channels=3, mpp=4.0, name=path.stem,
                     trained_on="hand-set weights (test fixture)")
    save_model(keras.Model(inp, out), card, path)
    return path


def red_ramp(h: int, w: int) -> np.ndarray:
    """RGB image whose red rises left to right from 0 to 255 (green and blue mid-grey)."""
    img = np.full((h, w, 3), 128, np.uint8)
    img[..., 0] = np.linspace(0, 255, w).round().astype(np.uint8)[None, :]
    return img


def equal_weight_blend(image: np.ndarray, predict: Callable[[np.ndarray], np.ndarray],
                       roi: int, step: int) -> np.ndarray:
    """What ``wsi-seg evaluate`` did before: windows averaged with equal weights."""
    h, w = image.shape[:2]
    acc = np.zeros((h, w), np.float32)
    n = np.zeros((h, w), np.float32)
    for y in window_starts(h, roi, step).tolist():
        for x in window_starts(w, roi, step).tolist():
            acc[y : y + roi, x : x + roi] += predict(image[None, y : y + roi, x : x + roi])[0]
            n[y : y + roi, x : x + roi] += 1
    return acc / n


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"unet": window_mean_unet(root / "wmean.keras"),
            "patch": mean_red_patch(root / "patch.keras")}


def write_pair(folder: Path, stem: str, image: np.ndarray, mask: np.ndarray) -> None:
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "images" / f"{stem}.png"), image[..., ::-1])
    cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask * 255)


def read_scores(path: Path) -> dict[str, dict[str, str]]:
    with open(path) as f:
        return {r["image"]: r for r in csv.DictReader(f)}


# -- evaluate predicts through run's sliding-window code -----------------------------------------
@pytest.mark.parametrize("size", [(70, 150), (20, 45), (32, 32)])
def test_predict_image_is_runs_sliding_window(models: dict[str, Path],
                                              size: tuple[int, int]) -> None:
    """Bit for bit what run's specification gives, for long, short and exact axes."""
    predictor = Predictor.from_path(models["unet"], InferConfig(batch_size=4))
    image = red_ramp(*size)
    got = predict_image(image, predictor, WindowOptions().spec(predictor.card))
    want = sliding_window_inference(image, predictor, ROI, overlap=0.25, mode="gaussian",
                                    sigma_scale=0.125)
    assert got.dtype == np.float32 and got.shape == size
    np.testing.assert_array_equal(got, want)


def test_patch_model_defaults_are_runs(models: dict[str, Path]) -> None:
    """A patch model is blended as a box (constant), at run's default overlap or --stride."""
    predictor = Predictor.from_path(models["patch"], InferConfig(batch_size=4))
    image = red_ramp(50, 90)
    spec = WindowOptions().spec(predictor.card)
    assert (spec.mode, spec.step_px) == ("constant", step_for(20, 0.25))
    np.testing.assert_array_equal(
        predict_image(image, predictor, spec),
        sliding_window_inference(image, predictor, 20, overlap=0.25, mode="constant"))
    spec = WindowOptions(stride_px=10).spec(predictor.card)
    np.testing.assert_array_equal(
        predict_image(image, predictor, spec),
        sliding_window_inference(image, predictor, 20, mode="constant", step_px=10))


def test_cli_evaluate_scores_what_run_predicts(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """On a seam-revealing model the old equal-weight blend thresholds differently; the CLI's
    counts are those of run's blend (the card's threshold, 0.5)."""
    predictor = Predictor.from_path(models["unet"], InferConfig(batch_size=4))
    image = red_ramp(40, 200)
    truth = np.zeros(image.shape[:2], np.uint8)
    truth[:, 100:] = 1
    write_pair(tmp_path / "data", "ramp", image, truth)
    run_prob = sliding_window_inference(image, predictor, ROI)
    old_prob = equal_weight_blend(image, predictor, ROI, step_for(ROI, 0.25))
    assert (run_prob >= 0.5).sum() != (old_prob >= 0.5).sum()  # the premise: seams differ
    rc = main(["evaluate", "--model", str(models["unet"]), "--images",
               str(tmp_path / "data" / "images"), "--masks", str(tmp_path / "data" / "masks"),
               "--csv", str(tmp_path / "s.csv")])
    assert rc == 0, capsys.readouterr().err
    row = read_scores(tmp_path / "s.csv")["ramp"]
    assert int(row["predicted_px"]) == int((run_prob >= 0.5).sum())
    # run's options, mirrored: hann weights at a 16 px stride
    rc = main(["evaluate", "--model", str(models["unet"]), "--images",
               str(tmp_path / "data" / "images"), "--masks", str(tmp_path / "data" / "masks"),
               "--csv", str(tmp_path / "h.csv"), "--blend", "hann", "--stride", "16",
               "--batch-size", "3", "--threshold", "0.45"])
    assert rc == 0, capsys.readouterr().err
    hann = sliding_window_inference(image, predictor, ROI, mode="hann", step_px=16)
    row = read_scores(tmp_path / "h.csv")["ramp"]
    assert int(row["predicted_px"]) == int((hann >= 0.45).sum())


@pytest.mark.parametrize("bad", [
    ["--stride", "0"], ["--stride", "33"], ["--overlap", "1"], ["--overlap", "-0.1"],
    ["--sigma-scale", "0"], ["--batch-size", "0"], ["--threshold", "2"],
    ["--threshold", "nan"], ["--mask-threshold", "300"], ["--blend", "box"],
])
def test_cli_evaluate_refuses_impossible_options(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str], bad: list[str]
) -> None:
    write_pair(tmp_path, "a", red_ramp(40, 40), np.zeros((40, 40), np.uint8))
    try:
        rc = main(["evaluate", "--model", str(models["unet"]), "--images",
                   str(tmp_path / "images"), "--masks", str(tmp_path / "masks"), *bad])
    except SystemExit as exc:  # argparse's own refusal (choices)
        rc = int(exc.code or 0)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert bad[0] in err or "invalid choice" in err, err


# -- one window grid, one padding rule ------------------------------------------------------------
class Recorder:
    """A PredictFn that records the windows it is given (and predicts zeros)."""

    def __init__(self) -> None:
        self.tiles: list[np.ndarray] = []

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        self.tiles.extend(tiles)
        return np.zeros(tiles.shape[:3], np.float32)


@pytest.mark.parametrize("size", [(20, 45), (45, 20), (11, 7), (32, 32), (70, 150)])
def test_validation_tiles_are_the_windows_run_predicts(size: tuple[int, int]) -> None:
    """Training's validation grid cuts exactly the windows run's blend predicts, padding
    short axes the same way (centred, glass white)."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    mask = np.ones(size, np.uint8)
    rec = Recorder()
    sliding_window_inference(image, rec, ROI, step_px=24)
    tiles, masks = grid_tiles(image, mask, ROI, 24)
    np.testing.assert_array_equal(tiles, np.stack(rec.tiles))
    # the mask is padded with background: each tile holds exactly its image pixels as tumour
    covered = min(size[0], ROI) * min(size[1], ROI)
    assert masks.reshape(len(masks), -1).sum(axis=1).tolist() == [covered] * len(masks)


def test_pad_to_centres_short_axes() -> None:
    img = np.zeros((5, 40, 3), np.uint8)
    out = pad_to(img, 32, 255)
    assert out.shape == (32, 40, 3)
    rows = np.flatnonzero((out == 0).all(axis=(1, 2)))
    assert rows.tolist() == list(range(13, 18))  # start -(32 - 5) // 2 = -13, as tiling says
    assert -int(window_starts(5, 32, 32)[0]) == 13
    assert (out[:13] == 255).all() and (out[18:] == 255).all()
    same = np.zeros((40, 40), np.uint8)
    assert pad_to(same, 32, 0) is same


# -- empty truth against empty prediction ------------------------------------------------------
def test_cli_evaluate_empty_vs_empty_is_null_in_json_and_na_in_text(
    tmp_path: Path, models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """An image with no tumour in truth or prediction has no Dice/IoU: null in --json (strict
    JSON, never NaN), n/a in the table and the CSV; left out of the means and counted."""
    import json

    dark = np.full((40, 40, 3), 128, np.uint8)
    dark[..., 0] = 0  # red 0: the window-mean model predicts 0 everywhere
    write_pair(tmp_path / "data", "empty", dark, np.zeros((40, 40), np.uint8))
    red = np.full((40, 40, 3), 128, np.uint8)
    red[..., 0] = 255  # red 255: predicts 1 everywhere; truth is the left half
    half = np.zeros((40, 40), np.uint8)
    half[:, :20] = 1
    write_pair(tmp_path / "data", "half", red, half)
    args = ["evaluate", "--model", str(models["unet"]), "--images",
            str(tmp_path / "data" / "images"), "--masks", str(tmp_path / "data" / "masks")]

    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} in JSON")

    assert main([*args, "--json"]) == 0
    got = json.loads(capsys.readouterr().out, parse_constant=refuse)
    images = {r["name"]: r for r in got["images"]}
    assert images["empty"]["dice"] is None and images["empty"]["iou"] is None
    assert images["half"]["iou"] == pytest.approx(0.5)
    summary = got["summary"]
    assert summary["mean_iou"] == pytest.approx(0.5) and summary["empty_both"] == 1
    assert summary["mean_dice"] == pytest.approx(2 / 3) and summary["images"] == 2

    assert main([*args, "--csv", str(tmp_path / "s.csv")]) == 0
    text = capsys.readouterr().out
    empty_line = next(line for line in text.splitlines() if line.startswith("empty"))
    assert empty_line.split()[1:3] == ["n/a", "n/a"] and "nan" not in text.lower()
    assert "IoU 0.5000" in text and "empty_both 1" in text
    row = read_scores(tmp_path / "s.csv")["empty"]
    assert row["dice"] == "n/a" and row["iou"] == "n/a"
