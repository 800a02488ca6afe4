"""Model cards: the JSON beside every ``.keras`` file, and safe loading.

A model is two files side by side::

    MODEL.keras   Keras 3 archive (architecture + weights, no custom code)
    MODEL.json    the card: kind, input size/channels, µm per pixel, normalisation, threshold,
                  training data, validation scores, versions and the archive's sha256

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
KINDS = ("unet", "patch")
NORMALISATIONS = ("divide_255", "minus1_1")
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
class ModelCard:
    """What a model is and how to feed it.

    Attributes:
        kind: ``"unet"`` (dense probability, output ``(n, h, w, 1)``) or ``"patch"`` (one
            probability per patch, output ``(n, 1)``).
        input_size_px: side of the square input tile, pixels.
        channels: 1 (greyscale, converted from RGB by :func:`wsi_seg.stages.models.preprocess`) or
        3.
        mpp: resolution the model was trained at, micrometres per pixel.
        normalisation: input scaling applied after greyscale conversion: ``"divide_255"``
            (to [0, 1]) or ``"minus1_1"`` (to [-1, 1]).
        threshold: probability at or above which a pixel/patch counts as tumour.
        trained_on: free text saying exactly which data trained the model.
        validation: held-out scores, metric name -> value (e.g. ``{"dice": 0.87}``).
        versions: ``{"wsi_seg": ..., "tensorflow": ..., "keras": ...}`` at save time.
        sha256: hex digest of the ``.keras`` file the card describes.
        architecture: builder name and arguments (for humans and for retraining).
        training: hyper-parameters, epochs run, seconds per epoch, ...
        created: UTC time the card was written, ISO 8601.
        name: short model name.
        extra: keys from newer card versions, kept on round trip.
    """

    kind: str
    input_size_px: int
    channels: int
    mpp: float
    normalisation: str = "divide_255"
    threshold: float = 0.5
    trained_on: str = ""
    validation: dict[str, float] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    sha256: str = ""
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = card_problems(self)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(h, w, c)`` of one model input."""
        return (self.input_size_px, self.input_size_px, self.channels)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        extra = d.pop("extra")
        return _finite({"format": CARD_FORMAT, **d, **extra})

    def to_json(self) -> str:
        """Strict JSON (undefined scores such as an empty-vs-empty IoU become ``null``)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=False, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """Build a card from parsed JSON; unknown keys go to ``extra``. Raises ValueError."""
        if not isinstance(d, dict):
            raise ValueError("card is not a JSON object")
        d = dict(d)
        d.pop("format", None)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("kind", "input_size_px", "channels", "mpp") if k not in d]
        if missing:
            raise ValueError(f"card lacks {', '.join(missing)}")
        known = {k: v for k, v in d.items() if k in names}
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
    if not isinstance(card.input_size_px, int) or card.input_size_px < 8:
        p.append(f"input_size_px must be an integer >= 8, not {card.input_size_px!r}")
    if card.channels not in (1, 3):
        p.append(f"channels must be 1 or 3, not {card.channels!r}")
    if not isinstance(card.mpp, int | float) or not 0.01 <= float(card.mpp) <= 100:
        p.append(f"mpp must be a resolution in µm/px (0.01-100), not {card.mpp!r}")
    if card.normalisation not in NORMALISATIONS:
        p.append(f"normalisation must be one of {NORMALISATIONS}, not {card.normalisation!r}")
    if not isinstance(card.threshold, int | float) or not 0.0 < float(card.threshold) < 1.0:
        p.append(f"threshold must lie in (0, 1), not {card.threshold!r}")
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
    if in_shape == (None, card.input_size_px, card.input_size_px, card.channels):
        return None
    return (f"model input {_shape(in_shape)} does not match the card "
            f"({card.input_size_px}x{card.input_size_px}x{card.channels})")


def unsafe_parts(config: Any) -> list[str]:
    """Lambda layers and non-Keras classes in a model config (the compile config excluded).

    Such objects run arbitrary Python on load; a model file that needs them is refused
    rather than trusted. Returns human-readable descriptions, empty when the config is clean.
    """
    found: list[str] = []
    # A stack, not recursion: a config nested almost as deep as json.loads allows would
    # overflow a recursive walk.
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            cls = node.get("class_name")
            module = node.get("module")
            if cls == "Lambda":
                found.append("a Lambda layer")
            elif isinstance(module, str) and cls is not None and not (
                module == "keras" or module.startswith("keras.")
            ):
                found.append(f"custom class {cls!r} from module {module!r}")
            stack.extend(v for k, v in node.items() if k != "compile_config")
        elif isinstance(node, list):
            stack.extend(node)
    return sorted(set(found))


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
    want_out = (
        (None, card.input_size_px, card.input_size_px, 1) if card.kind == "unet" else (None, 1)
    )
    if len(model.outputs) != 1 or out_shape != want_out:
        raise ModelError(
            f"model output {_shape(out_shape)} does not fit a {card.kind!r} model "
            f"(expected {_shape(want_out)})",
            path,
        )


def _shape(shape: tuple[Any, ...]) -> str:
    return "(" + ", ".join("n" if s is None else str(s) for s in shape) + ")"


def verify_model_file(path: str | os.PathLike[str]) -> ModelCard:
    """Every check of :func:`load_model` that needs no TensorFlow; returns the card.

    The file exists and is a Keras 3 archive whose members stay within their size ceilings;
    the card exists and parses; the card's sha256 matches the file; the architecture holds no
    Lambda layer or custom classes; the input it declares matches the card. Cheap enough for
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
    unsafe = unsafe_parts(config)
    if unsafe:
        raise ModelError(
            f"refused: the model holds {', '.join(unsafe)}, which would run arbitrary code "
            "on load; rebuild it from standard Keras layers",
            p,
        )
    declared = declared_input_shape(config)
    problem = None if declared is None else _input_problem(declared, card)
    if problem:
        raise ModelError(problem, p)
    return card


def load_model(path: str | os.PathLike[str]) -> tuple[Any, ModelCard]:
    """Load ``MODEL.keras`` with its card, refusing anything unsafe or inconsistent.

    Checks, in order, each failing with a one-line :class:`ModelError`: those of
    :func:`verify_model_file`; Keras loads it with ``safe_mode=True, compile=False``; its input
    and output shapes match the card.
    """
    p = Path(path)
    card = verify_model_file(p)
    import keras

    try:
        model = keras.saving.load_model(p, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError/TypeError/OSError variants
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"Keras cannot load it safely: {first[:300]}", p) from None
    check_model_matches_card(model, card, p)
    return model, card


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
