"""GeoJSON truth as QuPath 0.2 to 0.8 writes it (rules in :mod:`wsi_seg.evaluation.annotations`):
a FeatureCollection, a Feature, a list of Features or a bare geometry, optionally gzip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import MiB, decode_json, gunzip_capped, read_capped
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


#: A plain FeatureCollection file this large is parsed one Feature at a time (ijson), not
#: whole: parsed whole, JSON holds ~10x its text in Python objects.
STREAM_MIN_BYTES = 16 * MiB


def _streamed_features(path: Path) -> Iterator[dict[str, Any]] | None:
    """The Features of a large plain FeatureCollection file, one at a time, or None when the
    file is small, gzip or not a FeatureCollection (it is then parsed whole)."""
    import ijson

    size = path.stat().st_size
    if size < STREAM_MIN_BYTES or size > MAX_TRUTH_BYTES:
        return None  # small: parsed whole; too large: refused by the capped read
    with open(path, "rb") as fh:
        head = fh.read(512).removeprefix(b"\xef\xbb\xbf").lstrip()
        if head[:1] != b"{":
            return None
        fh.seek(0)
        try:
            kind = next(ijson.items(fh, "type"), None)
        except ijson.JSONError:
            return None  # parsed whole, for its one-line cause
    if kind != "FeatureCollection":
        return None

    def features() -> Iterator[dict[str, Any]]:
        with open(path, "rb") as fh:
            try:
                for i, feat in enumerate(ijson.items(fh, "features.item", use_float=True)):
                    if not isinstance(feat, dict):
                        raise AnnotationError(f"feature {i} is not a JSON object", path)
                    yield feat
            except ijson.JSONError as exc:
                cause = " ".join(str(exc).split())[:200]
                raise AnnotationError(f"malformed JSON: {cause}", path) from None

    return features()


def parse_geojson(path: Path) -> list[Annotation]:
    out = []
    streamed = _streamed_features(path)
    feats = streamed if streamed is not None else _features(_read_json_doc(path), path)
    for i, feat in enumerate(feats):
        props = feat.get("properties")
        name = _class_of(props if isinstance(props, dict) else {})
        geom_json = feat.get("geometry")
        polys = drawn_areas(_shape(geom_json, i, path)) if isinstance(geom_json, dict) else []
        out.append(Annotation(name, tuple(polys)))
    return out
