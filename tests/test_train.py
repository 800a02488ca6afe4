"""Training: data readers, patient splits, balancing, the loop, --resume, evaluation, CLI."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pytest

from wsi_seg.cli import main
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.scores import defined_score
from wsi_seg.training.augment import Augment, augment_tf
from wsi_seg.training.config import TrainConfig, TrainResult
from wsi_seg.training.idc_data import balance_indices, scan_idc, split_patients
from wsi_seg.training.image_evaluation import evaluate_folder, overlap_scores
from wsi_seg.training.losses import LOSS_FUNCTIONS
from wsi_seg.training.unet_data import find_pairs, load_pairs
from wsi_seg.training.unet_task import UnetOptions, train_unet

BLOB_RGB = (120, 40, 140)  # purple "tumour" discs on pink


def make_unet_folder(root: Path, n: int, seed: int, size: tuple[int, int] = (72, 88)) -> Path:
    """Images of pink background with purple discs; masks mark the discs."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = np.full((h, w, 3), (230, 180, 200), np.uint8)
        mask = np.zeros((h, w), np.uint8)
        for _ in range(3):
            c = (int(rng.integers(8, w - 8)), int(rng.integers(8, h - 8)))
            r = int(rng.integers(5, 12))
            cv2.circle(img, c, r, BLOB_RGB, -1)
            cv2.circle(mask, c, r, 255, -1)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"im{i}.png"), img[..., ::-1])
        cv2.imwrite(str(root / "masks" / f"im{i}.png"), mask)
    return root


def make_idc_folder(root: Path, patients: int, seed: int, grid: int = 4) -> Path:
    """IDC layout: per patient a grid of 50 px patches, purple = class 1."""
    rng = np.random.default_rng(seed)
    for p in range(patients):
        pid = f"{1000 + p}"
        for gy in range(grid):
            for gx in range(grid):
                label = int(rng.random() < 0.35)
                colour = BLOB_RGB if label else (230, 180, 200)
                img = np.clip(np.full((50, 50, 3), colour, np.float32)
                              + rng.normal(0, 10, (50, 50, 3)), 0, 255).astype(np.uint8)
                folder = root / pid / str(label)
                folder.mkdir(parents=True, exist_ok=True)
                x, y = 1 + 50 * gx, 1 + 50 * gy
                cv2.imwrite(str(folder / f"{pid}_idx5_x{x}_y{y}_class{label}.png"),
                            img[..., ::-1])
    return root


def quick_cfg(out: Path, epochs: int, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        out=out, epochs=epochs, batch_size=4, steps_per_epoch=4, learning_rate=1e-2,
        augment=Augment.off(), early_stopping=0, lr_patience=0, verbose=0, seed=0,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def unet_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("unet")
    return make_unet_folder(root / "train", 6, 0), make_unet_folder(root / "valid", 2, 1)


def tiny_unet(train: Path, valid: Path) -> UnetOptions:
    return UnetOptions(train, valid, mpp=1.0, input_size_px=32, depth=2, base_filters=4)


# -- UNet folders ---------------------------------------------------------------------------------
def test_find_pairs_matches_stems(unet_data: tuple[Path, Path]) -> None:
    pairs = find_pairs(unet_data[0])
    assert [p.image.stem for p in pairs] == [p.mask.stem for p in pairs]
    images, masks = load_pairs(pairs)
    assert images[0].shape == (72, 88, 3) and set(np.unique(masks[0])) <= {0, 1}


def test_bad_unet_folders(tmp_path: Path) -> None:
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    with pytest.raises(WsiSegError, match="no images"):
        find_pairs(tmp_path / "empty")
    with pytest.raises(WsiSegError, match="masks/ is missing"):
        (tmp_path / "nomasks" / "images").mkdir(parents=True)
        find_pairs(tmp_path / "nomasks")
    d = make_unet_folder(tmp_path / "orphan", 2, 0)
    (d / "masks" / "im1.png").unlink()
    with pytest.raises(WsiSegError, match=r"without a mask.*im1\.png"):
        find_pairs(d)
    d = make_unet_folder(tmp_path / "size", 1, 0)
    cv2.imwrite(str(d / "masks" / "im0.png"), np.zeros((10, 10), np.uint8))
    with pytest.raises(WsiSegError, match="10x10 px"):
        load_pairs(find_pairs(d))
    d = make_unet_folder(tmp_path / "broken", 1, 0)
    (d / "images" / "im0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(WsiSegError, match="cannot read image") as exc:
        load_pairs(find_pairs(d))
    assert "\n" not in str(exc.value)


def test_masks_0_1_and_0_255_agree(tmp_path: Path) -> None:
    from wsi_seg.training.images import read_mask

    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 1
    cv2.imwrite(str(tmp_path / "a.png"), m)
    cv2.imwrite(str(tmp_path / "b.png"), m * 255)
    np.testing.assert_array_equal(read_mask(tmp_path / "a.png"), read_mask(tmp_path / "b.png"))


def test_augmentation_moves_image_and_mask_together() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.float32)
    mask = (img[..., :1] > 128).astype(np.float32)  # the mask is a function of the image
    geo = Augment(flips=True, rot90=True, brightness=0, contrast=0, saturation=0, hue=0)
    for _ in range(8):
        a, m = augment_tf(img, mask, geo)
        np.testing.assert_array_equal(np.asarray(m), (np.asarray(a)[..., :1] > 128))


# -- the loop -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_unet(
    tmp_path_factory: pytest.TempPathFactory, unet_data: tuple[Path, Path]
) -> tuple[Path, TrainResult]:
    out = tmp_path_factory.mktemp("trained") / "m.keras"
    return out, train_unet(tiny_unet(*unet_data), quick_cfg(out, epochs=6))


def test_unet_training_lowers_the_loss(trained_unet: tuple[Path, TrainResult]) -> None:
    out, result = trained_unet
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 6
    assert min(losses[-2:]) < 0.8 * losses[0], losses
    assert out.is_file() and out.with_suffix(".json").is_file()
    card = result.card
    assert card.kind == "unet" and card.mpp == 1.0 and card.input_size_px == 32
    assert set(card.validation) >= {"dice", "iou", "accuracy", "loss"}
    work = out.with_name("m.training")
    with open(work / "train_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "val_loss", "dice", "val_dice", "iou", "accuracy", "lr", "seconds"} <= set(
        rows[0])
    png = cv2.imread(str(work / "learning_curves.png"))
    assert png is not None and png.shape[0] > 100


def test_resume_continues_from_the_saved_epoch(
    tmp_path: Path, unet_data: tuple[Path, Path]
) -> None:
    train, valid = unet_data
    out = tmp_path / "r.keras"
    args = ["train", "unet", "--train", str(train), "--valid", str(valid), "--mpp", "1",
            "--size", "32", "--depth", "2", "--base-filters", "4", "--out", str(out),
            "--batch-size", "4", "--steps-per-epoch", "3", "--no-augment", "--quiet",
            "--early-stopping", "0", "--lr-patience", "0"]
    assert main([*args, "--epochs", "2"]) == 0
    state = json.loads((tmp_path / "r.training" / "state.json").read_text())
    first = state["history"]
    assert state["epoch"] == 2
    csv_path = tmp_path / "r.training" / "train_metrics.csv"
    first_rows = _csv_rows(csv_path)
    assert [r["epoch"] for r in first_rows] == ["1", "2"]
    # a run stopped after writing epoch 3's row but before its checkpoint: the resumed run
    # repeats epoch 3, and its row must not appear twice
    with open(csv_path, "a") as f:
        f.write("3" + ",0" * (len(first_rows[0]) - 1) + "\r\n")
    assert main([*args, "--epochs", "4", "--resume"]) == 0
    state = json.loads((tmp_path / "r.training" / "state.json").read_text())
    assert state["epoch"] == 4
    assert [r["epoch"] for r in state["history"]] == [1, 2, 3, 4]
    assert state["history"][:2] == first  # the first two epochs were not re-run
    rows = _csv_rows(csv_path)
    assert [r["epoch"] for r in rows] == ["1", "2", "3", "4"]
    assert rows[:2] == first_rows  # the resumed run appended; earlier rows kept as written
    assert float(rows[2]["loss"]) == pytest.approx(state["history"][2]["loss"])
    # optimizer state came back: 4 epochs x 3 steps
    import keras

    from wsi_seg.stages.models import build_model
    from wsi_seg.training.losses import bce_dice

    model = build_model("unet", **state["spec"]["args"])
    model.compile(optimizer=keras.optimizers.Adam(), loss=bce_dice)
    model.optimizer.build(model.trainable_variables)
    model.load_weights(tmp_path / "r.training" / "checkpoint.weights.h5")
    assert int(model.optimizer.iterations) == 12


def test_resume_without_checkpoint_and_with_other_architecture(
    tmp_path: Path, unet_data: tuple[Path, Path], trained_unet: tuple[Path, TrainResult]
) -> None:
    out = tmp_path / "x.keras"
    with pytest.raises(WsiSegError, match="nothing to resume"):
        train_unet(tiny_unet(*unet_data), quick_cfg(out, epochs=1, resume=True))
    done = trained_unet[0]
    shutil.copytree(done.with_name("m.training"), tmp_path / "x.training")
    other = UnetOptions(*unet_data, mpp=1.0, input_size_px=32, depth=2, base_filters=8)
    with pytest.raises(WsiSegError, match="another architecture"):
        train_unet(other, quick_cfg(out, epochs=8, resume=True))


def test_greyscale_resize_early_stopping_lr_reduction(
    tmp_path: Path, unet_data: tuple[Path, Path]
) -> None:
    opts = UnetOptions(*unet_data, mpp=2.0, input_size_px=32, channels=1, depth=2,
                       base_filters=4, tile_mode="resize")
    # min_delta 10: no epoch after the first counts as an improvement, so patience runs out
    cfg = quick_cfg(tmp_path / "g.keras", epochs=10, learning_rate=1e-4, early_stopping=2,
                    lr_patience=1, steps_per_epoch=1, min_delta=10.0, augment=Augment())
    result = train_unet(opts, cfg)
    assert result.card.channels == 1 and result.card.mpp == 2.0
    assert result.stopped_early and result.epochs_run == 3
    lrs = [row["lr"] for row in result.history]  # the rate each epoch trained with
    assert lrs == pytest.approx([1e-4, 1e-4, 5e-5])
    state = json.loads((tmp_path / "g.training" / "state.json").read_text())
    assert state["lr"] == pytest.approx(2.5e-5)  # halved again after epoch 3
    assert result.card.training["best_epoch"] == 1


def test_mixed_precision_trains_resumes_and_saves_float32(
    tmp_path: Path, unet_data: tuple[Path, Path]
) -> None:
    from wsi_seg.stages.card import load_model

    out = tmp_path / "mp.keras"
    opts = tiny_unet(*unet_data)
    train_unet(opts, quick_cfg(out, epochs=1, steps_per_epoch=2, mixed_precision=True))
    result = train_unet(opts, quick_cfg(out, epochs=2, steps_per_epoch=2, mixed_precision=True,
                                        resume=True))
    assert [row["epoch"] for row in result.history] == [1, 2]
    model, card = load_model(out)
    assert card.training["mixed_precision"] is True
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    import keras

    assert keras.mixed_precision.global_policy().name == "float32"  # policy restored


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _pooled(truth: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Dice, IoU and accuracy of all pixels together (inputs with tumour on some side)."""
    t, p = truth.astype(bool).ravel(), pred.astype(bool).ravel()
    tp, fp, fn = int(np.sum(t & p)), int(np.sum(~t & p)), int(np.sum(t & ~p))
    return 2 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn), float(np.mean(t == p))


def test_epoch_scores_pool_every_pixel_of_the_epoch() -> None:
    """An epoch's Dice/IoU/accuracy are those of all its pixels, not means of batch scores."""
    from wsi_seg.training.epoch_scores import SCORES, score_metrics

    metrics = score_metrics()
    assert [m.name for m in metrics] == list(SCORES)
    rng = np.random.default_rng(0)
    # batch 1: one tumour pixel, found; batch 2: much tumour, half of it found
    t1 = np.zeros((2, 8, 8, 1), np.float32)
    t1[0, 3, 3] = 1
    p1 = t1 * 0.9 + 0.05
    t2 = (rng.random((2, 8, 8, 1)) < 0.6).astype(np.float32)
    p2 = np.where(rng.random(t2.shape) < 0.5, t2, 1 - t2) * 0.8 + 0.1
    for m in metrics:
        for t, p in ((t1, p1), (t2, p2)):
            m.update_state(t, p.astype(np.float16))  # mixed precision hands float16
    want = _pooled(np.concatenate([t1, t2]), np.concatenate([p1, p2]) >= 0.5)
    got = [float(m.result()) for m in metrics]
    assert got == pytest.approx(want, abs=1e-6)
    batch_mean_dice = np.mean([_pooled(t1, p1 >= 0.5)[0], _pooled(t2, p2 >= 0.5)[0]])
    assert abs(got[0] - batch_mean_dice) > 0.05  # what Keras' default mean would have said
    # empty truth, empty prediction: Dice and IoU undefined (NaN in the tensor, the metric
    # module's rule; not the 1.0 a smoothed ratio gives), accuracy 1
    for m in metrics:
        m.reset_state()
        m.update_state(np.zeros((1, 4, 4, 1)), np.zeros((1, 4, 4, 1)))
    dice, iou, acc = (float(m.result()) for m in metrics)
    assert math.isnan(dice) and math.isnan(iou) and acc == 1.0
    assert [defined_score(float(m.result())) for m in metrics] == [None, None, 1.0]


def test_fit_logs_each_epochs_pooled_scores() -> None:
    """Through Keras' fit: each epoch's Dice/IoU are those of all its pixels together (not
    the mean of its batches' scores), and each epoch starts its counts afresh."""
    import keras

    from wsi_seg.training.epoch_scores import score_metrics

    rng = np.random.default_rng(1)
    truth = np.zeros((8, 8, 8, 1), np.float32)
    truth[0, 3, 3] = 1  # batch A: one tumour pixel, found
    truth[2:] = rng.random((6, 8, 8, 1)) < 0.6  # batches B, C, D: much tumour
    found = rng.random(truth.shape) < np.array([1, 1, 0.5, 0.5, 0.8, 0.8, 0.3, 0.3])[
        :, None, None, None]
    prob = np.where(found, truth, 1 - truth).astype(np.float32) * 0.8 + 0.1
    # the model passes its input through (weight 1, learning rate 0): predictions = prob
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(
        1, 1, use_bias=False, kernel_initializer="ones")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="mse",
                  metrics=score_metrics())
    history = model.fit(prob, truth, batch_size=2, epochs=2, steps_per_epoch=2, shuffle=False,
                        verbose=0).history
    for epoch, samples in ((0, slice(0, 4)), (1, slice(4, 8))):  # batches A, B; then C, D
        dice, iou, _ = _pooled(truth[samples], prob[samples] >= 0.5)
        assert history["dice"][epoch] == pytest.approx(dice, abs=1e-6)
        assert history["iou"][epoch] == pytest.approx(iou, abs=1e-6)
    batch_dice = [_pooled(truth[i : i + 2], prob[i : i + 2] >= 0.5)[0] for i in (0, 2)]
    assert abs(history["dice"][0] - np.mean(batch_dice)) > 0.05  # the batch mean differs


def test_card_validation_scores_pool_the_validation_tiles(
    unet_data: tuple[Path, Path], trained_unet: tuple[Path, TrainResult]
) -> None:
    """The card's Dice/IoU/accuracy are the saved model's on all validation tiles pooled."""
    from wsi_seg.stages.card import load_model
    from wsi_seg.training.tile_prediction import predict_tiles
    from wsi_seg.training.unet_data import fixed_tiles

    model, card = load_model(trained_unet[0])
    images, masks = load_pairs(find_pairs(unet_data[1]))
    x, y = fixed_tiles(images, masks, card.input_size_px, "crop")
    prob = predict_tiles(model, card, x)
    dice, iou, acc = _pooled(y, prob >= 0.5)
    assert card.validation["dice"] == pytest.approx(dice, abs=2e-3)
    assert card.validation["iou"] == pytest.approx(iou, abs=2e-3)
    assert card.validation["accuracy"] == pytest.approx(acc, abs=2e-3)


@pytest.mark.parametrize("loss", sorted(LOSS_FUNCTIONS))
def test_losses_prefer_better_predictions(loss: str) -> None:
    fn = LOSS_FUNCTIONS[loss]
    y = np.zeros((2, 8, 8, 1), np.float32)
    y[:, 2:6, 2:6] = 1
    good = np.clip(y, 0.05, 0.95)
    bad = 1 - good
    lg, lb = float(fn(y, good)), float(fn(y, bad))
    assert np.isfinite(lg) and np.isfinite(lb) and lg < lb


def test_evaluate_cli(
    tmp_path: Path,
    unet_data: tuple[Path, Path],
    trained_unet: tuple[Path, TrainResult],
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = trained_unet[0]
    valid = unet_data[1]
    scores, _ = evaluate_folder(out, valid / "images", valid / "masks")
    assert [s.name for s in scores] == ["im0", "im1"]
    assert all(0 <= s.accuracy <= 1 for s in scores)
    rc = main(["evaluate", "--model", str(out), "--images", str(valid / "images"), "--masks",
               str(valid / "masks"), "--csv", str(tmp_path / "s.csv")])
    assert rc == 0
    assert "mean over 2 images" in capsys.readouterr().out
    with open(tmp_path / "s.csv") as f:
        assert len(list(csv.reader(f))) == 3
    # a model file that is not Keras: one line, exit 2
    bad = tmp_path / "bad.keras"
    bad.write_text("hello")
    rc = main(["evaluate", "--model", str(bad), "--images", str(valid / "images"), "--masks",
               str(valid / "masks")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a Keras" in err


def test_overlap_scores_rules() -> None:
    a = np.zeros((4, 4), bool)
    b = a.copy()
    d, j, acc = overlap_scores(a, b)
    assert d is None and j is None and acc == 1.0  # undefined: None, not NaN
    a[:2] = True
    b[1:3] = True
    d, j, acc = overlap_scores(a, b)
    assert j == pytest.approx(1 / 3) and d == pytest.approx(0.5) and acc == 0.5


# -- IDC: splits, balancing, training ------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 5, 10, 31])
def test_patient_split_never_leaks(n: int) -> None:
    patients = [f"p{i}" for i in range(n)] * 7  # one entry per patch
    for seed in range(20):
        s = split_patients(patients, 0.2, 0.2, seed)
        train, val, test = set(s.train), set(s.val), set(s.test)
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(patients)
        assert train and val


def test_explicit_patient_split() -> None:
    s = split_patients(["a", "b", "c", "d"], val=["b"], test=["c", "d"])
    assert s.train == ("a",) and s.val == ("b",) and s.test == ("c", "d")
    with pytest.raises(WsiSegError, match="unknown patient"):
        split_patients(["a", "b"], val=["z"])
    with pytest.raises(WsiSegError, match="at least 2"):
        split_patients(["a", "a"])


@pytest.mark.parametrize("mode", ["oversample", "undersample", "none"])
def test_balance_counts(mode: str) -> None:
    labels = np.array([0] * 23 + [1] * 5)
    idx = balance_indices(labels, mode, seed=3)
    counts = np.bincount(labels[idx], minlength=2)
    if mode == "oversample":
        assert counts.tolist() == [23, 23]
        assert set(idx[labels[idx] == 1]) == set(range(23, 28))  # every minority sample kept
    elif mode == "undersample":
        assert counts.tolist() == [5, 5]
        assert len(set(idx.tolist())) == 10  # no repeats
    else:
        assert sorted(idx.tolist()) == list(range(28))


def test_idc_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(WsiSegError, match="no IDC patches"):
        (tmp_path / "empty").mkdir()
        scan_idc(tmp_path / "empty")
    d = make_idc_folder(tmp_path / "one", 2, 0)
    for f in list(d.rglob("*class1.png")):
        f.unlink()
    with pytest.raises(WsiSegError, match=r"both classes"):
        scan_idc(d)
    d = make_idc_folder(tmp_path / "wrong", 2, 0)
    f = next(d.rglob("*class0.png"))
    dest = f.parent.parent / "1"
    dest.mkdir(exist_ok=True)
    f.rename(dest / f.name)
    with pytest.raises(WsiSegError, match="lies in"):
        scan_idc(d)


def test_patch_training_with_per_patient_evaluation(
    tmp_path: Path, unet_data: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = make_idc_folder(tmp_path / "idc", 5, 0)
    out = tmp_path / "p.keras"
    rc = main(["train", "patch", "--data", str(data), "--out", str(out), "--filters", "4,8",
               "--dense-units", "8", "--balance", "oversample", "--val-patients", "1001",
               "--test-patients", "1003,1004", "--epochs", "3", "--batch-size", "8",
               "--no-augment", "--quiet", "--lr", "0.01"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "patient 1003: 16 patches" in printed and "mean over 2 patients" in printed
    from wsi_seg.stages.card import load_model

    _, card = load_model(out)
    assert card.kind == "patch" and card.input_size_px == 50 and card.mpp == 4.0
    assert {"test_mean_accuracy", "test_mean_iou", "test_patients"} <= set(card.validation)
    split = card.training["split"]
    assert split == {"train": ["1000", "1002"], "val": ["1001"], "test": ["1003", "1004"]}
    assert card.training["balanced_train_patches"] == 2 * max(
        card.training["counts"]["train"]["patches"]
        - card.training["counts"]["train"]["tumour_patches"],
        card.training["counts"]["train"]["tumour_patches"],
    )
    work = tmp_path / "p.training"
    with open(work / "patients.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["patient"] for r in rows] == ["1003", "1004", "mean"]
    overlay = cv2.imread(str(work / "overlays" / "1003.png"))
    assert overlay.shape[:2] == (201, 201)  # 4 x 4 patches of 50 px at x, y = 1, 51, 101, 151
    # a patch model scores whole images too (its patch scores painted over their footprints)
    valid = unet_data[1]
    scores, _ = evaluate_folder(out, valid / "images", valid / "masks")
    assert len(scores) == 2 and all(0 <= s.accuracy <= 1 for s in scores)


def test_patch_overlay_colours(tmp_path: Path) -> None:
    from wsi_seg.training.patients import write_overlay

    img = np.full((4, 3, 3), 255, np.uint8)
    pred = np.array([[1, 0, 1]] * 4, np.uint8)
    truth = np.array([[0, 1, 1]] * 4, np.uint8)
    write_overlay(img, pred, truth, tmp_path / "o.png")
    rgb = cv2.imread(str(tmp_path / "o.png"))[..., ::-1].astype(int)
    r, b, purple = rgb[0, 0], rgb[0, 1], rgb[0, 2]
    assert r[0] > r[2] + 50  # prediction only: red
    assert b[2] > b[0] + 50  # truth only: blue
    assert purple[0] > purple[1] + 50 and purple[2] > purple[1] + 50  # both: purple


def test_small_edge_patches_are_padded_white_in_both_readers(tmp_path: Path) -> None:
    """IDC edge patches are smaller than 50 x 50: tf.data and NumPy pad them the same way."""
    from wsi_seg.training.idc_data import load_patch_tf, read_patch

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)
    path = tmp_path / "p_idx5_x0_y0_class0.png"
    cv2.imwrite(str(path), small[..., ::-1])
    a = read_patch(path, 50)
    b = np.asarray(load_patch_tf(str(path), 50)).astype(np.uint8)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:30, :41], small)
    assert (a[30:] == 255).all() and (a[:, 41:] == 255).all()


# -- empty truth against empty prediction ------------------------------------------------------
def _strict_json(text: str) -> Any:
    """JSON as the standard defines it: NaN or Infinity is an error, not a number."""
    def refuse(constant: str) -> object:
        raise AssertionError(f"{constant} in JSON")

    return json.loads(text, parse_constant=refuse)


def test_undefined_epoch_scores_are_none_in_history_csv_state_and_card(tmp_path: Path) -> None:
    """Tiles without tumour that the model soon predicts none of: Dice/IoU are undefined
    (empty vs empty), so None in the history and the card, null in state.json and the card
    file, n/a in train_metrics.csv; not the 1.0 of a smoothed ratio, nor NaN."""
    import tensorflow as tf

    from wsi_seg.stages.card import ModelCard, card_path, load_model
    from wsi_seg.training.fit_loop import fit

    spec = tiny_unet(tmp_path, tmp_path).spec()
    x, y = np.zeros((4, 32, 32, 3), np.float32), np.zeros((4, 32, 32, 1), np.float32)
    out = tmp_path / "e.keras"
    card = ModelCard(kind="unet", input_size_px=32, channels=3, mpp=1.0, name="e")
    result = fit(spec, card, tf.data.Dataset.from_tensors((x, y)).repeat(), 4,
                 tf.data.Dataset.from_tensors((x, y)), quick_cfg(out, epochs=2))
    last = result.history[-1]
    assert last["val_dice"] is None and last["val_iou"] is None, last
    assert last["val_accuracy"] == 1.0 and last["val_loss"] is not None
    _, saved = load_model(out)
    assert saved.validation["dice"] is None and saved.validation["iou"] is None
    on_disk = _strict_json(card_path(out).read_text())
    assert on_disk["validation"]["dice"] is None
    state = _strict_json((tmp_path / "e.training" / "state.json").read_text())
    assert state["history"][-1]["val_dice"] is None
    rows = _csv_rows(tmp_path / "e.training" / "train_metrics.csv")
    assert rows[-1]["val_dice"] == "n/a" and rows[-1]["val_iou"] == "n/a"
    assert float(rows[-1]["val_accuracy"]) == 1.0


def test_patient_without_tumour_on_either_side_has_no_iou(tmp_path: Path) -> None:
    """A patient with neither true nor predicted tumour patches: IoU None, n/a in
    patients.csv, left out of the mean and counted in empty_both."""
    from wsi_seg.training.patients import PatientScore, summarise_patients, write_patient_csv

    scores = [PatientScore("a", 4, 2, 2, 1.0, 0.5), PatientScore("b", 4, 0, 0, 0.75, None)]
    summary = summarise_patients(scores)
    assert summary["mean_iou"] == 0.5 and summary["empty_both"] == 1
    assert summary["mean_accuracy"] == 0.875
    write_patient_csv(scores, tmp_path / "patients.csv")
    rows = _csv_rows(tmp_path / "patients.csv")
    assert [r["iou"] for r in rows] == ["0.5000", "n/a", "0.5000"]


def test_cards_written_before_the_rule_still_load() -> None:
    """A card whose scores are NaN (evaluate's old convention) or 1.0 (training's old smoothed
    ratio) loads; NaN reads as undefined and is written back as null, 1.0 as written."""
    from wsi_seg.core.scores import format_score
    from wsi_seg.stages.card import ModelCard

    old = json.dumps({"format": "wsi-seg-model-card/1", "kind": "unet", "input_size_px": 32,
                      "channels": 3, "mpp": 1.0, "validation": {
                          "dice": float("nan"), "iou": 1.0, "test_mean_iou": None}})
    assert "NaN" in old
    card = ModelCard.from_json(old)
    assert defined_score(card.validation["dice"]) is None
    assert format_score(card.validation["dice"]) == "n/a"
    assert card.validation["iou"] == 1.0
    again = _strict_json(card.to_json())
    assert again["validation"] == {"dice": None, "iou": 1.0, "test_mean_iou": None}


def test_train_summary_prints_an_undefined_score_as_n_a(capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    """The command's closing lines follow the empty-vs-empty rule (a None score once ended
    the command in a TypeError after the model was saved)."""
    from types import SimpleNamespace

    from wsi_seg.cli.train import _report

    result = SimpleNamespace(card=SimpleNamespace(validation={"dice": None, "iou": 0.5}),
                             model_path=Path("m.keras"), epochs_run=2, seconds_per_epoch=1.0,
                             stopped_early=False)
    _report(result)
    out = capsys.readouterr().out
    assert "dice n/a" in out and "iou 0.5" in out, out
