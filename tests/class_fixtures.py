"""A slide of several tissue classes with its exact truth, and hand-weighted multi-class models.

The slide is flat colours on white glass, painted from exact geometry (level-0 px) at each
pyramid level's pixel centres and stored losslessly, so every stored pixel is exactly one
class's colour. The models are genuine ``.keras`` archives of standard layers whose output is
that truth: a nearest-prototype classifier (a 1x1 convolution, or pooling plus a dense layer
for patches) whose logits are ``s * (2 c_k . x - |c_k|^2)`` for the prototype colour ``c_k``
(``x = rgb / 255``; the common ``-|x|^2`` cancels in the softmax), with ``s`` large enough
that the winning class has probability 1 to float32 precision.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import tifffile
from shapely.geometry.base import BaseGeometry

from wsi_seg.stages.card import IMAGENET_MEAN, IMAGENET_STD, ModelCard, save_model

#: Level-0 size (width, height) and resolution of the class slide.
SIZE_PX = (2048, 1536)
SLIDE_MPP = 0.5
#: The model classes, in output order (the background first), and the colours painted.
CLASSES = ("Background", "Tumor", "Stroma", "Immune cells", "Necrosis", "Other")
PAINT: dict[str, tuple[int, int, int]] = {
    "Background": (255, 255, 255),
    "Tumor": (170, 30, 70),
    "Stroma": (200, 80, 150),
    "Immune cells": (50, 60, 170),
    "Necrosis": (210, 190, 60),
    "Other": (40, 170, 90),  # a class of the model that is on no slide and in no truth
}
#: The display colours the main model's card gives its classes (not QuPath's defaults, not
#: the paint), so outputs that quote them can only have taken them from the card.
CARD_COLORS: dict[str, tuple[int, int, int]] = {
    "Background": (255, 255, 255), "Tumor": (220, 20, 60), "Stroma": (100, 200, 100),
    "Immune cells": (30, 60, 200), "Necrosis": (90, 90, 90), "Other": (250, 200, 0),
}
#: How the truth file names a model class when it does not use the model's name.
TRUTH_NAMES = {"Necrosis": "Necrotic debris"}
#: QuPath-style colours of the truth file's classes.
TRUTH_COLORS = {"Tumor": [200, 0, 0], "Stroma": [150, 200, 150],
                "Immune cells": [160, 90, 160], "Necrotic debris": [50, 50, 50]}


@dataclass(frozen=True)
class ClassSlide:
    """A written class slide.

    Attributes:
        slide: the pyramidal generic TIFF (levels 1 and 2, lossless, 0.5 µm/px).
        truth: QuPath GeoJSON of every drawn class (Necrosis drawn as ``Necrotic debris``).
        classes: model class names in output order, the background first.
        paint: RGB painted per class (the background is the glass).
        geometry: exact area of each painted class, level-0 px (later shapes cut earlier ones);
            empty for the background and for classes not painted.
        truth_names: model class -> its name in the truth file.
    """

    slide: Path
    truth: Path
    classes: tuple[str, ...]
    paint: dict[str, tuple[int, int, int]]
    geometry: dict[str, BaseGeometry]
    truth_names: dict[str, str]

    @property
    def size_px(self) -> tuple[int, int]:
        return SIZE_PX

    def area_mm2(self, name: str) -> float:
        return float(self.geometry[name].area) * SLIDE_MPP**2 / 1e6

    def raster(self, name: str, px_x0: float = 2.0) -> np.ndarray:
        """Class ``name`` at pixel centres of a grid of ``px_x0`` level-0 px per pixel (bool),
        exactly as painted on the pyramid level of that downsample."""
        w, h = (int(s // px_x0) for s in SIZE_PX)
        return _inside(self.geometry[name], w, h, px_x0)


def _disc(cx: float, cy: float, r: float) -> BaseGeometry:
    return shapely.Point(cx, cy).buffer(r, quad_segs=64)


def _layout() -> list[tuple[str, BaseGeometry]]:
    """What is painted, in order (level-0 px). Working pixels (1 µm/px) are 2 level-0 px, so
    blocks of 512 and chunks of 256 working px have borders at level-0 multiples of 512."""
    stroma_bed = shapely.box(100, 860, 760, 1420)
    return [
        # A tumour rectangle, and a tumour ring whose hole holds a necrosis disc (white between).
        ("Tumor", shapely.box(120, 110, 740, 620)),
        ("Tumor", _disc(1560, 440, 340).difference(_disc(1560, 440, 200))),
        ("Necrosis", _disc(1560, 440, 130)),
        # Stroma as a cross over the point where blocks and chunks meet (level-0 1024, 1024).
        ("Stroma", shapely.union_all([shapely.box(780, 900, 1290, 1150),
                                      shapely.box(900, 760, 1170, 1320)])),
        # A stroma bed with immune infiltrates (discs) in it: stroma with holes.
        ("Stroma", stroma_bed),
        ("Immune cells", _disc(260, 1010, 75)),
        ("Immune cells", _disc(480, 1060, 90)),
        ("Immune cells", _disc(300, 1270, 80)),
        ("Immune cells", _disc(590, 1280, 70)),
        # Necrosis with slanted edges, across the chunk border at level-0 x = 1536.
        ("Necrosis", shapely.Polygon([(1400, 1420), (1960, 1460), (1700, 900)])),
    ]


def _class_geometry(layout: Sequence[tuple[str, BaseGeometry]]) -> dict[str, BaseGeometry]:
    """Each class's exact area: its shapes less every shape painted after them."""
    parts: dict[str, list[BaseGeometry]] = {c: [] for c in CLASSES}
    for i, (name, geom) in enumerate(layout):
        later = [g for _, g in layout[i + 1 :]]
        parts[name].append(geom.difference(shapely.union_all(later)) if later else geom)
    return {c: shapely.union_all(p) if p else shapely.MultiPolygon() for c, p in parts.items()}


def _inside(geom: BaseGeometry, w: int, h: int, px_x0: float) -> np.ndarray:
    """Which pixel centres of a ``w x h`` grid (``px_x0`` level-0 px per pixel) lie in
    ``geom``, tested only inside its bounding box."""
    out = np.zeros((h, w), bool)
    if geom.is_empty:
        return out
    shapely.prepare(geom)
    minx, miny, maxx, maxy = geom.bounds
    c0, c1 = max(0, int(minx // px_x0) - 1), min(w, int(maxx // px_x0) + 2)
    r0, r1 = max(0, int(miny // px_x0) - 1), min(h, int(maxy // px_x0) + 2)
    xs = (np.arange(c0, c1) + 0.5) * px_x0
    ys = (np.arange(r0, r1) + 0.5) * px_x0
    gx, gy = np.meshgrid(xs, ys)
    out[r0:r1, c0:c1] = shapely.contains_xy(geom, gx, gy)
    return out


def _paint(layout: Sequence[tuple[str, BaseGeometry]], px_x0: int,
           paint: Mapping[str, tuple[int, int, int]]) -> np.ndarray:
    w, h = SIZE_PX[0] // px_x0, SIZE_PX[1] // px_x0
    image = np.full((h, w, 3), 255, np.uint8)
    for name, geom in layout:
        image[_inside(geom, w, h, px_x0)] = paint[name]
    return image


def _feature(name: str, color: Sequence[int], geom: BaseGeometry, index: int
             ) -> dict[str, Any]:
    """A Feature as QuPath writes one: a UUID, an annotation with a classification that has
    a name and an ``[r, g, b]`` colour, coordinates on the 0.01 px grid."""
    snapped = shapely.set_precision(geom, 0.01)
    digest = hashlib.sha256(f"{name}#{index}".encode()).digest()[:16]
    return {"type": "Feature", "id": str(uuid.UUID(bytes=digest, version=4)),
            "geometry": shapely.geometry.mapping(snapped),
            "properties": {"objectType": "annotation",
                           "classification": {"name": name, "color": list(color)},
                           "isLocked": False}}


def write_class_truth(path: Path, geometry: Mapping[str, BaseGeometry],
                      drop: Sequence[str] = ()) -> Path:
    """The truth of ``geometry`` as a QuPath FeatureCollection: one Feature per polygon of
    each class (Necrosis under its truth name), classes in ``drop`` left undrawn."""
    features = []
    for name, geom in geometry.items():
        if name in drop or geom.is_empty:
            continue
        truth_name = TRUTH_NAMES.get(name, name)
        for part in shapely.get_parts(geom):
            features.append(_feature(truth_name, TRUTH_COLORS[truth_name], part,
                                     len(features)))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1))
    return path


def class_slide(dir: Path, name: str = "classes.tif",
                paint: Mapping[str, tuple[int, int, int]] | None = None) -> ClassSlide:
    """Write the class slide (a generic tiled TIFF that OpenSlide opens: level 0 with
    ``subfiletype`` 0, a 2x level with ``subfiletype`` 1, resolution tags in cm, deflate tiles)
    and its truth ``<stem>.truth.geojson`` into ``dir``; ``paint`` replaces colours of
    :data:`PAINT`."""
    dir.mkdir(parents=True, exist_ok=True)
    colours = {**PAINT, **(paint or {})}
    layout = _layout()
    path = dir / name
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, d in enumerate((1, 2)):
            tif.write(_paint(layout, d, colours), tile=(256, 256), photometric="rgb",
                      compression="zlib", subfiletype=0 if i == 0 else 1, metadata=None,
                      resolution=(1e4 / (SLIDE_MPP * d), 1e4 / (SLIDE_MPP * d)),
                      resolutionunit="CENTIMETER")
    geometry = _class_geometry(layout)
    truth = write_class_truth(dir / f"{path.stem}.truth.geojson", geometry)
    return ClassSlide(path, truth, CLASSES, colours, geometry, dict(TRUTH_NAMES))


# -- models ----------------------------------------------------------------------------------
def prototype_weights(prototypes_rgb: Sequence[Sequence[int]], normalisation: str = "divide_255",
                      mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                      margin: float = 40.0) -> tuple[np.ndarray, np.ndarray]:
    """Kernel ``(3, K)`` and bias ``(K,)`` of the logits ``s (2 c_k . x - |c_k|^2)`` in terms of
    the model's *normalised* input ``x'`` (``x = x' * std + mean``); ``s`` puts ``margin``
    logits between a prototype and its nearest rival."""
    c = np.asarray(prototypes_rgb, np.float64) / 255.0  # (K, 3)
    d2 = ((c[:, None] - c[None]) ** 2).sum(-1) + np.eye(len(c)) * 1e9
    s = margin / d2.min()
    if normalisation == "divide_255":
        m, sd = np.zeros(3), np.ones(3)
    elif normalisation == "minus1_1":
        m, sd = np.full(3, 0.5), np.full(3, 0.5)
    elif normalisation == "imagenet":
        m, sd = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
    else:
        assert mean is not None and std is not None
        m, sd = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    kernel = (2 * s * c * sd).T  # (3, K)
    bias = s * (2 * c @ m - (c**2).sum(-1))
    return kernel.astype(np.float32), bias.astype(np.float32)


def _card(path: Path, kind: str, roi: int | None, mpp: float, output: str,
          class_names: Sequence[str], card_fields: dict[str, Any]) -> ModelCard:
    fields: dict[str, Any] = {
        "tumour_classes": ("Tumor",), "background_classes": ("Background",),
        "name": path.stem, "trained_on": "hand-set prototype weights (test fixture)",
        **card_fields}
    return ModelCard(kind=kind, input_size_px=roi, channels=3, mpp=mpp, output=output,
                     classes=tuple(class_names), **fields)


def _merge_kernel(class_of: Sequence[int], n_classes: int, gain: float = 20.0) -> np.ndarray:
    """``(K, C)``: the probability of prototype ``k`` becomes ``gain`` logits of class
    ``class_of[k]``, so a softmax over them gives that class probability 1 - 2e-9."""
    kernel = np.zeros((len(class_of), n_classes), np.float32)
    kernel[np.arange(len(class_of)), np.asarray(class_of)] = gain
    return kernel


def prototype_softmax_unet(path: Path, prototypes_rgb: Sequence[Sequence[int]],
                           class_names: Sequence[str], roi: int | None = 64, mpp: float = 1.0,
                           output: str = "softmax", class_of: Sequence[int] | None = None,
                           **card_fields: Any) -> Path:
    """A per-pixel nearest-prototype UNet: a 1x1 ``Conv2D`` of the prototype logits, with a
    softmax (``output="softmax"``) or left linear (``"logits"``: the card says so and the
    compiled pass applies the softmax). ``roi=None`` makes it fully convolutional (card
    ``input_size_px`` null). With ``class_of`` (the output class of each prototype) the
    prototypes' softmax feeds a second 1x1 ``Conv2D`` that merges them into the classes
    (e.g. a 2-class model that still tells stroma from tumour by colour). ``card_fields`` go
    to the card (normalisation, colours, ...); the weights follow its normalisation."""
    import keras

    card = _card(path, "unet", roi, mpp, output, class_names, card_fields)
    kernel, bias = prototype_weights(prototypes_rgb, card.normalisation, card.mean, card.std)
    last = "softmax" if output == "softmax" else "linear"
    inp = keras.Input((roi, roi, 3))
    x = keras.layers.Conv2D(len(prototypes_rgb), 1,
                            activation=last if class_of is None else "softmax",
                            kernel_initializer=keras.initializers.Constant(kernel[None, None]),
                            bias_initializer=keras.initializers.Constant(bias),
                            dtype="float32")(inp)
    if class_of is not None:
        merge = _merge_kernel(class_of, len(class_names))
        x = keras.layers.Conv2D(len(class_names), 1, activation=last,
                                kernel_initializer=keras.initializers.Constant(merge[None, None]),
                                bias_initializer="zeros", dtype="float32")(x)
    save_model(keras.Model(inp, x), card, path)
    return path


def prototype_softmax_patch(path: Path, prototypes_rgb: Sequence[Sequence[int]],
                            class_names: Sequence[str], roi: int = 50, mpp: float = 2.0,
                            output: str = "softmax", class_of: Sequence[int] | None = None,
                            **card_fields: Any) -> Path:
    """A patch classifier by the same rule on the patch's mean colour:
    ``GlobalAveragePooling2D`` then a ``Dense`` of the prototype logits (softmax, or linear
    with ``output="logits"``; ``class_of`` merges prototypes into classes as for the UNet)."""
    import keras

    card = _card(path, "patch", roi, mpp, output, class_names, card_fields)
    kernel, bias = prototype_weights(prototypes_rgb, card.normalisation, card.mean, card.std)
    last = "softmax" if output == "softmax" else "linear"
    inp = keras.Input((roi, roi, 3))
    x = keras.layers.GlobalAveragePooling2D()(inp)
    x = keras.layers.Dense(len(prototypes_rgb), activation=last if class_of is None else "softmax",
                           kernel_initializer=keras.initializers.Constant(kernel),
                           bias_initializer=keras.initializers.Constant(bias),
                           dtype="float32")(x)
    if class_of is not None:
        x = keras.layers.Dense(len(class_names), activation=last,
                               kernel_initializer=keras.initializers.Constant(
                                   _merge_kernel(class_of, len(class_names))),
                               bias_initializer="zeros", dtype="float32")(x)
    save_model(keras.Model(inp, x), card, path)
    return path
