"""Model cards: the JSON beside every ``.keras`` file, and safe loading.

A model is two files side by side::

    MODEL.keras   Keras 3 archive (architecture + weights, no custom code)
    MODEL.json    the card: kind, input size/channels, µm per pixel, normalisation, what the
                  output is (activation, classes, which classes are tumour), threshold,
                  training data, validation scores, versions and the archive's sha256

Cards of format 1 (every card written before classes existed) mean what they meant: one
sigmoid output channel, the tumour probability. A card states format 2 only when it uses
something format 1 cannot say, and writes only the fields it uses, so the card (and the mosaic
metadata that quotes it) of a format-1 model stays byte for byte what it was. The fields are
documented for users in ``docs/model-card.md``.

:func:`load_model` refuses anything it cannot vouch for, each with one line naming the file:
a file that is not a Keras archive, a missing or malformed card, a card that does not match the
archive (hash, kind, input shape, channels), an archive holding a ``Lambda`` layer or custom
classes (arbitrary code on load), and an archive whose members would inflate past
:data:`MAX_CONFIG_BYTES` (``config.json``, ``metadata.json``) or :data:`MAX_WEIGHTS_BYTES`
(anything else), a decompression bomb. Keras' own ``safe_mode`` is the second gate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from wsi_seg import __version__
from wsi_seg.core.errors import ModelError
from wsi_seg.core.files import (
    GiB,
    MiB,
    atomic_path,
    decode_json,
    read_capped,
    size_text,
    write_atomic,
)

CARD_FORMAT = "wsi-seg-model-card/1"
CARD_FORMAT_2 = "wsi-seg-model-card/2"
CARD_FORMATS = (CARD_FORMAT, CARD_FORMAT_2)
KINDS = ("unet", "patch")
NORMALISATIONS = ("divide_255", "minus1_1", "imagenet", "mean_std")
#: Per-channel mean and std (of ``x / 255``, RGB order) of the ``imagenet`` preset: the values
#: torchvision and keras-hub backbones were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: What the model's last layer emits: probabilities through a sigmoid (each channel on its
#: own) or a softmax (over channels), or raw scores (logits) to which the compiled forward
#: pass applies a sigmoid (one channel) or a softmax (several).
OUTPUTS = ("sigmoid", "softmax", "logits")
#: Window used for a model whose input size is undefined when neither its card nor the run
#: names one (pixels; rounded up to the model's size multiple).
DEFAULT_TILE_PX = 256
MAX_CLASSES = 64
#: QuPath's own colours for its built-in classes (``PathClassFactory``), matched by name
#: without case; other classes take :data:`PALETTE` in order.
QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "tumor": (200, 0, 0), "tumour": (200, 0, 0), "stroma": (150, 200, 150),
    "immune cells": (160, 90, 160), "necrosis": (50, 50, 50), "other": (255, 200, 0),
    "region*": (0, 0, 180), "ignore*": (180, 180, 180), "positive": (200, 50, 50),
    "negative": (112, 112, 225),
}
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
#: Fields a format-1 card cannot hold, with their defaults (which mean what format 1 meant).
_FORMAT_2_DEFAULTS: dict[str, Any] = {
    "mean": None, "std": None, "output": "sigmoid", "classes": (), "tumour_classes": (),
    "background_classes": (), "class_colors": (), "size_multiple_px": 1, "tile_px": None,
    "precision": None,
}
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"  # wsi_seg/weights
BUNDLED = {"unet": "unet_demo.keras", "patch": "patch_demo.keras"}

# Ceilings on what a model file may make us read (bytes). Keras' cards and configs are tens of
# kB; the bundled demo weights are 1 MB and a large UNet's a few hundred MB.
MAX_CARD_BYTES = 16 * MiB
JSON_MEMBERS = ("config.json", "metadata.json")
MAX_CONFIG_BYTES = 64 * MiB  # each of JSON_MEMBERS, inflated
MAX_WEIGHTS_BYTES = 4 * GiB  # any other member, inflated
MAX_ARCHIVE_BYTES = MAX_WEIGHTS_BYTES + 2 * MAX_CONFIG_BYTES  # all members together
MAX_MEMBERS = 10_000
# Keras stores members uncompressed, and recompressing one gains ~1.1x on weights and ~10x on
# JSON; deflate reaches ~1000x only on filler. Past this ratio (and this size) it is a bomb.
MAX_INFLATION = 100
INFLATION_FLOOR = 64 * MiB


@dataclass(frozen=True)
class InputNorm:
    """How RGB tiles become model input: greyscale or not, then the scaling (one rule for
    training and inference, :func:`wsi_seg.stages.models.scale_input`).

    Attributes:
        channels: 1 (greyscale, BT.601 luma) or 3 (RGB).
        normalisation: ``divide_255`` (to [0, 1]), ``minus1_1`` (to [-1, 1]), ``imagenet``
            (``(x / 255 - mean) / std`` with :data:`IMAGENET_MEAN` and :data:`IMAGENET_STD`) or
            ``mean_std`` (the same with ``mean`` and ``std`` given).
        mean, std: per-channel mean and standard deviation of ``x / 255`` (``mean_std`` only;
            one value per channel).
    """

    channels: int = 3
    normalisation: str = "divide_255"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        problems = _norm_problems(self.channels, self.normalisation, self.mean, self.std)
        if problems:
            raise ValueError("; ".join(problems))

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` of ``x / 255`` per channel, or None for a plain scaling."""
        if self.normalisation == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        if self.normalisation == "mean_std":
            assert self.mean is not None and self.std is not None  # checked on creation
            return self.mean, self.std
        return None


def _norm_problems(channels: Any, normalisation: Any, mean: Any, std: Any) -> list[str]:
    """Everything wrong with an input rule's fields (the card's too, where they live)."""
    p: list[str] = []
    if channels not in (1, 3):
        p.append(f"channels must be 1 or 3, not {channels!r}")
    if normalisation not in NORMALISATIONS:
        p.append(f"normalisation must be one of {NORMALISATIONS}, not {normalisation!r}")
    if normalisation == "imagenet" and channels != 3:
        p.append("normalisation 'imagenet' needs 3 channels (use mean_std for greyscale)")
    if normalisation == "mean_std":
        for what, values in (("mean", mean), ("std", std)):
            if not isinstance(values, tuple | list) or len(values) != channels or not all(
                    isinstance(v, int | float) and math.isfinite(v) for v in values):
                p.append(f"normalisation 'mean_std' needs {what} as {channels} finite "
                         f"number(s) (one per channel, of x / 255), not {values!r}")
        if isinstance(std, tuple | list) and any(isinstance(v, int | float) and v <= 0
                                                 for v in std):
            p.append(f"std must be positive, not {std!r}")
    elif mean is not None or std is not None:
        p.append(f"mean and std belong to normalisation 'mean_std', not {normalisation!r}")
    return p


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how to feed it.

    Attributes:
        kind: ``"unet"`` (dense output ``(n, h, w, C)``) or ``"patch"`` (one output per patch,
            ``(n, C)``).
        input_size_px: side of the square input tile, pixels; None for a fully convolutional
            model that takes any multiple of ``size_multiple_px`` (the run's window is then
            ``tile_px``, or the run's ``--tile``).
        channels: 1 (greyscale, converted from RGB by :func:`wsi_seg.stages.models.preprocess`) or
            3.
        mpp: resolution the model was trained at, micrometres per pixel.
        normalisation: input scaling applied after greyscale conversion (:class:`InputNorm`).
        threshold: probability at or above which a pixel/patch counts as tumour (and as any
            class, for the per-class polygons).
        trained_on: free text saying exactly which data trained the model.
        validation: held-out scores, metric name -> value (e.g. ``{"dice": 0.87}``).
        versions: ``{"wsi_seg": ..., "tensorflow": ..., "keras": ...}`` at save time.
        sha256: hex digest of the ``.keras`` file the card describes.
        architecture: builder name and arguments (for humans and for retraining).
        training: hyper-parameters, epochs run, seconds per epoch, ...
        created: UTC time the card was written, ISO 8601.
        name: short model name.
        mean, std: per-channel mean and std of ``x / 255`` (normalisation ``mean_std``).
        output: ``sigmoid``, ``softmax`` or ``logits`` (:data:`OUTPUTS`): what the last layer
            emits.
        classes: names of the output channels, in order (QuPath class names); empty: one
            channel, the tumour probability.
        tumour_classes: the classes whose probabilities, summed (softmax) or the largest
            (sigmoid), make the tumour probability that drives the mosaic, polygons and
            scores.
        background_classes: classes that get no polygons or areas of their own (they are the
            rest of the slide).
        class_colors: ``[r, g, b]`` per class (0..255); empty: QuPath's colour for its own
            class names, then a fixed palette.
        size_multiple_px: an undefined input's side must be a multiple of this (the model's
            total downsampling); 1 for a fixed input.
        tile_px: the window for an undefined input when the run names none.
        precision: ``"float32"`` when the model must never run in reduced precision; None
            when any precision the run asks for is fine.
        extra: keys from newer card versions, kept on round trip.
    """

    kind: str
    input_size_px: int
    channels: int
    mpp: float
    normalisation: str = "divide_255"
    threshold: float = 0.5
    trained_on: str = ""
    validation: dict[str, float | None] = field(default_factory=dict)  # None: undefined
    versions: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    name: str = ""
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    output: str = "sigmoid"
    classes: tuple[str, ...] = ()
    tumour_classes: tuple[str, ...] = ()
    background_classes: tuple[str, ...] = ()
    class_colors: tuple[tuple[int, int, int], ...] = ()
    size_multiple_px: int = 1
    tile_px: int | None = None
    precision: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = card_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    # -- input ------------------------------------------------------------------------------
    @property
    def input_norm(self) -> InputNorm:
        return InputNorm(self.channels, self.normalisation, self.mean, self.std)

    @property
    def window_px(self) -> int:
        """The side of the window the model is run on (pixels): its fixed input size, else
        ``tile_px``, else :data:`DEFAULT_TILE_PX` rounded up to ``size_multiple_px``."""
        if self.input_size_px is not None:
            return self.input_size_px
        if self.tile_px is not None:
            return self.tile_px
        m = self.size_multiple_px
        return -(-DEFAULT_TILE_PX // m) * m

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(h, w, c)`` of one model input as it is run."""
        return (self.window_px, self.window_px, self.channels)

    def at_tile(self, tile_px: int | None) -> ModelCard:
        """The card with the run's window: ``tile_px`` (None keeps the card's). ValueError
        when the model cannot take it (a fixed input of another size, or a side that is not
        a multiple of ``size_multiple_px``)."""
        if tile_px is None or tile_px == self.window_px:
            return self
        if self.input_size_px is not None:
            raise ValueError(f"the model takes {self.input_size_px} px tiles only (its input "
                             f"is fixed); drop --tile {tile_px} or use --tile "
                             f"{self.input_size_px}")
        m = self.size_multiple_px
        if tile_px % m or tile_px < 8:
            near = max(1, round(tile_px / m), -(-8 // m)) * m
            raise ValueError(f"--tile {tile_px} is not a multiple of {m} px (the model's total "
                             f"downsampling) of at least 8; use e.g. --tile {near}")
        return dataclasses.replace(self, tile_px=tile_px)

    # -- output -----------------------------------------------------------------------------
    @property
    def n_outputs(self) -> int:
        """Channels of the model's output (1 for a card without classes)."""
        return max(1, len(self.classes))

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the output channels (``("Tumor",)`` for a card without classes)."""
        return self.classes or ("Tumor",)

    @property
    def tumour_indices(self) -> tuple[int, ...]:
        """Output channels that make the tumour probability."""
        if not self.classes:
            return (0,)
        return tuple(self.classes.index(c) for c in self.tumour_classes)

    @property
    def activation(self) -> str:
        """The activation that turns the output into probabilities: ``sigmoid`` (each channel
        on its own) or ``softmax`` (over channels); ``none`` when the model applies it."""
        if self.output != "logits":
            return "none"
        return "sigmoid" if self.n_outputs == 1 else "softmax"

    @property
    def exclusive(self) -> bool:
        """Whether the classes are exclusive (probabilities sum to 1: a softmax)."""
        return self.output == "softmax" or (self.output == "logits" and self.n_outputs > 1)

    @property
    def class_maps(self) -> bool:
        """Whether runs also store, trace and score each class: when the tumour probability
        does not already say everything (three or more exclusive classes, or two or more
        independent ones)."""
        return self.n_outputs > (2 if self.exclusive else 1)

    @property
    def n_maps(self) -> int:
        """Values a run keeps per pixel: the tumour probability, then (with
        :attr:`class_maps`) every class's probability in output order."""
        return 1 + self.n_outputs if self.class_maps else 1

    def kept_shape(self, n: int) -> tuple[int, ...]:
        """Shape of what the compiled pass keeps for ``n`` windows: ``(n, roi, roi)`` for a
        UNet, ``(n,)`` for a patch model, with a last axis of :attr:`n_maps` when above 1."""
        shape: tuple[int, ...] = ((n, self.window_px, self.window_px) if self.kind == "unet"
                                  else (n,))
        return shape + ((self.n_maps,) if self.n_maps > 1 else ())

    @property
    def mapped_classes(self) -> tuple[int, ...]:
        """Channels that get polygons and areas of their own (all but the background)."""
        return tuple(i for i, c in enumerate(self.classes) if c not in self.background_classes)

    def color_of(self, index: int) -> tuple[int, int, int]:
        """``(r, g, b)`` of output channel ``index``."""
        if self.class_colors:
            r, g, b = self.class_colors[index]
            return (int(r), int(g), int(b))
        return default_color(self.class_names[index], index)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        new = {k: v for k, v in d.items()
               if k in _FORMAT_2_DEFAULTS and v != _FORMAT_2_DEFAULTS[k]}
        # A format-1 card is written exactly as format 1 wrote it (same keys, same order).
        d = {k: v for k, v in d.items() if k not in _FORMAT_2_DEFAULTS}
        fmt = CARD_FORMAT_2 if new or self.input_size_px is None else CARD_FORMAT
        return _finite({"format": fmt, **d, **new, **extra})

    def to_json(self) -> str:
        """Strict JSON (undefined scores such as an empty-vs-empty IoU become ``null``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Build a card from parsed JSON; unknown keys go to ``extra``. Raises ValueError."""
        if not isinstance(d, dict):
            raise ValueError("card is not a JSON object")
        d = dict(d)
        fmt = d.pop("format", CARD_FORMAT)
        if fmt not in CARD_FORMATS:
            raise ValueError(f"card format {fmt!r} is not one this wsi-seg reads "
                             f"({', '.join(CARD_FORMATS)}); upgrade wsi-seg")
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("kind", "input_size_px", "channels", "mpp") if k not in d]
        if missing:
            raise ValueError(f"card lacks {', '.join(missing)}")
        known = {k: _tuples(v) if k in _FORMAT_2_DEFAULTS else v
                 for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        return cls(**known, extra=extra)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"card is not valid JSON ({exc.msg} at line {exc.lineno})") from None
        except RecursionError:  # json.loads on input nested deeper than the recursion limit
            raise ValueError("card is not valid JSON (nested too deeply)") from None


def _tuples(value: Any) -> Any:
    """JSON lists as tuples, nested (the card's sequence fields are tuples)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def default_color(name: str, index: int) -> tuple[int, int, int]:
    """QuPath's colour for one of its own class names, else the palette's ``index``-th."""
    key = name.casefold()
    return QUPATH_COLORS.get(key, QUPATH_COLORS.get(f"{key}*",
                                                    PALETTE[index % len(PALETTE)]))


def _finite(node: Any) -> Any:
    """Replace NaN and infinities by None, recursively (JSON has no NaN)."""
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    return node


def card_problems(card: ModelCard) -> list[str]:
    """Everything wrong with a card's fields (empty when it is consistent)."""
    p: list[str] = []
    if card.kind not in KINDS:
        p.append(f"kind must be one of {KINDS}, not {card.kind!r}")
    if card.input_size_px is not None and (not isinstance(card.input_size_px, int)
                                           or card.input_size_px < 8):
        p.append(f"input_size_px must be an integer >= 8 (or null: any size), "
                 f"not {card.input_size_px!r}")
    if not isinstance(card.mpp, int | float) or not 0.01 <= float(card.mpp) <= 100:
        p.append(f"mpp must be a resolution in µm/px (0.01-100), not {card.mpp!r}")
    p += _norm_problems(card.channels, card.normalisation, card.mean, card.std)
    if not isinstance(card.threshold, int | float) or not 0.0 < float(card.threshold) < 1.0:
        p.append(f"threshold must lie in (0, 1), not {card.threshold!r}")
    p += _size_problems(card)
    p += _output_problems(card)
    if card.precision not in (None, "float32"):
        p.append(f"precision must be null or 'float32', not {card.precision!r}")
    return p


def _size_problems(card: ModelCard) -> list[str]:
    p: list[str] = []
    m = card.size_multiple_px
    if not isinstance(m, int) or not 1 <= m <= 4096:
        return [f"size_multiple_px must be an integer in 1..4096, not {m!r}"]
    if card.input_size_px is not None and m != 1 and card.input_size_px % m:
        p.append(f"input_size_px {card.input_size_px} is not a multiple of size_multiple_px {m}")
    t = card.tile_px
    if t is not None:
        if not isinstance(t, int) or t < 8 or t % m:
            p.append(f"tile_px must be an integer >= 8 and a multiple of {m}, not {t!r}")
        elif card.input_size_px is not None and t != card.input_size_px:
            p.append(f"tile_px {t} differs from the fixed input size {card.input_size_px}")
    return p


def _output_problems(card: ModelCard) -> list[str]:
    """The output fields: activation, classes, tumour and background classes, colours."""
    p: list[str] = []
    if card.output not in OUTPUTS:
        p.append(f"output must be one of {OUTPUTS}, not {card.output!r}")
    classes = card.classes
    if not isinstance(classes, tuple) or not all(isinstance(c, str) and c.strip()
                                                 for c in classes):
        return [*p, f"classes must be a list of non-empty names, not {classes!r}"]
    if len(classes) > MAX_CLASSES:
        p.append(f"{len(classes)} classes; at most {MAX_CLASSES}")
    if len({c.casefold() for c in classes}) != len(classes):
        p.append(f"class names must be distinct (case aside): {list(classes)}")
    if len(classes) == 1:
        p.append("one class needs no name list: leave classes empty (the output is the "
                 "tumour probability)")
    if card.output == "softmax" and len(classes) < 2:
        p.append("a softmax output needs at least 2 classes (name them, e.g. "
                 "background,tumour)")
    for what, names in (("tumour_classes", card.tumour_classes),
                        ("background_classes", card.background_classes)):
        unknown = [c for c in names if c not in classes]
        if unknown:
            p.append(f"{what} {unknown} are not among the classes {list(classes)}")
    if classes and not card.tumour_classes:
        p.append(f"tumour_classes must name which of {list(classes)} are tumour")
    if set(card.tumour_classes) & set(card.background_classes):
        p.append("a class cannot be both tumour and background")
    colors = card.class_colors
    if colors and (len(colors) != len(card.class_names) or not all(
            isinstance(c, tuple) and len(c) == 3
            and all(isinstance(v, int) and 0 <= v <= 255 for v in c) for c in colors)):
        p.append(f"class_colors must be one [r, g, b] (0..255) per class, not {colors!r}")
    return p


def card_path(model_path: str | os.PathLike[str]) -> Path:
    """The card beside ``MODEL.keras``: ``MODEL.json``."""
    return Path(model_path).with_suffix(".json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    """Versions that made a model file: ours, Keras and the backend that saved it."""
    import importlib

    import keras

    backend = keras.backend.backend()
    return {"wsi_seg": __version__, "keras": keras.__version__, "backend": backend,
            backend: str(getattr(importlib.import_module(backend), "__version__", "?"))}


def save_model(model: Any, card: ModelCard, path: str | os.PathLike[str]) -> ModelCard:
    """Write ``MODEL.keras`` and its card ``MODEL.json`` atomically; return the final card.

    Both files are written under temporary names first and renamed into place (archive first,
    card last), so a reader never sees a half-written file, and a crash between the renames
    leaves a card whose hash does not match, which :func:`load_model` reports.
    The card's ``sha256``, ``versions`` and ``created`` are filled in here.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ModelError("model files must end in .keras", path)
    check_model_matches_card(model, card, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp_model:  # keeps the .keras suffix Keras insists on
        model.save(tmp_model)
        final = dataclasses.replace(
            card,
            sha256=sha256_file(tmp_model),
            versions=library_versions(),
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        )
    write_atomic(card_path(path), final.to_json())
    return final


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the card of ``MODEL.keras`` (``MODEL.json``); ModelError if absent or malformed."""
    path = Path(path)
    cpath = card_path(path)
    if not cpath.is_file():
        raise ModelError(f"model card {cpath.name} not found beside the model", path)
    raw = read_capped(cpath, MAX_CARD_BYTES, ModelError, "model card")
    try:
        return ModelCard.from_json(raw.decode("utf-8"))
    except (ValueError, TypeError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelError(f"bad model card: {exc}", cpath) from None


def _data_offset(fh: BinaryIO, info: zipfile.ZipInfo, path: Path) -> int:
    """Where a member's stored bytes start: after its local header, name and extra field."""
    fh.seek(info.header_offset)
    head = fh.read(30)
    if len(head) != 30 or head[:4] != b"PK\x03\x04":
        raise ModelError(f"corrupt .keras archive (no local header for {info.filename!r})", path)
    name_len, extra_len = struct.unpack("<HH", head[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _inflated_size(fh: BinaryIO, info: zipfile.ZipInfo, limit: int, path: Path) -> int:
    """Bytes a deflated member really inflates to, counted up to ``limit + 1`` (then stopping)
    while holding one 1 MiB chunk.

    Its declared size is not enough: ``ZipExtFile.read()`` (Keras reads members so) inflates
    up to 2 GiB in one call before cutting to the declared size, so a member that declares
    1 kB and inflates to 1 GiB costs 1 GiB there.
    """
    fh.seek(_data_offset(fh, info, path))
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)  # raw deflate, as zip stores it
    left, total = info.compress_size, 0
    while left > 0 and total <= limit and not inflater.eof:
        data = fh.read(min(MiB, left))
        if not data:
            break
        left -= len(data)
        while data and total <= limit:
            total += len(inflater.decompress(data, MiB))
            data = inflater.unconsumed_tail
    return total


def _check_members(zf: zipfile.ZipFile, path: Path) -> None:
    """ModelError unless every member of the archive is within its size ceiling, by its
    declared size and by what it really inflates to (counted without keeping it).

    Keras stores members uncompressed, so the count is free for its own files; a deflated
    member costs one inflation pass (hundreds of MB/s). Methods other than stored and
    deflated are refused: ``zipfile`` inflates bzip2/lzma reads in one piece.
    """
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ModelError(f"not a Keras .keras file ({len(infos)} archive members)", path)
    total = 0
    with open(path, "rb") as fh:
        for info in infos:
            total += _member_size(fh, info, path)
    on_disk = path.stat().st_size
    if total > MAX_ARCHIVE_BYTES or (total > INFLATION_FLOOR
                                     and total > MAX_INFLATION * on_disk):
        raise ModelError(f"archive inflates to {size_text(total)} from "
                         f"{size_text(on_disk)} on disk: refused as a decompression bomb", path)


def _member_size(fh: BinaryIO, info: zipfile.ZipInfo, path: Path) -> int:
    """The inflated size of one member, ModelError when over its ceiling or its declaration."""
    name = info.filename
    if info.flag_bits & 0x1:
        raise ModelError(f"archive member {name!r} is encrypted", path)
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelError(f"archive member {name!r} uses compression method "
                         f"{info.compress_type}; Keras writes stored or deflated members", path)
    cap = MAX_CONFIG_BYTES if name in JSON_MEMBERS else MAX_WEIGHTS_BYTES
    if info.file_size > cap:
        raise ModelError(f"archive member {name!r} inflates to {size_text(info.file_size)}, "
                         f"more than the {size_text(cap)} allowed", path)
    if info.file_size > INFLATION_FLOOR and info.file_size > MAX_INFLATION * info.compress_size:
        raise ModelError(f"archive member {name!r} inflates to {size_text(info.file_size)} from "
                         f"{size_text(info.compress_size)} stored: refused as a decompression "
                         "bomb", path)
    if info.compress_type == zipfile.ZIP_STORED:
        actual = info.compress_size  # stored bytes are read as they are: no amplification
    else:
        actual = _inflated_size(fh, info, info.file_size, path)
    if actual > info.file_size:
        raise ModelError(f"corrupt .keras archive: member {name!r} holds more than the "
                         f"{size_text(info.file_size)} it declares", path)
    return info.file_size


def _archive_config(path: Path) -> dict[str, Any]:
    """The architecture JSON inside a ``.keras`` archive; ModelError if it is not one, or if
    a member would inflate past its ceiling (checked before anything is inflated)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ModelError("not a Keras 3 .keras archive (no config.json/weights)", path)
            _check_members(zf, path)
            try:
                with zf.open("config.json") as fh:
                    raw = fh.read(MAX_CONFIG_BYTES + 1)
            except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                raise ModelError(f"corrupt .keras archive (config.json: {exc})", path) from None
    except zipfile.BadZipFile:
        raise ModelError("not a Keras .keras file (not a zip archive)", path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model file ({exc.strerror or exc})", path) from None
    config = decode_json(raw, path, ModelError, "config.json in the .keras archive")
    if not isinstance(config, dict):
        raise ModelError("not a Keras .keras file (config is not an object)", path)
    return config


def declared_input_shape(config: dict[str, Any]) -> tuple[Any, ...] | None:
    """The model input's ``(batch, h, w, c)`` as the architecture JSON declares it.

    None when it cannot tell: no single ``InputLayer`` among the top-level layers (a
    Sequential model built without one, several inputs); :func:`load_model` then checks the
    built model instead.
    """
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        return None
    shapes = []
    for layer in layers:
        if isinstance(layer, dict) and layer.get("class_name") == "InputLayer":
            cfg = layer.get("config")
            cfg = cfg if isinstance(cfg, dict) else {}
            shapes.append(cfg.get("batch_shape", cfg.get("batch_input_shape")))
    if len(shapes) != 1 or not isinstance(shapes[0], list):
        return None
    return tuple(shapes[0])


def _input_problem(in_shape: tuple[Any, ...], card: ModelCard) -> str | None:
    """Why a model input of ``in_shape`` (batch first) does not fit the card, or None."""
    size = card.input_size_px
    if in_shape == (None, size, size, card.channels):
        return None
    want = "any" if size is None else f"{size}x{size}"
    return (f"model input {_shape(in_shape)} does not match the card "
            f"({want}x{card.channels})")


def unsafe_parts(config: Any, *, resolve: bool = True) -> list[str]:
    """Everything in a model config that would run code on load (the compile config
    excluded): Lambda layers and classes outside the allow-list of standard Keras classes and
    keras-hub's registered ones. The one rule is :func:`wsi_seg.stages.model_files.unsafe_parts`
    (the same for imported Keras 2 files; ``resolve=False`` checks names without importing
    Keras); empty when the config is clean.
    """
    from wsi_seg.stages import model_files

    return model_files.unsafe_parts(config, resolve=resolve)


def check_model_matches_card(model: Any, card: ModelCard, path: str | os.PathLike[str]) -> None:
    """ModelError unless the model's input/output shapes fit the card's kind and input."""
    path = Path(path)
    try:
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError, TypeError):
        raise ModelError("model has no single input and output", path) from None
    problem = _input_problem(in_shape, card)
    if len(model.inputs) != 1:
        problem = f"model has {len(model.inputs)} inputs; wsi-seg feeds one"
    if problem:
        raise ModelError(problem, path)
    size, c = card.input_size_px, card.n_outputs
    want_out = (None, size, size, c) if card.kind == "unet" else (None, c)
    if len(model.outputs) != 1 or out_shape != want_out:
        raise ModelError(
            f"model output {_shape(out_shape)} does not fit a {card.kind!r} model "
            f"(expected {_shape(want_out)})",
            path,
        )


def _shape(shape: tuple[Any, ...]) -> str:
    """``(n, 64, 64, 3)``: the batch axis as n, undefined sizes as ?."""
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(["n", *dims[1:]] if dims else []) + ")"


def verify_model_file(path: str | os.PathLike[str]) -> ModelCard:
    """Every check of :func:`load_model` that needs no TensorFlow; returns the card.

    The file exists and is a Keras 3 archive whose members stay within their size ceilings;
    the card exists and parses; the card's sha256 matches the file; the architecture holds no
    Lambda layer or custom classes (names checked without importing Keras: :func:`load_model`
    looks them up); the input it declares matches the card. Cheap enough for
    a client to run before starting any worker (milliseconds plus hashing the file).
    """
    p = Path(path)
    if not p.exists():
        raise ModelError("no such model file", p)
    if not p.is_file():
        raise ModelError("is not a file", p)
    config = _archive_config(p)
    card = read_card(p)
    digest = sha256_file(p)
    if card.sha256 and card.sha256 != digest:
        raise ModelError(
            f"sha256 {digest[:12]}... does not match its card ({card.sha256[:12]}...): "
            "the card describes another file",
            p,
        )
    if not card.sha256:
        raise ModelError("model card has no sha256 of the weights", card_path(p))
    _refuse_unsafe(unsafe_parts(config, resolve=False), p)
    declared = declared_input_shape(config)
    problem = None if declared is None else _input_problem(declared, card)
    if problem:
        raise ModelError(problem, p)
    return card


def _refuse_unsafe(unsafe: list[str], path: Path) -> None:
    if unsafe:
        raise ModelError(
            f"refused: the model holds {', '.join(unsafe)}, which would run arbitrary code "
            "on load; rebuild it from standard Keras layers (or keras-hub's)",
            path,
        )


def load_model(path: str | os.PathLike[str]) -> tuple[Any, ModelCard]:
    """Load ``MODEL.keras`` with its card, refusing anything unsafe or inconsistent.

    Checks, in order, each failing with a one-line :class:`ModelError`: those of
    :func:`verify_model_file`; the allow-list with every class name looked up in Keras; Keras
    loads it with ``safe_mode=True, compile=False``; its input and output shapes match the
    card.
    """
    p = Path(path)
    card = verify_model_file(p)
    # The whole allow-list, with names looked up in Keras (imported here anyway).
    _refuse_unsafe(unsafe_parts(_archive_config(p)), p)
    import keras

    try:
        model = keras.saving.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Keras cannot load it safely: {first[:300]}", p) from None
    check_model_matches_card(model, card, p)
    return model, card


def model_label(path: str | os.PathLike[str] | None) -> str:
    """How records name a model: ``bundled:unet`` / ``bundled:patch`` for the bundled ones
    (not where this installation keeps them), else the path as given. Its sha256 and card
    name it exactly."""
    if path is None:
        return "bundled:unet"
    p = Path(path)
    for kind, name in BUNDLED.items():
        if p.name == name and p.resolve().parent == WEIGHTS_DIR:
            return f"bundled:{kind}"
    return str(p)


def bundled_model_path(kind: str) -> Path:
    """Path of the demo model shipped in the package: ``weights/unet_demo.keras`` or
    ``weights/patch_demo.keras``."""
    if kind not in BUNDLED:
        raise ModelError(f"no bundled model of kind {kind!r}; choose one of {KINDS}")
    path = WEIGHTS_DIR / BUNDLED[kind]
    if not path.is_file():
        raise ModelError(
            "bundled demo model is missing from the installation "
            "(reinstall wsi-seg, or rebuild it with scripts/train_demo_models.py)",
            path,
        )
    return path
