"""Bring your own model: a Keras file from elsewhere becomes ``MODEL.keras`` plus its card.

:func:`import_model` reads a Keras 3 ``.keras`` archive, a Keras 2 full-model ``.h5`` or a
Keras 2 architecture ``.json`` with its weights ``.h5``
(:func:`wsi_seg.stages.model_files.read_model`, allow-listed classes only), works out from the
graph what it can (input size and channels, dense or per-patch output, output channels, the
final activation, the downsampling of a fully convolutional model:
:func:`~wsi_seg.stages.model_files.inspect_model`), takes from the user what only the user knows
(µm per pixel, normalisation, class names and which are tumour, threshold, name, training data),
writes the archive and its card (:func:`wsi_seg.stages.card.save_model`), loads the written file
back through the very loader a run uses, and runs one forward pass of the compiled run-time
pass on a synthetic tile. Anything that could not be served is refused before anything is
written, in one line that names the file and says what to change.

:func:`describe_card` is the summary ``wsi-seg model show`` and ``import`` print: what a run
will do with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import ModelError
from wsi_seg.stages.card import (
    NORMALISATIONS,
    OUTPUTS,
    ModelCard,
    load_model,
    save_model,
)

#: Class names taken for background when ``background_classes`` is not given (case aside).
BACKGROUND_NAMES = ("background", "bg", "glass", "ignore")
#: Activations the graph may end with, and what the card calls them.
_OUTPUT_OF = {"sigmoid": "sigmoid", "softmax": "softmax", "linear": "logits"}


@dataclass(frozen=True)
class ImportSpec:
    """What only the user knows about a model (``wsi-seg model import``'s options).

    Attributes:
        mpp: resolution the model was trained at, µm per pixel.
        normalisation: one of :data:`wsi_seg.stages.card.NORMALISATIONS`; ``mean``/``std``
            with ``mean_std``.
        classes: names of the output channels in order (None: none, for one channel).
        tumour_classes: classes that are tumour (None: the names that read as tumour).
        background_classes: classes with no polygons (None: those named like background).
        class_colors: ``(r, g, b)`` per class (None: QuPath's for its names, then a palette).
        output: ``sigmoid``, ``softmax`` or ``logits`` (None: from the last layer).
        kind: ``unet`` or ``patch`` (None: from the output's shape).
        tile_px: the window of a model of undefined input size (None: 256 rounded up).
        threshold, name, trained_on: as in the card.
        precision: ``float32`` when the model must never run in reduced precision.
    """

    mpp: float
    normalisation: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    tumour_classes: tuple[str, ...] | None = None
    background_classes: tuple[str, ...] | None = None
    class_colors: tuple[tuple[int, int, int], ...] | None = None
    output: str | None = None
    kind: str | None = None
    tile_px: int | None = None
    threshold: float = 0.5
    name: str = ""
    trained_on: str = ""
    precision: str | None = None


@dataclass(frozen=True)
class Imported:
    """What :func:`import_model` wrote and saw: the card, the archive, and the forward pass's
    output on the synthetic tile (shape and the tumour probability's range)."""

    path: Path
    card: ModelCard
    source: Path
    probe_shape: tuple[int, ...]
    probe_tumour_range: tuple[float, float]


def build_card(shape: Any, spec: ImportSpec, src: Path) -> ModelCard:
    """The card of a model whose graph is ``shape`` (:class:`ModelShape`), with what the user
    said; ModelError naming ``src`` for what does not fit, saying what to change."""
    kind = "unet" if shape.spatial else "patch"
    if spec.kind is not None and spec.kind != kind:
        got = "a dense mask (n, h, w, C)" if shape.spatial else "one score per tile (n, C)"
        raise ModelError(f"--kind {spec.kind} does not fit the model: its output is {got}, "
                         f"which is a {kind!r} model; drop --kind or use --kind {kind}", src)
    output = _output(shape, spec, src)
    classes = _classes(shape, spec, src)
    tumour = (spec.tumour_classes if spec.tumour_classes is not None
              else _default_tumour(classes, src))
    background = (spec.background_classes if spec.background_classes is not None else
                  tuple(c for c in classes if c.casefold() in BACKGROUND_NAMES))
    if spec.normalisation not in NORMALISATIONS:
        raise ModelError(f"--normalisation must be one of {', '.join(NORMALISATIONS)}, not "
                         f"{spec.normalisation!r}", src)
    size = shape.input_size_px
    fields: dict[str, Any] = dict(
        kind=kind, input_size_px=size, channels=shape.channels, mpp=spec.mpp,
        normalisation=spec.normalisation, mean=spec.mean, std=spec.std,
        threshold=spec.threshold, trained_on=spec.trained_on, name=spec.name or src.stem,
        output=output, classes=classes, tumour_classes=tumour,
        background_classes=background, class_colors=spec.class_colors or (),
        size_multiple_px=shape.size_multiple_px, precision=spec.precision,
        architecture={"imported_from": src.name},
    )
    try:
        card = ModelCard(**fields).at_tile(spec.tile_px)
    except ValueError as exc:
        raise ModelError(str(exc), src) from None
    return card


def _output(shape: Any, spec: ImportSpec, src: Path) -> str:
    """The card's ``output``: what the user said, checked against the last layer."""
    seen = _OUTPUT_OF.get(shape.activation) if shape.activation else None
    if spec.output is not None:
        if spec.output not in OUTPUTS:
            raise ModelError(f"--output must be one of {', '.join(OUTPUTS)}, not "
                             f"{spec.output!r}", src)
        if seen is not None and seen != spec.output:
            raise ModelError(f"--output {spec.output} does not fit the model: its last layer "
                             f"applies {shape.activation} (so it is {seen!r}); drop --output "
                             f"or use --output {seen}", src)
        return spec.output
    if seen is None:
        raise ModelError("cannot tell from the last layer whether the output is "
                         "probabilities or logits; say --output sigmoid, softmax or logits",
                         src)
    if seen == "softmax" and shape.out_channels < 2:
        raise ModelError("the model ends in a softmax over one channel (always 1); end it "
                         "in a sigmoid, or give it one channel per class", src)
    return seen


def _classes(shape: Any, spec: ImportSpec, src: Path) -> tuple[str, ...]:
    n = shape.out_channels
    given = tuple(spec.classes or ())
    if n == 1:
        if len(given) > 1:
            raise ModelError(f"--classes names {len(given)} classes but the model has one "
                             "output channel (a tumour probability); drop --classes", src)
        return ()
    if not given:
        raise ModelError(f"the model has {n} output channels: name them in order with "
                         f"--classes (e.g. --classes {','.join(_example_names(n))})", src)
    if len(given) != n:
        raise ModelError(f"--classes names {len(given)} classes but the model has {n} output "
                         "channels; name one per channel, in order", src)
    return given


def _example_names(n: int) -> list[str]:
    names = ["Background", "Tumor", "Stroma", "Immune cells", "Necrosis", "Other"]
    return names[:n] if n <= len(names) else [*names, *(f"class{i}" for i in range(6, n))]


def _default_tumour(classes: tuple[str, ...], src: Path) -> tuple[str, ...]:
    """Classes whose names read as tumour (the truth readers' rule), else a refusal."""
    from wsi_seg.evaluation.truth import is_tumour_class

    if not classes:
        return ()
    found = tuple(c for c in classes if is_tumour_class(c))
    if not found:
        raise ModelError(f"none of the classes {', '.join(classes)} reads as tumour; say "
                         "which are with --tumour-classes", src)
    return found


def probe_tile(window_px: int) -> np.ndarray:
    """A synthetic ``(1, window, window, 3)`` uint8 tile: white glass with pink and purple
    H&E-like blobs (deterministic), to check the compiled pass end to end."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:window_px, 0:window_px]
    tile = np.full((window_px, window_px, 3), 242, np.uint8)
    for _ in range(12):
        cy, cx = rng.integers(0, window_px, 2)
        r = rng.integers(max(2, window_px // 16), max(3, window_px // 4))
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        tile[inside] = (200, 120, 170) if rng.random() < 0.5 else (110, 60, 150)
    return tile[None]


def run_probe(model: Any, card: ModelCard) -> np.ndarray:
    """The run-time compiled pass (uint8 in, the card's preprocessing, activation and tumour
    probability inside) on :func:`probe_tile`: ``(1, h, w[, maps])`` or ``(1[, maps])``."""
    from wsi_seg.stages.backends import make_engine

    engine = make_engine(model, card, batch_size=1, device="cpu")
    return np.asarray(engine.fetch(engine.launch(probe_tile(card.window_px))))


def _check_probabilities(raw: np.ndarray, card: ModelCard, src: Path) -> None:
    """A model said to emit probabilities must: within [0, 1], a softmax's summing to 1."""
    if card.output == "logits":
        return
    lo, hi = float(np.min(raw)), float(np.max(raw))
    if lo < -1e-4 or hi > 1 + 1e-4:
        raise ModelError(f"the output is said to be {card.output} probabilities but ranges "
                         f"{lo:.3g}..{hi:.3g} on a test tile; use --output logits", src)
    if card.output == "softmax":
        sums = raw.sum(axis=-1)
        if np.max(np.abs(sums - 1)) > 1e-3:
            raise ModelError("the output channels do not sum to 1 on a test tile, so they "
                             "are not a softmax; use --output sigmoid (independent classes) "
                             "or logits", src)


def import_model(src: str | Path, out: str | Path, spec: ImportSpec, *,
                 weights: str | Path | None = None) -> Imported:
    """Read ``src`` (and ``weights``), make its card, write ``out`` (``.keras``) and its card,
    verify both through the run's loader and run the compiled pass once.

    Raises:
        ModelError: one line, naming the file and what to change; nothing is written then.
    """
    from wsi_seg.stages.backends import import_tensorflow_quietly, keras_backend
    from wsi_seg.stages.model_files import inspect_model, read_model

    if keras_backend() == "tensorflow":
        import_tensorflow_quietly()
    src, out = Path(src), Path(out)
    if out.suffix != ".keras":
        raise ModelError("the imported model is written as a Keras 3 archive: name it "
                         "MODEL.keras", out)
    if out.resolve() == src.resolve():
        raise ModelError("--out would overwrite the file being imported; choose another "
                         "name", out)
    model = _single_tensor_io(read_model(src, None if weights is None else Path(weights)))
    shape = inspect_model(model, src)
    card = build_card(shape, spec, src)
    _check_probabilities(_raw_output(model, card), card, src)
    final = save_model(model, card, out)
    served, _ = load_model(out)
    probe = run_probe(served, final)
    tumour = probe[..., 0] if final.class_maps else probe
    return Imported(out, final, src, tuple(probe.shape),
                    (float(np.min(tumour)), float(np.max(tumour))))


def _single_tensor_io(model: Any) -> Any:
    """The same layers and weights, called on a tensor rather than a one-element list.

    Keras 2 files declare a model's input and output as lists of one; Keras 3 keeps that
    structure and warns ("the structure of `inputs` doesn't match") every time the model is
    traced with a plain tensor, in every worker. Rebuilt on the tensors themselves, nothing
    else changes (the layers are shared, the outputs equal).
    """
    import keras

    inputs, outputs = getattr(model, "_inputs_struct", None), getattr(model, "_outputs_struct",
                                                                       None)
    if not (isinstance(inputs, list | tuple) or isinstance(outputs, list | tuple)):
        return model
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        return model  # refused by inspect_model, with its own words
    return keras.Model(model.inputs[0], model.outputs[0], name=model.name)


def _raw_output(model: Any, card: ModelCard) -> np.ndarray:
    """The model's own output on the probe tile, preprocessed as at run time."""
    from wsi_seg.stages.models import preprocess

    x = preprocess(probe_tile(card.window_px), card)
    return np.asarray(model(x, training=False), dtype=np.float32)


# -------------------------------------------------------------------------------- summaries

def describe_card(card: ModelCard, path: Path | None = None) -> str:
    """What a run does with this model, for people: input, output, classes, outputs written."""
    size = (f"{card.input_size_px} px" if card.input_size_px is not None else
            f"any multiple of {card.size_multiple_px} px (run with {card.window_px} px; "
            "--tile changes it)")
    field_um = card.window_px * card.mpp
    norm = card.normalisation
    ms = card.input_norm.mean_std()
    if ms is not None:
        norm += f" (mean {_nums(ms[0])}, std {_nums(ms[1])} of x/255)"
    layout = ("dense mask" if card.kind == "unet"
              else f"one score per {card.window_px} px patch")
    lines = [
        f"model {card.name or '(unnamed)'}" + (f": {path}" if path else ""),
        f"  kind       {card.kind} ({layout})",
        f"  input      {size}, {card.channels} channel(s) "
        f"({'RGB' if card.channels == 3 else 'grey'}), at {card.mpp:g} µm/px "
        f"(a {field_um:g} µm window)",
        f"  normalise  {norm}",
        f"  output     {_output_text(card)}",
    ]
    if card.classes:
        lines.append("  classes    " + ", ".join(
            f"{c}{' [tumour]' if c in card.tumour_classes else ''}"
            f"{' [background]' if c in card.background_classes else ''}"
            f" #{'{:02X}{:02X}{:02X}'.format(*card.color_of(i))}"
            for i, c in enumerate(card.classes)))
    lines.append(f"  tumour     {_tumour_text(card)}, at or above {card.threshold:g}")
    written = ["mask.zarr (tumour probability)", "tumor.geojson"]
    if card.class_maps:
        written = ["mask.zarr (tumour probability; class probabilities in "
                   "mask.zarr/classes)", "tumor.geojson",
                   "classes.geojson (" + ", ".join(card.classes[i] for i in card.mapped_classes)
                   + ")"]
    lines.append("  a run writes " + ", ".join(written))
    if card.trained_on:
        lines.append(f"  trained on {card.trained_on}")
    if card.precision:
        lines.append(f"  precision  {card.precision} only")
    return "\n".join(lines)


def _nums(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _output_text(card: ModelCard) -> str:
    n = card.n_outputs
    what = f"{n} channel{'s' if n > 1 else ''}"
    if card.output == "logits":
        return f"{what} of logits; a {card.activation} is applied at run time"
    return f"{what}, {card.output} probabilities"


def _tumour_text(card: ModelCard) -> str:
    if not card.classes:
        return "the output's probability"
    names = [card.classes[i] for i in card.tumour_indices]
    if len(names) == 1:
        return f"probability of {names[0]}"
    rule = "sum" if card.exclusive else "largest"
    return f"{rule} of the probabilities of {', '.join(names)}"
