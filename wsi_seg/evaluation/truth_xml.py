"""ASAP (CAMELYON) and Aperio ImageScope XML truth.

Class and exclusion rules: :mod:`wsi_seg.evaluation.annotations`.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import size_text
from wsi_seg.evaluation.truth import (
    CAMELYON_EXCLUSION_GROUP,
    MAX_TRUTH_BYTES,
    Annotation,
    polygon_from_xy,
)


def parse_xml(path: Path) -> list[Annotation]:
    """The annotations of an ASAP or ImageScope XML file, told apart by the root tag."""
    root = _xml_root(path)
    if root.tag == "ASAP_Annotations":
        return _parse_asap(root, path)
    if root.tag == "Annotations":
        return _parse_imagescope(root, path)
    raise AnnotationError(f"unknown XML annotation format <{root.tag}> "
                          "(expected ASAP_Annotations or Aperio Annotations)", path)


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


def _order(coordinate: ET.Element, path: Path) -> float:
    """An ASAP ``Coordinate``'s ``Order`` (a finite number; absent counts as 0)."""
    value = coordinate.get("Order")
    return 0.0 if value is None else _float(value, path, "Coordinate Order")


def _parse_asap(root: ET.Element, path: Path) -> list[Annotation]:
    out = []
    for ann in root.iter("Annotation"):
        kind = (ann.get("Type") or "Polygon").casefold()
        group = ann.get("PartOfGroup") or "None"
        name = group if group != "None" else (ann.get("Name") or "")
        if kind in {"dot", "pointset", "point", "measurement", "line", "polyline"}:
            # Not an area, but an annotation: a file of points is not an empty truth.
            out.append(Annotation(name, ()))
            continue
        coords = sorted(ann.iter("Coordinate"), key=lambda c: _order(c, path))
        xy = [(_float(c.get("X"), path, "X"), _float(c.get("Y"), path, "Y")) for c in coords]
        polys = polygon_from_xy(xy)
        if group == CAMELYON_EXCLUSION_GROUP:
            out.append(Annotation(group, (), tuple(polys)))
        else:
            out.append(Annotation(name, tuple(polys)))
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
            return polygon_from_xy(list(zip(cx + rx * np.cos(t), cy + ry * np.sin(t),
                                             strict=True)))
        return [box]
    return polygon_from_xy(xy)


def _parse_imagescope(root: ET.Element, path: Path) -> list[Annotation]:
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
            out.append(Annotation(name, tuple(positive), tuple(negative)))
    return out
