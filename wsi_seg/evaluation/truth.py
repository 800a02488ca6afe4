"""The one ground-truth type and the rules shared by every annotation format.

:class:`Truth` is what :func:`wsi_seg.evaluation.annotations.read_truth` returns whatever the
file; :func:`is_tumour_class` decides which class names count as tumour (rules in
:mod:`wsi_seg.evaluation.annotations`); the geometry helpers turn drawn shapes into repaired
areas in level-0 pixels for every format reader.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.files import MiB

ALL_CLASSES: tuple[str, ...] = ("*",)
TUMOUR_STEMS = ("tumor", "tumour", "carcinom", "cancer", "metasta", "malignan", "neoplas")
TUMOUR_WORDS = frozenset({"cap", "idc", "dcis", "_0", "_1"})
NEGATING_WORDS = frozenset({"non", "not", "no", "normal", "benign", "healthy"})
CAMELYON_EXCLUSION_GROUP = "_2"
# The most annotation text read (a .gz: inflated). Real whole-slide annotations are a few MB
# (CAMELYON16's largest XML is about 2 MB); parsed, JSON takes ~10x its text in memory.
MAX_TRUTH_BYTES = 256 * MiB
#: Above this many drawn polygons a truth is kept as their coverage, not their union (GEOS's
#: union of a million cell outlines takes minutes; rasterising the coverage gives the same).
UNION_MAX_PARTS = 10_000


@dataclass(frozen=True)
class Truth:
    """Ground truth of one slide.

    Attributes:
        path: the file it came from.
        polygons: the tumour-class areas, one entry per drawn polygon (a MultiPolygon
            annotation contributes one per part), level-0 pixels, each repaired with
            ``make_valid`` (a Polygon, or a MultiPolygon where a self-intersecting drawing
            splits).
        geometry: their union minus excluded areas (Polygon/MultiPolygon, may be empty);
            for more than :data:`UNION_MAX_PARTS` polygons and no excluded areas, the
            polygons themselves as a GeometryCollection (a coverage: parts may overlap),
            whose union is what every consumer rasterises (the nonzero rule of
            :func:`wsi_seg.evaluation.metrics.rasterize_window`) or draws.
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


# ---------------------------------------------------------------------------- geometry

def area_parts(geom: BaseGeometry) -> list[Polygon]:
    """Valid polygon parts of a geometry (repairing it first); lines and points are dropped."""
    if geom.is_empty:
        return []
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    return [p for p in shapely.get_parts(shapely.get_parts(geom))
            if isinstance(p, Polygon) and not p.is_empty and p.area > 0]


def repair(geom: BaseGeometry) -> Polygon | MultiPolygon | None:
    """One drawn area, repaired: a Polygon, a MultiPolygon when repair splits it, or None."""
    parts = area_parts(geom)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def drawn_areas(geom: BaseGeometry) -> list[Polygon | MultiPolygon]:
    """Each drawn polygon of a geometry (a MultiPolygon's parts count one each), repaired."""
    if isinstance(geom, Polygon):
        drawn: list[BaseGeometry] = [geom]
    elif isinstance(geom, MultiPolygon):
        drawn = list(geom.geoms)
    elif geom.geom_type == "GeometryCollection":
        return [a for g in shapely.get_parts(geom) for a in drawn_areas(g)]
    else:
        return []  # points and lines are not areas
    return [r for r in (repair(g) for g in drawn) if r is not None]


def polygon_from_xy(xy: Sequence[tuple[float, float]]) -> list[Polygon | MultiPolygon]:
    if len(xy) < 3:
        return []
    repaired = repair(Polygon(xy))
    return [] if repaired is None else [repaired]


@dataclass(frozen=True)
class Annotation:
    """One parsed area annotation before class filtering."""

    class_name: str  # "" when unclassified
    polygons: tuple[Polygon | MultiPolygon, ...]
    negative: tuple[Polygon | MultiPolygon, ...] = ()  # areas to subtract (ImageScope NegativeROA)


def polygons_of(geom: BaseGeometry | Iterable[BaseGeometry] | None) -> list[Polygon]:
    """Flatten a geometry, or an iterable of geometries, into its polygon parts."""
    if geom is None:
        return []
    if isinstance(geom, BaseGeometry):
        return area_parts(geom)
    return [p for g in geom for p in area_parts(g)]
