"""GeoJSON truth as QuPath 0.2 to 0.8 writes it (rules in :mod:`wsi_seg.evaluation.annotations`):
a FeatureCollection, a Feature, a list of Features or a bare geometry, optionally gzip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import decode_json, gunzip_capped, read_capped
from wsi_seg.evaluation.truth import MAX_TRUTH_BYTES, Annotation, drawn_areas


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


def parse_geojson(path: Path) -> list[Annotation]:
    out = []
    for i, feat in enumerate(_features(_read_json_doc(path), path)):
        props = feat.get("properties")
        name = _class_of(props if isinstance(props, dict) else {})
        geom_json = feat.get("geometry")
        polys = drawn_areas(_shape(geom_json, i, path)) if isinstance(geom_json, dict) else []
        out.append(Annotation(name, tuple(polys)))
    return out
