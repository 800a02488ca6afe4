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

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, shape
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import MiB, decode_json, gunzip_capped, read_capped, size_text

ALL_CLASSES: tuple[str, ...] = ("*",)
TUMOUR_STEMS = ("tumor", "tumour", "carcinom", "cancer", "metasta", "malignan", "neoplas")
TUMOUR_WORDS = frozenset({"cap", "idc", "dcis", "_0", "_1"})
NEGATING_WORDS = frozenset({"non", "not", "no", "normal", "benign", "healthy"})
CAMELYON_EXCLUSION_GROUP = "_2"
MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"})
# The most annotation text read (a .gz: inflated). Real whole-slide annotations are a few MB
# (CAMELYON16's largest XML is about 2 MB); parsed, JSON takes ~10x its text in memory.
MAX_TRUTH_BYTES = 256 * MiB
# A mask image is decoded whole (a 1 MB PNG may decode to gigabytes): 268 Mpx (16384² px,
# 256 MiB as 8-bit grey) at most; larger masks go in Zarr, which is read chunk by chunk.
MAX_MASK_PIXELS = 1 << 28


@dataclass(frozen=True)
class Truth:
    """Ground truth of one slide.

    Attributes:
        path: the file it came from.
        polygons: the tumour-class areas, one entry per drawn polygon (a MultiPolygon
            annotation contributes one per part), level-0 pixels, each repaired with
            ``make_valid`` (a Polygon, or a MultiPolygon where a self-intersecting drawing
            splits).
        geometry: their union minus excluded areas (Polygon/MultiPolygon, may be empty).
        classes: the class names that counted as tumour.
        all_classes: every class name seen in the file (``""`` for unclassified).
    """

    path: Path
    polygons: tuple[Polygon | MultiPolygon, ...]
    geometry: BaseGeometry
    classes: tuple[str, ...]
    all_classes: tuple[str, ...]


def is_tumour_class(name: str | None, classes: Sequence[str] | None = None) -> bool:
    """Whether an annotation of class ``name`` counts as tumour (rules in the module doc)."""
    if classes is not None:
        if tuple(classes) == ALL_CLASSES:
            return True
        return name is not None and name.casefold() in {c.casefold() for c in classes}
    if not name:
        return False
    words = [w for w in re.split(r"[^0-9a-z_]+", name.casefold()) if w]
    if any(w in NEGATING_WORDS for w in words):
        return False
    return any(w in TUMOUR_WORDS or w.startswith(TUMOUR_STEMS) for w in words)


# --------------------------------------------------------------------------- geometry helpers

def _area_parts(geom: BaseGeometry) -> list[Polygon]:
    """Valid polygon parts of a geometry (repairing it first); lines and points are dropped."""
    if geom.is_empty:
        return []
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return [p for p in shapely.get_parts(shapely.get_parts(geom))
            if isinstance(p, Polygon) and not p.is_empty and p.area > 0]


def _repair(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """One drawn area, repaired: a Polygon, a MultiPolygon when repair splits it, or None."""
    parts = _area_parts(geom)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _drawn_areas(geom: BaseGeometry) -> list[Polygon | MultiPolygon]:
    """Each drawn polygon of a geometry (a MultiPolygon's parts count one each), repaired."""
    if isinstance(geom, Polygon):
        drawn: list[BaseGeometry] = [geom]
    elif isinstance(geom, MultiPolygon):
        drawn = list(geom.geoms)
    elif geom.geom_type == "GeometryCollection":
        return [a for g in shapely.get_parts(geom) for a in _drawn_areas(g)]
    else:
        return []  # points and lines are not areas
    return [r for r in (_repair(g) for g in drawn) if r is not None]


def _polygon_from_xy(xy: Sequence[tuple[float, float]]) -> list[Polygon | MultiPolygon]:
    if len(xy) < 3:
        return []
    repaired = _repair(Polygon(xy))
    return [] if repaired is None else [repaired]


@dataclass(frozen=True)
class _Annotation:
    """One parsed area annotation before class filtering."""

    class_name: str  # "" when unclassified
    polygons: tuple[Polygon | MultiPolygon, ...]
    negative: tuple[Polygon | MultiPolygon, ...] = ()  # areas to subtract (ImageScope NegativeROA)


# --------------------------------------------------------------------------------- GeoJSON

def _class_of(props: dict[str, Any]) -> str:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str):
            return str(cls["name"])
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)  # QuPath's derived-class notation
    return ""


def _features(doc: Any, path: Path) -> list[dict[str, Any]]:
    """The Features of any top level QuPath accepts (FORMATS.md); may be empty ("no tumour")."""
    geometry_types = {"Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString",
                      "MultiLineString", "GeometryCollection"}
    feats: Any = None
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict):
        kind = doc.get("type")
        if kind == "FeatureCollection":
            feats = doc.get("features")
        elif kind == "Feature":
            feats = [doc]
        elif kind in geometry_types:
            feats = [{"type": "Feature", "geometry": doc, "properties": {}}]
    if not isinstance(feats, list):
        raise AnnotationError("no GeoJSON Features (expected a FeatureCollection, a Feature, "
                              "a list of Features or a geometry)", path)
    for i, feat in enumerate(feats):
        if not isinstance(feat, dict):
            raise AnnotationError(f"feature {i} is not a JSON object", path)
    return feats


def _read_json_doc(path: Path) -> Any:
    """The parsed JSON of a (possibly gzip) file, within :data:`MAX_TRUTH_BYTES`."""
    with open(path, "rb") as fh:
        gzipped = fh.read(2) == b"\x1f\x8b"
    raw = (gunzip_capped(path, MAX_TRUTH_BYTES, AnnotationError, "annotation file") if gzipped
           else read_capped(path, MAX_TRUTH_BYTES, AnnotationError, "annotation file"))
    return decode_json(raw, path, AnnotationError)


def _shape(geom_json: dict[str, Any], i: int, path: Path) -> BaseGeometry:
    """A Feature's geometry; AnnotationError for one shapely cannot build or with a NaN or
    infinite coordinate (GEOS cannot repair or measure those)."""
    try:
        # errstate: NaN coordinates raise our one line below, not a numpy warning first.
        with np.errstate(invalid="ignore"):
            geom = shapely.force_2d(shape(geom_json))  # a z (QuPath's plane) is not used
            coords = shapely.get_coordinates(geom)
    except KeyError as exc:
        raise AnnotationError(f"feature {i}: bad geometry: no {exc} member", path) from None
    except Exception as exc:  # shapely raises several types for bad coordinates
        raise AnnotationError(f"feature {i}: bad geometry: {exc}", path) from None
    if not np.isfinite(coords).all():
        raise AnnotationError(f"feature {i}: NaN or infinite coordinate", path)
    return geom


def _parse_geojson(path: Path) -> list[_Annotation]:
    out = []
    for i, feat in enumerate(_features(_read_json_doc(path), path)):
        props = feat.get("properties")
        name = _class_of(props if isinstance(props, dict) else {})
        geom_json = feat.get("geometry")
        polys = _drawn_areas(_shape(geom_json, i, path)) if isinstance(geom_json, dict) else []
        out.append(_Annotation(name, tuple(polys)))
    return out


# ------------------------------------------------------------------------------------- XML

def _xml_root(path: Path) -> ET.Element:
    """The parsed XML tree. Expat (>= 2.4) refuses entity-expansion bombs itself and external
    entities are never fetched; the size cap bounds the tree (about 10x the text)."""
    size = path.stat().st_size
    if size > MAX_TRUTH_BYTES:
        raise AnnotationError(f"annotation file is {size_text(size)}, more than the "
                              f"{size_text(MAX_TRUTH_BYTES)} allowed", path)
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise AnnotationError(f"malformed XML: {exc}", path) from None


def _float(value: str | None, path: Path, what: str) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise AnnotationError(f"bad {what} {value!r}", path) from None
    if not math.isfinite(out):
        raise AnnotationError(f"non-finite {what} {value!r}", path)
    return out


def _parse_asap(root: ET.Element, path: Path) -> list[_Annotation]:
    out = []
    for ann in root.iter("Annotation"):
        kind = (ann.get("Type") or "Polygon").casefold()
        group = ann.get("PartOfGroup") or "None"
        name = group if group != "None" else (ann.get("Name") or "")
        if kind in {"dot", "pointset", "point", "measurement", "line", "polyline"}:
            # Not an area, but an annotation: a file of points is not an empty truth.
            out.append(_Annotation(name, ()))
            continue
        coords = sorted(ann.iter("Coordinate"), key=lambda c: int(float(c.get("Order") or 0)))
        xy = [(_float(c.get("X"), path, "X"), _float(c.get("Y"), path, "Y")) for c in coords]
        polys = _polygon_from_xy(xy)
        if group == CAMELYON_EXCLUSION_GROUP:
            out.append(_Annotation(group, (), tuple(polys)))
        else:
            out.append(_Annotation(name, tuple(polys)))
    return out


def _imagescope_region(region: ET.Element, path: Path) -> list[Polygon | MultiPolygon]:
    xy = [(_float(v.get("X"), path, "X"), _float(v.get("Y"), path, "Y"))
          for v in region.iter("Vertex")]
    kind = region.get("Type", "0")
    if kind in {"3", "4"}:  # arrow, ruler: not areas
        return []
    if len(xy) == 2 and kind in {"1", "2"}:  # rectangle / ellipse stored as two corners
        (xa, ya), (xb, yb) = xy
        box = shapely.box(min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        if kind == "2":
            cx, cy, rx, ry = (xa + xb) / 2, (ya + yb) / 2, abs(xb - xa) / 2, abs(yb - ya) / 2
            t = np.linspace(0, 2 * np.pi, 128, endpoint=False)
            return _polygon_from_xy(list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t),
                                             strict=True)))
        return [box]
    return _polygon_from_xy(xy)


def _parse_imagescope(root: ET.Element, path: Path) -> list[_Annotation]:
    out = []
    for ann in root.iter("Annotation"):
        labels = [ann.get("Name") or ""]
        for attr in ann.iter("Attribute"):
            if (attr.get("Name") or "") != "Description":  # ImageScope's default column
                labels.append(attr.get("Name") or "")
            labels.append(attr.get("Value") or "")
        name = next((label for label in labels if label.strip()), "")
        positive: list[Polygon | MultiPolygon] = []
        negative: list[Polygon | MultiPolygon] = []
        regions = list(ann.iter("Region"))
        for region in regions:
            polys = _imagescope_region(region, path)
            (negative if region.get("NegativeROA") == "1" else positive).extend(polys)
        if regions:  # a layer with no region drawn is nothing; rulers and arrows are something
            out.append(_Annotation(name, tuple(positive), tuple(negative)))
    return out


# ------------------------------------------------------------------------------------ masks

def _mask_array(path: Path) -> Any:
    if path.is_dir():  # Zarr
        import zarr

        try:
            node: Any = zarr.open(str(path), mode="r")
            if isinstance(node, zarr.Group):
                node = node.get("0")
        except Exception as exc:
            raise AnnotationError(f"cannot open Zarr mask: {exc}", path) from None
        if not isinstance(node, zarr.Array) or len(node.shape) != 2:
            raise AnnotationError("Zarr mask must be a 2-D array (or a group with array '0')",
                                  path)
        chunk_bytes = math.prod(node.chunks) * node.dtype.itemsize
        if chunk_bytes > MAX_TRUTH_BYTES:  # each chunk is inflated whole when read
            raise AnnotationError(f"Zarr mask chunks {node.chunks} inflate to "
                                  f"{size_text(chunk_bytes)} each, more than the "
                                  f"{size_text(MAX_TRUTH_BYTES)} allowed", path)
        return node
    import cv2

    _check_mask_pixels(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise AnnotationError("cannot read mask image (corrupt or unsupported)", path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)  # any nonzero channel counts
    return arr


def _check_mask_pixels(path: Path) -> None:
    """AnnotationError for a mask image of more than :data:`MAX_MASK_PIXELS`, judged from its
    header before anything is decoded (a 1 MB PNG can decode to gigabytes)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
            size = f"{width} x {height} px"
        except Image.DecompressionBombError:  # Pillow's ceiling, where wsi_seg.stages.slide kept it
            width = height = MAX_MASK_PIXELS
            size = f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx" if Image.MAX_IMAGE_PIXELS \
                else "too large"
        except Exception:
            return  # a format Pillow cannot read the header of: OpenCV decides
    if width * height > MAX_MASK_PIXELS:
        raise AnnotationError(f"mask image is {size}, more than the "
                              f"{MAX_MASK_PIXELS / 1e6:.0f} Mpx read whole; store a mask that "
                              "large as Zarr (read chunk by chunk)", path)


class _Nonzero255:
    """A 2-D array-like seen as 0/255: nonzero pixels become 255.

    With values 0/255 and threshold 1, every corner-only contact (saddle) counts as connected
    when vectorized, i.e. a binary mask keeps 8-connectivity.
    """

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = tuple(arr.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        # uint8 throughout: np.where(..., 255, 0) would build an int64 copy 8x the window.
        return (np.asarray(self.arr[key]) != 0).view(np.uint8) * np.uint8(255)


def read_mask_truth(path: str | Path, *, mask_px_x0: float | None = None,
                    mask_mpp: float | None = None, slide_mpp: float | None = None) -> Truth:
    """A binary mask (nonzero = tumour) traced to polygons in level-0 slide pixels.

    Give the mask's resolution as ``mask_px_x0`` (level-0 px per mask px) or as ``mask_mpp``
    and ``slide_mpp`` (µm per mask px and per level-0 px). The mask's top-left corner is the
    slide's level-0 origin. Zarr masks are read chunk by chunk.
    """
    from wsi_seg.core.geometry import PixelFrame
    from wsi_seg.stages.vectorize import vectorize_array

    path = Path(path)
    if mask_px_x0 is None:
        if mask_mpp is None or slide_mpp is None:
            raise AnnotationError("a mask needs its resolution: give mask_mpp and slide_mpp "
                                  "(or mask_px_x0)", path)
        mask_px_x0 = mask_mpp / slide_mpp
    arr = _mask_array(path)
    rows, cols = int(arr.shape[0]), int(arr.shape[1])
    # Work in windows of the Zarr's chunk rows, kept between 256 and 4096 px: a window is
    # held whole (4096² px = 16 MiB), and one pixel high would take forever.
    chunk = (min(max(int(arr.chunks[0]), 256), 4096) if path.is_dir() else 1024)
    frame = PixelFrame(rows, cols, 0.0, 0.0, float(mask_px_x0), slide_mpp or 1.0, chunk)
    regions = vectorize_array(_Nonzero255(arr), frame, fg_min=1)
    polys = tuple(r.polygon for r in regions)
    geom = shapely.union_all(polys) if polys else MultiPolygon()
    return Truth(path, polys, geom, ("nonzero",), ("nonzero",))


# ------------------------------------------------------------------------------------ entry

def _parse(path: Path) -> list[_Annotation]:
    if not path.exists():
        raise AnnotationError("no such file", path)
    head = b""
    if path.is_file():
        with open(path, "rb") as fh:
            head = fh.read(512).removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows tools)
    if head[:2] == b"\x1f\x8b" or head.lstrip()[:1] in (b"{", b"["):
        return _parse_geojson(path)
    if head.lstrip()[:1] == b"<":
        root = _xml_root(path)
        if root.tag == "ASAP_Annotations":
            return _parse_asap(root, path)
        if root.tag == "Annotations":
            return _parse_imagescope(root, path)
        raise AnnotationError(f"unknown XML annotation format <{root.tag}> "
                              "(expected ASAP_Annotations or Aperio Annotations)", path)
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
        wanted = ("default tumour names" if classes is None
                  else "any class" if tuple(classes) == ALL_CLASSES else ", ".join(classes))
        found = ", ".join(repr(c) if c else "unclassified" for c in all_classes) or "none"
        raise AnnotationError(f"no tumour area annotation ({wanted}); classes found: {found}",
                              path)
    negatives = [p for a in annotations for p in a.negative
                 if a in kept or a.class_name == CAMELYON_EXCLUSION_GROUP]
    geom = shapely.union_all(polys)
    if negatives:
        geom = geom.difference(shapely.union_all(negatives))
    return Truth(path, polys, geom, tuple(sorted({a.class_name for a in kept})),
                 tuple(all_classes))


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
    polys = [p for a in _parse_geojson(path) for p in a.polygons]
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


def polygons_of(geom: BaseGeometry | Iterable[BaseGeometry] | None) -> list[Polygon]:
    """Flatten a geometry, or an iterable of geometries, into its polygon parts."""
    if geom is None:
        return []
    if isinstance(geom, BaseGeometry):
        return _area_parts(geom)
    return [p for g in geom for p in _area_parts(g)]
