"""Tumour regions -> ``tumor.geojson`` that QuPath (0.2 to 0.8) imports as annotations.

What each Feature carries, and the QuPath rule behind it (``FORMATS.md``)::

    {"type": "Feature",
     "id": "<uuid>",                                # used by QuPath only when it is a UUID
     "geometry": {"type": "Polygon",                # level-0 px, closed rings, holes after the
                  "coordinates": [[[x, y], ...]]},  # shell, at most 2 decimals, valid on the
                                                    # 0.01 px grid QuPath snaps to
     "properties": {"objectType": "annotation",    # inside properties, not at the top level
                    "classification": {"name": "Tumor", "color": [r, g, b]},  # color required
                    "measurements": {"Area µm^2": ..., "Perimeter µm": ...,
                                     "Mean probability": ..., "Max probability": ...}}}

The file is a FeatureCollection (not a bare list), written to a temporary name and renamed, so
a reader never sees half a file. A ``.gz`` suffix writes gzip (QuPath reads ``.geojson.gz``).
Ids are UUIDs derived (uuid5) from the file name, index and coordinates, so a rerun writes the
same file byte for byte.
"""

from __future__ import annotations

import gzip
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsi_seg.vectorize import RegionPolygon

TUMOR_CLASS = "Tumor"
TUMOR_COLOR = (200, 0, 0)  # QuPath's own colour for its built-in "Tumor" class
_NAMESPACE = uuid.UUID("6f1c2a4e-5b0d-4f52-9d0e-7a3c1b2e9f10")  # wsi-seg's uuid5 namespace

MEASUREMENT_NAMES = ("Area µm^2", "Perimeter µm", "Mean probability", "Max probability")


def _ring_json(coords: np.ndarray) -> str:
    """One closed ring as JSON text, coordinates rounded to 2 decimals (QuPath's grid)."""
    pts = np.round(np.asarray(coords, dtype=np.float64)[:, :2], 2) + 0.0  # + 0.0: no "-0.0"
    if len(pts) and not np.array_equal(pts[0], pts[-1]):
        pts = np.vstack([pts, pts[:1]])  # rings must be closed
    # repr of a float rounded to 2 decimals is its shortest form ("12.34"), which json uses.
    return json.dumps(pts.tolist(), separators=(",", ":"))


def polygon_geometry_json(poly: Polygon) -> str:
    """A Polygon as a GeoJSON geometry object (text): exterior first, then holes.

    Orientation follows RFC 7946 (exterior counter-clockwise in x-right/y-up axes); QuPath
    accepts either.
    """
    poly = shapely.orient_polygons(poly, exterior_cw=False)
    rings = [_ring_json(np.asarray(poly.exterior.coords))]
    rings += [_ring_json(np.asarray(r.coords)) for r in poly.interiors]
    return '{"type":"Polygon","coordinates":[' + ",".join(rings) + "]}"


def _number(value: float) -> float | str:
    """QuPath stores measurements as float32 and accepts "NaN"/"inf" strings for non-finite."""
    if np.isnan(value):
        return "NaN"
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return round(float(value), 4)


def feature_json(region: RegionPolygon, feature_id: str, *, class_name: str = TUMOR_CLASS,
                 color: tuple[int, int, int] = TUMOR_COLOR) -> str:
    """One region as a QuPath annotation Feature (JSON text)."""
    properties = {
        "objectType": "annotation",
        "classification": {"name": class_name, "color": [int(c) for c in color]},
        "isLocked": False,
        "measurements": dict(zip(MEASUREMENT_NAMES, (
            _number(region.area_um2), _number(region.perimeter_um),
            _number(region.mean_prob), _number(region.max_prob)), strict=True)),
    }
    return ('{"type":"Feature","id":' + json.dumps(feature_id) + ',"geometry":'
            + polygon_geometry_json(region.polygon) + ',"properties":'
            + json.dumps(properties, ensure_ascii=False, separators=(",", ":")) + "}")


def _feature_id(name: str, index: int, poly: Polygon) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{name}:{index}:{poly.bounds}:{poly.area:.2f}"))


def write_geojson(regions: Sequence[RegionPolygon], path: str | Path, *,
                  class_name: str = TUMOR_CLASS,
                  color: tuple[int, int, int] = TUMOR_COLOR) -> Path:
    """Write regions (level-0 px polygons) as a QuPath-importable FeatureCollection.

    Args:
        regions: from :func:`wsi_seg.vectorize.vectorize_mosaic`; their measurements (area µm²,
            perimeter µm, mean/max probability 0..1) become Feature measurements.
        path: ``.geojson`` (or ``.json``); a trailing ``.gz`` writes gzip.
        class_name, color: the QuPath classification (``color`` as ``[r, g, b]`` 0..255).

    Returns:
        ``path``. Written to a temporary file in the same folder, then renamed (atomic).
    """
    path = Path(path)
    parts = ['{"type":"FeatureCollection","features":[\n']
    parts.append(",\n".join(feature_json(r, _feature_id(path.name, i, r.polygon),
                                         class_name=class_name, color=color)
                            for i, r in enumerate(regions)))
    parts.append("\n]}\n")
    data = "".join(parts).encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: reproducible bytes
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
