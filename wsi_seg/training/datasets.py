"""Training data: folder readers, patient splits, class balancing and tf.data pipelines.

Two layouts, the ones the project's seed repositories use:

* **UNet**: ``DIR/images/<stem>.<ext>`` and ``DIR/masks/<stem>.<ext>`` with matching stems
  (PNG, JPEG, TIFF or BMP, any size). Masks are binarised: a mask whose values are all 0/1 is
  taken as is, otherwise pixels ``>= mask_threshold`` (0..255) are tumour.
* **IDC** (Kaggle breast IDC): ``DIR/<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<C>.png``,
  50 x 50 RGB patches whose top-left corner is ``(X, Y)`` in the patient's image, pixels at
  the patch resolution.

Images are RGB uint8 everywhere on the NumPy side; :func:`wsi_seg.stages.models.preprocess_tf` turns
them into model inputs inside the pipeline, exactly as :func:`wsi_seg.stages.models.preprocess`
does at
inference.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.stages.models import preprocess_tf
from wsi_seg.stages.slide import BACKGROUND_RGB
from wsi_seg.stages.tiling import window_starts

if TYPE_CHECKING:
    import tensorflow as tf

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IDC_NAME = re.compile(
    r"^(?P<patient>.+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>[01])\.png$", re.IGNORECASE
)
BALANCE_MODES = ("none", "oversample", "undersample")


# -- UNet folders ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """An image and its tumour mask (same stem)."""

    image: Path
    mask: Path


def _image_files(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."):
            if p.stem in files:
                raise WsiSegError(f"two files with stem {p.stem!r} ({files[p.stem].name})", p)
            files[p.stem] = p
    return files


def find_pairs(folder: str | Path) -> list[Pair]:
    """Pairs of ``folder/images/*`` and ``folder/masks/*`` matched by stem, sorted by stem.

    Raises WsiSegError for a missing or empty ``images`` folder and for images without masks.
    Masks without an image are ignored (a mask alone cannot train anything).
    """
    root = Path(folder)
    images_dir, masks_dir = root / "images", root / "masks"
    if not root.is_dir():
        raise WsiSegError("training folder not found", root)
    for d in (images_dir, masks_dir):
        if not d.is_dir():
            raise WsiSegError(
                f"expected sub-folders images/ and masks/ with matching file stems; {d.name}/ "
                "is missing",
                root,
            )
    images, masks = _image_files(images_dir), _image_files(masks_dir)
    if not images:
        raise WsiSegError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found", images_dir)
    orphans = sorted(set(images) - set(masks))
    if orphans:
        shown = ", ".join(images[s].name for s in orphans[:3])
        more = f" and {len(orphans) - 3} more" if len(orphans) > 3 else ""
        raise WsiSegError(f"{len(orphans)} image(s) without a mask in masks/: {shown}{more}", root)
    return [Pair(images[s], masks[s]) for s in sorted(images)]


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 ``(h, w, 3)``; WsiSegError if unreadable."""
    p = Path(path)
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if img is None or img.size == 0:
        raise WsiSegError("cannot read image (corrupt or unsupported format)", p)
    if img.dtype == np.uint16:
        img = (img // 256).astype(np.uint8)  # 16-bit scans: keep the high byte
    elif img.dtype != np.uint8:
        raise WsiSegError(f"unsupported pixel type {img.dtype}; expected 8-bit images", p)
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(img)


def read_mask(path: str | Path, mask_threshold: int = 128) -> np.ndarray:
    """Read a mask as uint8 0/1 ``(h, w)``.

    A mask holding only 0 and 1 is taken as is; otherwise pixels ``>= mask_threshold`` are
    tumour (the maximum over channels for a colour mask).
    """
    p = Path(path)
    m = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    if m is None or m.size == 0:
        raise WsiSegError("cannot read mask (corrupt or unsupported format)", p)
    if m.ndim == 3:
        m = m[..., :3].max(axis=2)
    if m.dtype == np.uint16:
        m = (m // 256).astype(np.uint8)
    if m.max() <= 1:
        return (m > 0).astype(np.uint8)
    return (m >= mask_threshold).astype(np.uint8)


def load_pairs(
    pairs: Sequence[Pair], mask_threshold: int = 128
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Read every pair: RGB images and 0/1 masks. WsiSegError if a mask's size differs."""
    images, masks = [], []
    for pair in pairs:
        img = read_rgb(pair.image)
        mask = read_mask(pair.mask, mask_threshold)
        if mask.shape != img.shape[:2]:
            raise WsiSegError(
                f"mask is {mask.shape[1]}x{mask.shape[0]} px but its image "
                f"{pair.image.name} is {img.shape[1]}x{img.shape[0]} px",
                pair.mask,
            )
        images.append(img)
        masks.append(mask)
    return images, masks


def pad_to(img: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad each axis shorter than ``size`` pixels to ``size`` with ``value``, centred.

    Centred (half before, the rest after) because that is where
    :func:`wsi_seg.stages.tiling.window_starts` puts the single window of a short axis and where
    ``run`` and ``evaluate`` pad it (:func:`wsi_seg.stages.blend.sliding_window_inference`): a
    training or validation image smaller than the model input is seen as inference sees it.
    Longer axes are left alone.
    """
    pads = [_centred_pad(n, size) for n in img.shape[:2]] + [(0, 0)] * (img.ndim - 2)
    if not any(a or b for a, b in pads):
        return img
    return np.pad(img, pads, constant_values=value)


def _centred_pad(length: int, size: int) -> tuple[int, int]:
    """``(before, after)`` pixels that bring an axis of ``length`` px to the window ``size``."""
    if length >= size:
        return 0, 0
    before = -int(window_starts(length, size, size)[0])
    return before, size - length - before


def pad_bottom_right(img: np.ndarray, size: int, value: int) -> np.ndarray:
    """Pad bottom/right to at least ``size`` x ``size`` with ``value``.

    Only for IDC patches, and on purpose not centred like :func:`pad_to`: an IDC edge patch
    is cut off by its image's right or bottom border, so its pixels belong at the top-left of
    its footprint, where its ``(x, y)`` says it starts.
    """
    h, w = img.shape[:2]
    if h >= size and w >= size:
        return img
    pads = [(0, max(0, size - h)), (0, max(0, size - w))] + [(0, 0)] * (img.ndim - 2)
    return np.pad(img, pads, constant_values=value)


def resize_pair(img: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (area/linear) and its mask (nearest) to ``size`` x ``size``."""
    interp = cv2.INTER_AREA if min(img.shape[:2]) >= size else cv2.INTER_LINEAR
    return (
        cv2.resize(img, (size, size), interpolation=interp),
        cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST),
    )


def grid_tiles(
    img: np.ndarray, mask: np.ndarray, size: int, step: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Cut an image and mask into ``size`` tiles on a grid (deterministic, for validation).

    The grid is ``run``'s (:func:`wsi_seg.stages.tiling.window_starts`, last window moved inside,
    short axes padded centred with glass white); ``step`` defaults to ``size``.
    """
    img, mask = pad_to(img, size, BACKGROUND_RGB), pad_to(mask, size, 0)
    step = step or size
    h, w = mask.shape
    xs, ms = [], []
    for y in window_starts(h, size, step).tolist():
        for x in window_starts(w, size, step).tolist():
            xs.append(img[y : y + size, x : x + size])
            ms.append(mask[y : y + size, x : x + size])
    return np.stack(xs), np.stack(ms)


def fixed_tiles(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: int,
    mode: str,
    max_tiles: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic validation tiles: grid tiles (``mode="crop"``) or resized images.

    Returns RGB uint8 ``(n, size, size, 3)`` and 0/1 uint8 ``(n, size, size, 1)``; at most
    ``max_tiles``, evenly spaced over the list when there are more.
    """
    xs, ys = [], []
    for img, mask in zip(images, masks, strict=True):
        if mode == "resize":
            a, b = resize_pair(img, mask, size)
            xs.append(a[None])
            ys.append(b[None])
        else:
            a, b = grid_tiles(img, mask, size)
            xs.append(a)
            ys.append(b)
    x, y = np.concatenate(xs), np.concatenate(ys)
    if len(x) > max_tiles:
        keep = np.linspace(0, len(x) - 1, max_tiles).round().astype(int)
        x, y = x[keep], y[keep]
    return x, y[..., None]


# -- augmentation (TensorFlow, inside tf.data) ----------------------------------------------------
@dataclass(frozen=True)
class Augment:
    """Random augmentation applied to training tiles (never to validation).

    Attributes:
        flips: random horizontal and vertical flips.
        rot90: random rotations by multiples of 90 degrees.
        brightness: maximum brightness shift, fraction of full scale (0.1 = +-25 grey levels).
        contrast: maximum relative contrast change (0.1 = factor 0.9..1.1).
        saturation: maximum relative saturation change.
        hue: maximum hue shift, fraction of the colour circle (0.02 = +-7 degrees).
    """

    flips: bool = True
    rot90: bool = True
    brightness: float = 0.08
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02

    @classmethod
    def off(cls) -> Augment:
        return cls(False, False, 0.0, 0.0, 0.0, 0.0)


def augment_tf(image: tf.Tensor, mask: tf.Tensor | None, aug: Augment) -> tuple[Any, Any]:
    """Augment one RGB tile (float32, 0..255) and its mask (same geometric transform)."""
    import tensorflow as tf

    # Geometric transforms on image and mask stacked, so they can never disagree.
    both = image if mask is None else tf.concat([image, tf.cast(mask, tf.float32)], axis=-1)
    if aug.flips:
        both = tf.image.random_flip_left_right(both)
        both = tf.image.random_flip_up_down(both)
    if aug.rot90:
        both = tf.image.rot90(both, k=tf.random.uniform((), 0, 4, dtype=tf.int32))
    image = both[..., :3]
    if mask is not None:
        mask = both[..., 3:]
    x = image / 255.0
    if aug.brightness > 0:
        x = tf.image.random_brightness(x, aug.brightness)
    if aug.contrast > 0:
        x = tf.image.random_contrast(x, 1 - aug.contrast, 1 + aug.contrast)
    if aug.saturation > 0:
        x = tf.image.random_saturation(x, 1 - aug.saturation, 1 + aug.saturation)
    if aug.hue > 0:
        x = tf.image.random_hue(x, aug.hue)
    image = tf.clip_by_value(x, 0.0, 1.0) * 255.0
    return image, mask


def random_crops(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int, seed: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless random ``size`` crops; images are drawn in proportion to their area, so every
    pixel is equally likely to be seen. Images smaller than ``size`` are padded white, centred
    (:func:`pad_to`)."""
    rng = np.random.default_rng(seed)
    padded = [
        (pad_to(i, size, BACKGROUND_RGB), pad_to(m, size, 0))
        for i, m in zip(images, masks, strict=True)
    ]
    areas = np.array([m.size for _, m in padded], dtype=np.float64)
    p = areas / areas.sum()
    while True:
        k = int(rng.choice(len(padded), p=p))
        img, mask = padded[k]
        h, w = mask.shape
        y = int(rng.integers(0, h - size + 1))
        x = int(rng.integers(0, w - size + 1))
        yield img[y : y + size, x : x + size], mask[y : y + size, x : x + size, None]


def unet_train_dataset(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    size: int,
    channels: int,
    normalisation: str,
    batch_size: int,
    mode: str = "crop",
    aug: Augment | None = None,
    seed: int = 0,
) -> tf.data.Dataset:
    """Endless batches ``(x, y)`` for UNet training: crops (or resized images), augmented.

    ``x`` is the preprocessed model input (float32, ``channels`` channels), ``y`` the float32
    0/1 mask ``(batch, size, size, 1)``.
    """
    import tensorflow as tf

    aug = aug or Augment()
    spec = (
        tf.TensorSpec((size, size, 3), tf.uint8),
        tf.TensorSpec((size, size, 1), tf.uint8),
    )
    if mode == "resize":
        pairs = [resize_pair(i, m, size) for i, m in zip(images, masks, strict=True)]
        x = np.stack([a for a, _ in pairs])
        y = np.stack([b for _, b in pairs])[..., None]
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).repeat()
    elif mode == "crop":
        ds = tf.data.Dataset.from_generator(
            lambda: random_crops(images, masks, size, seed), output_signature=spec
        )
    else:
        raise WsiSegError(f"unknown tile mode {mode!r}; use crop or resize")

    def prepare(img: tf.Tensor, mask: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        img, mask = augment_tf(tf.cast(img, tf.float32), mask, aug)
        return preprocess_tf(img, channels, normalisation), tf.cast(mask, tf.float32)

    return (
        ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=True)
        .prefetch(tf.data.AUTOTUNE)
    )


def fixed_dataset(
    x_rgb: np.ndarray, y: np.ndarray, channels: int, normalisation: str, batch_size: int
) -> tf.data.Dataset:
    """Batches of fixed tiles (validation), preprocessed like training tiles."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x_rgb, y.astype(np.float32)))
    return (
        ds.map(lambda a, b: (preprocess_tf(a, channels, normalisation), b))
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )


# -- IDC folders ----------------------------------------------------------------------------------
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
        return preprocess_tf(img, channels, normalisation), label

    return (
        ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch_size, drop_remainder=repeat)
        .prefetch(tf.data.AUTOTUNE)
    )


def read_patch(path: Path, size: int) -> np.ndarray:
    """NumPy twin of :func:`load_patch_tf`: RGB uint8 ``(size, size, 3)``, white-padded."""
    img = read_rgb(path)[:size, :size]
    return pad_bottom_right(img, size, BACKGROUND_RGB)
