"""Patch-classifier training data in the Kaggle breast IDC layout.

``DIR/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png``: 50 x 50 RGB patches whose
top-left corner is ``(X, Y)`` in the patient's image, pixels at the patch resolution. Patients
(never patches) are split into train/validation/test; the training patches may be balanced.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.stages.card import InputNorm
from wsi_seg.stages.models import preprocess_tf
from wsi_seg.stages.slide import BACKGROUND_RGB
from wsi_seg.training.augment import Augment, augment_tf
from wsi_seg.training.images import read_rgb

if TYPE_CHECKING:
    import tensorflow as tf

IDC_NAME = re.compile(
    r"^(?P<patient>.+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$", re.IGNORECASE
)
BALANCE_MODES = ("none", "oversample", "undersample")


@dataclass(frozen=True)
class IdcPatch:
    """One IDC patch: file, patient, top-left ``(x, y)`` in the patient's image, label 0/1."""

    path: Path
    patient: str
    x: int
    y: int
    label: int


def scan_idc(folder: str | Path) -> list[IdcPatch]:
    """All patches under ``folder/<patient>/<0|1>/``, sorted by patient then position.

    Raises WsiSegError for a missing folder, no patches, a file name that contradicts its
    folder (patient or class), or a data set with only one class.
    """
    root = Path(folder)
    if not root.is_dir():
        raise WsiSegError("IDC data folder not found", root)
    patches: list[IdcPatch] = []
    for patient_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        for label in (0, 1):
            class_dir = patient_dir / str(label)
            if not class_dir.is_dir():
                continue
            for f in sorted(class_dir.iterdir()):
                m = IDC_NAME.match(f.name)
                if not m:
                    continue
                if int(m["label"]) != label or m["patient"] != patient_dir.name:
                    raise WsiSegError(
                        f"file name says patient {m['patient']} class {m['label']} but it "
                        f"lies in {patient_dir.name}/{label}/",
                        f,
                    )
                patches.append(IdcPatch(f, patient_dir.name, int(m["x"]), int(m["y"]), label))
    if not patches:
        raise WsiSegError(
            "no IDC patches found; expected DIR/<patient>/<0|1>/"
            "<patient>_idx5_x<X>_y<Y>_class<C>.png",
            root,
        )
    classes = {p.label for p in patches}
    if len(classes) < 2:
        raise WsiSegError(
            f"all {len(patches)} patches are class {classes.pop()}; training needs both "
            "classes 0 and 1",
            root,
        )
    return sorted(patches, key=lambda p: (p.patient, p.y, p.x))


@dataclass(frozen=True)
class PatientSplit:
    """Disjoint patient lists for training, validation (model selection) and test."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def check(self) -> None:
        sets = [set(self.train), set(self.val), set(self.test)]
        if sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2]:
            raise WsiSegError("a patient is in two splits")


def split_patients(
    patients: Sequence[str],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    val: Sequence[str] | None = None,
    test: Sequence[str] | None = None,
) -> PatientSplit:
    """Split patients (never patches) into train/val/test.

    Explicit ``val``/``test`` lists win; otherwise a seeded shuffle takes
    ``round(fraction * n)`` patients (at least one for validation) for each held-out split.
    """
    unique = sorted(set(patients))
    if val is not None or test is not None:
        v, t = tuple(sorted(set(val or ()))), tuple(sorted(set(test or ())))
        unknown = sorted((set(v) | set(t)) - set(unique))
        if unknown:
            raise WsiSegError(f"unknown patient(s) in the split: {', '.join(unknown[:5])}")
        split = PatientSplit(tuple(p for p in unique if p not in set(v) | set(t)), v, t)
    else:
        if len(unique) < 2:
            raise WsiSegError(
                f"only {len(unique)} patient(s): a patient split needs at least 2 "
                "(no patient may be in two splits)"
            )
        order = list(np.random.default_rng(seed).permutation(len(unique)))
        shuffled = [unique[i] for i in order]
        n = len(unique)
        n_val = max(1, round(val_fraction * n))
        n_test = min(round(test_fraction * n), n - n_val - 1)
        n_test = max(0, n_test)
        split = PatientSplit(
            tuple(sorted(shuffled[n_val + n_test :])),
            tuple(sorted(shuffled[:n_val])),
            tuple(sorted(shuffled[n_val : n_val + n_test])),
        )
    split.check()
    if not split.train or not split.val:
        raise WsiSegError("the patient split left no training or no validation patient")
    return split


def balance_indices(labels: np.ndarray, mode: str, seed: int = 0) -> np.ndarray:
    """Indices into ``labels`` (0/1) after class balancing, shuffled.

    ``none`` keeps everything; ``oversample`` repeats minority samples (drawn with replacement
    beyond whole copies) up to the majority count; ``undersample`` draws the majority class
    down to the minority count without replacement.
    """
    if mode not in BALANCE_MODES:
        raise WsiSegError(f"unknown balance mode {mode!r}; use one of {', '.join(BALANCE_MODES)}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    idx = [np.flatnonzero(labels == c) for c in (0, 1)]
    if mode == "none" or min(len(i) for i in idx) == 0:
        out = np.arange(len(labels))
    else:
        counts = [len(i) for i in idx]
        small, big = (0, 1) if counts[0] < counts[1] else (1, 0)
        if mode == "oversample":
            need = counts[big] - counts[small]
            extra = np.concatenate(
                [np.tile(idx[small], need // counts[small]),
                 rng.choice(idx[small], need % counts[small], replace=False)]
            )
            out = np.concatenate([idx[big], idx[small], extra])
        else:
            out = np.concatenate([idx[small], rng.choice(idx[big], counts[small], replace=False)])
    return rng.permutation(out)


def pad_bottom_right(img: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad bottom/right to at least ``size`` x ``size`` with ``value``.

    Only for IDC patches, and on purpose not centred like
    :func:`wsi_seg.training.unet_data.pad_to`: an IDC edge patch
    is cut off by its image's right or bottom border, so its pixels belong at the top-left of
    its footprint, where its ``(x, y)`` says it starts.
    """
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    pads = [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pads, constant_values=value)


def load_patch_tf(path: tf.Tensor, size: int) -> tf.Tensor:
    """Decode a patch PNG to RGB float32 ``(size, size, 3)``: cropped, or padded with white
    at the bottom/right (IDC's edge patches are smaller than 50 x 50)."""
    import tensorflow as tf

    img = tf.io.decode_png(tf.io.read_file(path), channels=3)
    h, w = tf.shape(img)[0], tf.shape(img)[1]
    img = img[: tf.minimum(h, size), : tf.minimum(w, size)]
    pads = [[0, size - tf.minimum(h, size)], [0, size - tf.minimum(w, size)], [0, 0]]
    img = tf.pad(img, pads, constant_values=BACKGROUND_RGB)
    return tf.cast(tf.ensure_shape(img, (size, size, 3)), tf.float32)


def patch_dataset(
    paths: Sequence[Path],
    labels: Sequence[int],
    size: int,
    channels: int,
    normalisation: str,
    batch_size: int,
    aug: Augment | None = None,
    shuffle_seed: int | None = None,
    repeat: bool = False,
) -> tf.data.Dataset:
    """Batches ``(x, y)`` of IDC patches read from disk in parallel; ``y`` float32 ``(n, 1)``."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(
        ([str(p) for p in paths], np.asarray(labels, np.float32)[:, None])
    )
    if shuffle_seed is not None:
        ds = ds.shuffle(len(paths), seed=shuffle_seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def prepare(path: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img = load_patch_tf(path, size)
        if aug is not None:
            img, _ = augment_tf(img, None, aug)
        return preprocess_tf(img, InputNorm(channels, normalisation)), label

    return (
        ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=repeat)
        .prefetch(tf.data.AUTOTUNE)
    )


def read_patch(path: Path, size: int) -> np.ndarray:
    """NumPy twin of :func:`load_patch_tf`: RGB uint8 ``(size, size, 3)``, white-padded."""
    img = read_rgb(path)[:size, :size]
    return pad_bottom_right(img, size, BACKGROUND_RGB)
