"""Ground truth -> shapely geometry in level-0 slide pixels.

Readers (picked by content, not only by suffix):

* **GeoJSON** as QuPath 0.2 to 0.8 writes it: a FeatureCollection, a single Feature, a JSON list
  of Features or a bare geometry; ``.geojson``/``.json``, optionally gzip (``.gz``). The class is
  ``properties.classification`` (a string, or an object with ``name``/``names``; ``color`` or the
  old signed-ARGB ``colorRGB`` are both fine, colour is not used).
* **ASAP XML** (CAMELYON): ``<ASAP_Annotations>``; the class is the annotation's
  ``PartOfGroup`` (else its ``Name``). CAMELYON16 group ``_2`` marks non-tumour areas inside
  tumour and is subtracted.
* **Aperio ImageScope XML**: ``<Annotations>``; the class is the annotation's ``Name`` and its
  ``<Attribute Name=...>`` labels (ImageScope's default "Description" label excluded); regions
  with ``NegativeROA="1"`` are subtracted from their annotation.
* **Masks**: a PNG/TIFF image or a Zarr array (or a group holding array ``0``), nonzero =
  tumour, read with its resolution given (``mask_mpp`` and the slide's ``slide_mpp``, or
  ``mask_px_x0`` level-0 pixels per mask pixel); traced with :mod:`wsi_seg.stages.vectorize`.

Which classes count as tumour (``classes``):

* ``None`` (default): a class name counts when one of its words starts with ``tumor``,
  ``tumour``, ``carcinom``, ``cancer``, ``metasta``, ``malignan`` or ``neoplas``, or is ``cap``
  (prostate adenocarcinoma), ``idc``, ``dcis`` or CAMELYON16's ``_0``/``_1`` groups, unless
  a word negates it (``non``, ``not``, ``no``, ``normal``, ``benign``, ``healthy``);
  case-insensitive. Unclassified annotations do not count.
* a list of names: exactly those names (case-insensitive).
* ``ALL_CLASSES`` (``("*",)``): every area annotation, classified or not.

Only areas count (Polygon, MultiPolygon, ImageScope rectangles/ellipses/freehand); points and
lines are ignored. Invalid polygons are repaired with ``shapely.make_valid``.

A file that holds no annotation at all (an empty FeatureCollection or list, an XML file with no
``<Annotation>``) is a valid truth: "no tumour", so a blank slide scores empty-vs-empty. A file
that holds annotations but none of a tumour class is refused instead: its classes are more
likely named differently than meant (the message lists them).

Any parse failure raises :class:`AnnotationError` (one line that names the file and the
cause): malformed or truncated files, NaN or infinite coordinates, JSON nested too deeply, and
files larger than :data:`MAX_TRUTH_BYTES` (a ``.gz`` by what it inflates to, so a
decompression bomb is refused without being inflated in memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import GeometryCollection, MultiPolygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import check_regular
from wsi_seg.core.naming import class_map_entry
from wsi_seg.evaluation.truth import (
    ALL_CLASSES,
    CAMELYON_EXCLUSION_GROUP,
    MAX_TRUTH_BYTES,
    NEGATING_WORDS,
    TUMOUR_STEMS,
    TUMOUR_WORDS,
    UNION_MAX_PARTS,
    Annotation,
    Truth,
    is_tumour_class,
    no_tumour_error,
    polygons_of,
)
from wsi_seg.evaluation.truth_geojson import parse_geojson
from wsi_seg.evaluation.truth_mask import (
    MASK_SUFFIXES,
    MAX_MASK_PIXELS,
    read_mask_truth,
)
from wsi_seg.evaluation.truth_xml import parse_xml

# Names users import from here; the formats live in truth_geojson, truth_xml and truth_mask,
# the shared type and class rules in truth.
__all__ = [
    "ALL_CLASSES", "CAMELYON_EXCLUSION_GROUP", "MASK_SUFFIXES", "MAX_MASK_PIXELS",
    "MAX_TRUTH_BYTES", "NEGATING_WORDS", "TUMOUR_STEMS", "TUMOUR_WORDS", "Truth",
    "check_truth_fits", "is_tumour_class", "parse_class_map", "polygons_of",
    "read_class_truths", "read_mask_truth", "read_prediction_geojson", "read_truth",
]


def _parse(path: Path) -> list[Annotation]:
    if not path.exists():
        raise AnnotationError("no such file", path)
    head = b""
    if not path.is_dir():
        check_regular(path, AnnotationError, "annotation file")
        with open(path, "rb") as fh:
            head = fh.read(512).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows tools)
    if head[:2] == b"\x1f\x8b" or head.lstrip()[:1] in (b"{", b"["):
        return parse_geojson(path)
    if head.lstrip()[:1] == b"<":
        return parse_xml(path)
    if not head.strip():
        raise AnnotationError("empty file", path)
    raise AnnotationError("not a GeoJSON or XML annotation file", path)


def read_truth(path: str | Path, classes: Sequence[str] | None = None, *,
               mask_mpp: float | None = None, slide_mpp: float | None = None,
               mask_px_x0: float | None = None) -> Truth:
    """Read ground truth (GeoJSON, ASAP XML, ImageScope XML or a mask) in level-0 pixels.

    Args:
        path: the annotation file (or mask image / Zarr folder).
        classes: which classes count as tumour (module doc); None = the default name rules.
        mask_mpp, slide_mpp, mask_px_x0: a mask's resolution (only for masks).

    Returns:
        The truth; its geometry is empty when the file holds no annotation at all (an empty
        FeatureCollection: "no tumour").

    Raises:
        AnnotationError: unreadable, malformed, truncated or oversized file, NaN or infinite
            coordinates, or annotations none of which is a tumour-class area (the message
            lists the classes found).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.casefold() in MASK_SUFFIXES:
        return read_mask_truth(path, mask_px_x0=mask_px_x0, mask_mpp=mask_mpp,
                               slide_mpp=slide_mpp)
    annotations = _parse(path)
    if not annotations:
        return Truth(path, (), MultiPolygon(), (), ())
    all_classes = sorted({a.class_name for a in annotations})
    kept = [a for a in annotations
            if is_tumour_class(a.class_name, classes) and a.class_name != CAMELYON_EXCLUSION_GROUP]
    polys = tuple(p for a in kept for p in a.polygons)
    if not polys:
        raise no_tumour_error(path, classes, all_classes)
    negatives = [p for a in annotations for p in a.negative
                 if a in kept or a.class_name == CAMELYON_EXCLUSION_GROUP]
    if len(polys) > UNION_MAX_PARTS and not negatives:
        # A coverage: the union of a million drawn cells took GEOS minutes; every consumer
        # rasterises with the nonzero rule (metrics.rasterize_window), which is the union.
        geom: BaseGeometry = GeometryCollection(list(polys))
    else:
        geom = shapely.union_all(polys)
    if negatives:
        geom = geom.difference(shapely.union_all(negatives))
    return Truth(path, polys, geom, tuple(sorted({a.class_name for a in kept})),
                 tuple(all_classes))


def parse_class_map(pairs: Sequence[str]) -> dict[str, str]:
    """``["Tumour epithelium=Tumor", ...]`` as a map from truth class names to model class
    names (matched without case); ValueError naming the bad entry."""
    out: dict[str, str] = {}
    for pair in pairs:
        truth_name, model_name = class_map_entry(pair)
        out[truth_name.casefold()] = model_name
    return out


def read_class_truths(path: str | Path, model_classes: Sequence[str],
                      class_map: Mapping[str, str] | None = None) -> dict[str, BaseGeometry]:
    """Ground truth per model class (level-0 px), for per-class scores.

    An annotation counts for the model class its class name equals (without case), after
    ``class_map`` (truth name, case-folded -> model class name: :func:`parse_class_map`)
    renamed it; QuPath derived classes (``"Tumor: Positive"``) count for their first name.
    Areas to subtract (ImageScope's negative regions) are subtracted from their own class.
    A model class nothing was drawn of gets an empty geometry; a run does not score such a
    class (undrawn is not "absent": the annotator may not have drawn that class at all).

    Raises:
        AnnotationError: unreadable file (as :func:`read_truth`), a mask (it has no
            classes), or annotations none of which names a model class (the message lists
            the classes found and how to map them).
    """
    path = Path(path)
    if path.is_dir() or path.suffix.casefold() in MASK_SUFFIXES:
        raise AnnotationError("a mask holds no class names: per-class scores need GeoJSON "
                              "or XML truth", path)
    annotations = _parse(path)
    by_fold = {c.casefold(): c for c in model_classes}
    mapping = {k.casefold(): v for k, v in (class_map or {}).items()}
    polys: dict[str, list[Any]] = {c: [] for c in model_classes}
    negatives: dict[str, list[Any]] = {c: [] for c in model_classes}
    for a in annotations:
        name = mapping.get(a.class_name.casefold(), a.class_name)
        target = by_fold.get(name.casefold()) or by_fold.get(name.split(":")[0].strip()
                                                             .casefold())
        if target is not None:
            polys[target] += a.polygons
            negatives[target] += a.negative
    if annotations and not any(polys.values()):
        found = ", ".join(sorted({repr(a.class_name) if a.class_name else "unclassified"
                                  for a in annotations}))
        raise AnnotationError(f"no annotation of the model's classes ({', '.join(model_classes)}"
                              f"); classes found: {found}; map them with --class-map "
                              "TRUTH_CLASS=MODEL_CLASS", path)
    out: dict[str, BaseGeometry] = {}
    for c in model_classes:
        geom = shapely.union_all(polys[c]) if polys[c] else MultiPolygon()
        if negatives[c]:
            geom = geom.difference(shapely.union_all(negatives[c]))
        out[c] = geom
    return out


def read_prediction_geojson(path: str | Path) -> BaseGeometry:
    """Predicted tumour of a ``tumor.geojson`` (every area Feature, whatever its class) as one
    (Multi)Polygon in level-0 px; an empty FeatureCollection is an empty prediction.

    Raises:
        AnnotationError: unreadable, malformed, truncated or oversized file, or NaN or infinite
            coordinates.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError("no such file", path)
    polys = [p for a in parse_geojson(path) for p in a.polygons]
    return shapely.union_all(polys) if polys else MultiPolygon()


def check_truth_fits(truth: Truth, slide_size_x0: tuple[int, int], *,
                     margin: float = 0.02) -> Truth:
    """Check that ground truth belongs to a slide of level-0 size ``(width, height)``.

    Annotators often draw a little past the image edge, so up to ``margin`` (fraction of the
    slide's width/height) outside is accepted and clipped away; further outside means the
    coordinates are wrong or the truth belongs to another slide.

    Returns:
        ``truth`` with its geometry clipped to the slide.

    Raises:
        AnnotationError: the truth extends beyond the slide (plus margin).
    """
    width, height = slide_size_x0
    if truth.geometry.is_empty:
        return truth
    minx, miny, maxx, maxy = truth.geometry.bounds
    mx, my = margin * width, margin * height
    if minx < -mx or miny < -my or maxx > width + mx or maxy > height + my:
        raise AnnotationError(
            f"annotation extends to x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f} but the "
            f"slide is {width} x {height} px at level 0: coordinates outside the slide, or "
            "truth for another slide", truth.path)
    clipped = shapely.clip_by_rect(truth.geometry, 0, 0, width, height)
    return Truth(truth.path, truth.polygons, clipped, truth.classes, truth.all_classes)
