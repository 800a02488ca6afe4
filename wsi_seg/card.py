"""Model cards: the JSON beside every ``.keras`` file, and safe loading.

A model is two files side by side::

    MODEL.keras   Keras 3 archive (architecture + weights, no custom code)
    MODEL.json    the card: kind, input size/channels, µm per pixel, normalisation, threshold,
                  training data, validation scores, versions and the archive's sha256

:func:`load_model` refuses anything it cannot vouch for, each with one line naming the file:
a file that is not a Keras archive, a missing or malformed card, a card that does not match the
archive (hash, kind, input shape, channels) and an archive holding a ``Lambda`` layer or custom
classes (arbitrary code on load). Keras' own ``safe_mode`` is the second gate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import zipfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_seg import __version__
from wsi_seg.errors import ModelError

CARD_FORMAT = "wsi-seg-model-card/1"
KINDS = ("unet", "patch")
NORMALISATIONS = ("divide_255", "minus1_1")
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
BUNDLED = {"unet": "unet_demo.keras", "patch": "patch_demo.keras"}


@dataclass(frozen=True)
class ModelCard:
    """What a model is and how to feed it.

    Attributes:
        kind: ``"unet"`` (dense probability, output ``(n, h, w, 1)``) or ``"patch"`` (one
            probability per patch, output ``(n, 1)``).
        input_size_px: side of the square input tile, pixels.
        channels: 1 (greyscale, converted from RGB by :func:`wsi_seg.models.preprocess`) or 3.
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
    tmp_model = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    tmp_card = path.with_name(f".{path.stem}.{os.getpid()}.tmp.json")
    try:
        model.save(tmp_model)
        final = dataclasses.replace(
            card,
            sha256=sha256_file(tmp_model),
            versions=library_versions(),
            created=datetime.now(UTC).replace(microsecond=0).isoformat(),
        )
        tmp_card.write_text(final.to_json(), encoding="utf-8")
        os.replace(tmp_model, path)
        os.replace(tmp_card, card_path(path))
    finally:
        for tmp in (tmp_model, tmp_card):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return final


def read_card(path: str | os.PathLike[str]) -> ModelCard:
    """Read the card of ``MODEL.keras`` (``MODEL.json``); ModelError if absent or malformed."""
    path = Path(path)
    cpath = card_path(path)
    if not cpath.is_file():
        raise ModelError(f"model card {cpath.name} not found beside the model", path)
    try:
        return ModelCard.from_json(cpath.read_text(encoding="utf-8"))
    except (ValueError, TypeError) as exc:
        raise ModelError(f"bad model card: {exc}", cpath) from None
    except OSError as exc:
        raise ModelError(f"cannot read model card ({exc.strerror})", cpath) from None


def _archive_config(path: Path) -> dict[str, Any]:
    """The architecture JSON inside a ``.keras`` archive; ModelError if it is not one."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ModelError("not a Keras 3 .keras archive (no config.json/weights)", path)
            config = json.loads(zf.read("config.json"))
    except zipfile.BadZipFile:
        raise ModelError("not a Keras .keras file (not a zip archive)", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError("not a Keras .keras file (unreadable config.json)", path) from None
    if not isinstance(config, dict):
        raise ModelError("not a Keras .keras file (config is not an object)", path)
    return config


def unsafe_parts(config: Any) -> list[str]:
    """Lambda layers and non-Keras classes in a model config (the compile config excluded).

    Such objects run arbitrary Python on load; a model file that needs them is refused
    rather than trusted. Returns human-readable descriptions, empty when the config is clean.
    """
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            cls = node.get("class_name")
            module = node.get("module")
            if cls == "Lambda":
                found.append("a Lambda layer")
            elif isinstance(module, str) and cls is not None and not (
                module == "keras" or module.startswith("keras.")
            ):
                found.append(f"custom class {cls!r} from module {module!r}")
            for key, value in node.items():
                if key != "compile_config":
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return sorted(set(found))


def check_model_matches_card(model: Any, card: ModelCard, path: str | os.PathLike[str]) -> None:
    """ModelError unless the model's input/output shapes fit the card's kind and input."""
    path = Path(path)
    try:
        in_shape = tuple(model.inputs[0].shape)
        out_shape = tuple(model.outputs[0].shape)
    except (AttributeError, IndexError, TypeError):
        raise ModelError("model has no single input and output", path) from None
    want_in = (None, card.input_size_px, card.input_size_px, card.channels)
    if len(model.inputs) != 1 or in_shape != want_in:
        raise ModelError(
            f"model input {_shape(in_shape)} does not match the card "
            f"({card.input_size_px}x{card.input_size_px}x{card.channels})",
            path,
        )
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

    The file exists and is a Keras 3 archive; the card exists and parses; the card's sha256
    matches the file; the architecture holds no Lambda layer or custom classes. Cheap enough
    for a client to run before starting any worker.
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
