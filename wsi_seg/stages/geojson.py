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
a reader never sees half a file. :func:`write_geojson` writes predicted regions (with their
measurements), :func:`write_polygons` any other polygons, e.g. ground truth, the same way.
A ``.gz`` suffix writes gzip (QuPath reads ``.geojson.gz``). Ids are random-format (version 4)
UUIDs drawn from a seed of the folder and file name and the features' areas, so a rerun writes
the same file byte for byte.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.files import write_output
from wsi_seg.core.locations import OutputLocation, SlideURL
from wsi_seg.stages.vectorize import RegionPolygon

TUMOR_CLASS = "Tumor"
TUMOR_COLOR = (200, 0, 0)  # QuPath's own colour for its built-in "Tumor" class

MEASUREMENT_NAMES = ("Area µm^2", "Perimeter µm", "Mean probability", "Max probability")


def _round_coords(coords: np.ndarray) -> np.ndarray:
    """Round to QuPath's 0.01 px grid; ``+ 0.0`` turns ``-0.0`` into ``0.0``."""
    return np.round(np.asarray(coords, dtype=np.float64)[:, :2], 2) + 0.0


def polygon_coordinates(polys: Sequence[Polygon]) -> list[list[list[list[float]]]]:
    """GeoJSON ``coordinates`` of many Polygons at once: rings closed, exterior first, then holes,
    2 decimals. Orientation follows RFC 7946 (exterior counter-clockwise in x-right/y-up axes);
    QuPath accepts either.

    Done in bulk (one shapely/numpy call per step, one ``tolist``) because per-polygon numpy
    calls dominate the cost for tens of thousands of features.
    """
    if not polys:
        return []
    geoms = shapely.orient_polygons(np.asarray(polys, dtype=object), exterior_cw=False)
    rings, poly_idx = shapely.get_rings(geoms, return_index=True)
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    flat = _round_coords(coords).tolist()  # shapely rings are closed: first == last
    ring_ends = np.cumsum(np.bincount(ring_idx, minlength=len(rings))).tolist()
    ring_lists, start = [], 0
    for end in ring_ends:
        ring_lists.append(flat[start:end])
        start = end
    poly_ends = np.cumsum(np.bincount(poly_idx, minlength=len(polys))).tolist()
    out, start = [], 0
    for end in poly_ends:
        out.append(ring_lists[start:end])
        start = end
    return out


def _numbers(values: np.ndarray) -> list[float | str]:
    """QuPath stores measurements as float32 and accepts "NaN"/"inf"/"-inf" for non-finite."""
    values = np.asarray(values, dtype=np.float64)
    if np.isfinite(values).all():
        return np.round(values, 4).tolist()
    return [round(float(v), 4) if np.isfinite(v) else
            ("NaN" if np.isnan(v) else "inf" if v > 0 else "-inf") for v in values]


def _feature_ids(name: str, sizes: np.ndarray) -> list[str]:
    """Version-4-format UUIDs drawn from a seed of the file name and the features' sizes
    (areas), so a rerun writes identical bytes while distinct outputs get distinct ids."""
    digest = hashlib.sha256(name.encode())
    digest.update(np.asarray(sizes, dtype=np.float64).tobytes())
    rng = np.random.default_rng(int.from_bytes(digest.digest()[:8], "little"))
    raw = rng.integers(0, 256, size=(len(sizes), 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    out = []
    for row in raw:
        h = row.tobytes().hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _collection(polys: Sequence[Polygon], ids: Sequence[str], class_name: str,
                color: tuple[int, int, int],
                properties: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The FeatureCollection of polygons, one Feature each, with QuPath's annotation fields
    plus each polygon's own ``properties``."""
    rgb = [int(c) for c in color]
    features = []
    for fid, coords, extra in zip(ids, polygon_coordinates(polys), properties, strict=True):
        features.append({
            "type": "Feature",
            "id": fid,
            "geometry": {"type": "Polygon", "coordinates": coords},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": class_name, "color": rgb},
                "isLocked": False,
                **extra,
            },
        })
    return {"type": "FeatureCollection", "features": features}


def feature_collection(regions: Sequence[RegionPolygon], *, name: str = "tumor.geojson",
                       class_name: str = TUMOR_CLASS,
                       color: tuple[int, int, int] = TUMOR_COLOR) -> dict[str, Any]:
    """The FeatureCollection (as a dict) for ``regions``; ``name`` seeds the feature ids."""
    measurements = np.array([[r.area_um2, r.perimeter_um, r.mean_prob, r.max_prob]
                             for r in regions], dtype=np.float64).reshape(-1, 4)
    ids = _feature_ids(name, measurements[:, 0])
    props = [{"measurements": dict(zip(MEASUREMENT_NAMES, _numbers(values), strict=True))}
             for values in measurements]
    return _collection([r.polygon for r in regions], ids, class_name, color, props)


def _write(doc: dict[str, Any], path: OutputLocation) -> None:
    # One C-encoder pass over the whole document is the fast path for many features.
    data = (json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: reproducible bytes
    write_output(path, data)  # a file on disk, or one object in a store


def _as_location(path: str | Path | SlideURL) -> OutputLocation:
    return path if isinstance(path, SlideURL) else Path(path)


def _id_seed(path: OutputLocation) -> str:
    # The folder too: every slide's file is called tumor.geojson.
    return f"{path.parent.name}/{path.name}"


@overload
def write_geojson(regions: Sequence[RegionPolygon], path: str | Path, *,
                  class_name: str = ..., color: tuple[int, int, int] = ...,
                  id_seed: str | None = ...) -> Path: ...
@overload
def write_geojson(regions: Sequence[RegionPolygon], path: SlideURL, *,
                  class_name: str = ..., color: tuple[int, int, int] = ...,
                  id_seed: str | None = ...) -> SlideURL: ...
def write_geojson(regions: Sequence[RegionPolygon], path: str | Path | SlideURL, *,
                  class_name: str = TUMOR_CLASS,
                  color: tuple[int, int, int] = TUMOR_COLOR,
                  id_seed: str | None = None) -> OutputLocation:
    """Write regions (level-0 px polygons) as a QuPath-importable FeatureCollection.

    Args:
        regions: from :func:`wsi_seg.stages.vectorize.vectorize_mosaic`; their measurements (area
        µm²,
            perimeter µm, mean/max probability 0..1) become Feature measurements.
        path: ``.geojson`` (or ``.json``); a trailing ``.gz`` writes gzip. An ``s3://``
            URL writes one object to the store.
        class_name, color: the QuPath classification (``color`` as ``[r, g, b]`` 0..255).
        id_seed: what the feature ids are derived from (default: the file's folder and
            name); a writer that must give the bytes another path gives passes that path's.

    Returns:
        ``path``. Written to a temporary file in the same folder, then renamed (atomic).
    """
    loc = _as_location(path)
    _write(feature_collection(regions, name=id_seed or _id_seed(loc), class_name=class_name,
                              color=color), loc)
    return loc


@overload
def write_class_geojson(groups: Sequence[tuple[str, tuple[int, int, int],
                                               Sequence[RegionPolygon]]],
                        path: str | Path, id_seed: str | None = ...) -> Path: ...
@overload
def write_class_geojson(groups: Sequence[tuple[str, tuple[int, int, int],
                                               Sequence[RegionPolygon]]],
                        path: SlideURL, id_seed: str | None = ...) -> SlideURL: ...
def write_class_geojson(groups: Sequence[tuple[str, tuple[int, int, int],
                                               Sequence[RegionPolygon]]],
                        path: str | Path | SlideURL, id_seed: str | None = None
                        ) -> OutputLocation:
    """Write the regions of several classes into one FeatureCollection, each Feature
    classified by its class's QuPath name and colour (``groups``: ``(name, (r, g, b),
    regions)``, in output order), with the same measurements as :func:`write_geojson`. QuPath
    imports them as annotations of those classes. Written atomically; ``.gz`` writes gzip.
    ``id_seed`` as for :func:`write_geojson`.
    """
    loc = _as_location(path)
    seed = id_seed or _id_seed(loc)
    features: list[dict[str, Any]] = []
    for name, color, regions in groups:
        doc = feature_collection(regions, name=f"{seed}#{name}", class_name=name,
                                 color=color)
        features += doc["features"]
    _write({"type": "FeatureCollection", "features": features}, loc)
    return loc


def write_polygons(geoms: Sequence[BaseGeometry], path: str | Path, *,
                   class_name: str = TUMOR_CLASS, color: tuple[int, int, int] = TUMOR_COLOR,
                   properties: dict[str, Any] | None = None) -> Path:
    """Write polygons of any origin (ground truth, drawn shapes; level-0 px) as annotations,
    the same way as :func:`write_geojson` but without measurements.

    Each geometry's polygon parts become one Feature each, first snapped to QuPath's 0.01 px
    grid (``set_precision``), so they stay valid after the 2-decimal rounding; lines, points
    and parts that vanish on the grid are dropped. ``properties`` go into every Feature's
    properties (e.g. ``{"metadata": {...}}``). Written atomically; ``.gz`` writes gzip.
    """
    path = Path(path)
    snapped = shapely.set_precision(np.asarray(list(geoms), dtype=object), 0.01)
    polys = [p for p in shapely.get_parts(shapely.get_parts(snapped))
             if isinstance(p, Polygon) and not p.is_empty]
    ids = _feature_ids(_id_seed(path), shapely.area(np.asarray(polys, dtype=object)))
    doc = _collection(polys, ids, class_name, color, [dict(properties or {}) for _ in polys])
    _write(doc, path)
    return path
