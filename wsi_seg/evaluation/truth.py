"""The one ground-truth type and the rules shared by every annotation format.

:class:`Truth` is what :func:`wsi_seg.evaluation.annotations.read_truth` returns whatever the
file; :func:`is_tumour_class` decides which class names count as tumour (rules in
:mod:`wsi_seg.evaluation.annotations`); the geometry helpers turn drawn shapes into repaired
areas in level-0 pixels for every format reader.

:func:`rasterize_truth` draws a truth file straight into a raster that lies on the slide (the
scoring level's :class:`~wsi_seg.core.geometry.PixelFrame`), pixel for pixel what scoring
rasterises of :class:`Truth`'s geometry, holding the raster and one batch of polygons: a
GeoJSON of a million cells costs its raster, not a million shapely objects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import GeometryCollection, MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import MiB
from wsi_seg.core.geometry import PixelFrame

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
#: Polygons :func:`rasterize_truth` draws together once a truth is a coverage.
RASTER_BATCH_POLYGONS = 2048


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


def no_tumour_error(path: Path, classes: Sequence[str] | None,
                    all_classes: Iterable[str]) -> AnnotationError:
    """The one line for a file whose annotations hold no tumour-class area."""
    wanted = ("default tumour names" if classes is None
              else "any class" if tuple(classes) == ALL_CLASSES else ", ".join(classes))
    found = ", ".join(repr(c) if c else "unclassified" for c in sorted(all_classes)) or "none"
    return AnnotationError(f"no tumour area annotation ({wanted}); classes found: {found}", path)


# ---------------------------------------------------------------------------- rasters

@dataclass(frozen=True)
class TruthRaster:
    """Ground truth of one slide drawn into a raster that lies on it.

    The raster is a chunked, compressed array in memory (zarr; chunks of ``frame.chunk_px``,
    all-False chunks not stored), so a truth costs what its drawn area compresses to, not
    one byte per pixel of the frame: a 100,000 px slide scored at full resolution stays
    small. Read it chunk by chunk (:meth:`window`); ``np.asarray(raster.mask)`` gives the
    whole raster for small frames.

    Attributes:
        path: the file it came from.
        frame: where the raster lies on the slide.
        mask: bool ``(frame.height_px, frame.width_px)`` array-like (zarr): the pixel's
            centre is inside the truth (as :func:`wsi_seg.evaluation.metrics.rasterize_window`
            decides).
        classes, all_classes: as :class:`Truth`'s.
        n_polygons: tumour polygons drawn (:class:`Truth`'s ``len(polygons)``).
    """

    path: Path
    frame: PixelFrame
    mask: Any
    classes: tuple[str, ...]
    all_classes: tuple[str, ...]
    n_polygons: int

    def window(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        """The raster's bool pixels ``[row0 : row0 + rows, col0 : col0 + cols]``."""
        return np.asarray(self.mask[row0 : row0 + rows, col0 : col0 + cols], dtype=bool)

    def sample(self, rows_px: np.ndarray, cols_px: np.ndarray) -> np.ndarray:
        """``mask[rows_px[:, None], cols_px[None, :]]`` (raster px, each sorted ascending),
        read chunk by chunk: e.g. a thumbnail's pixel centres mapped into the raster."""
        out = np.zeros((len(rows_px), len(cols_px)), dtype=bool)
        for row0, col0, rows, cols in self.frame.chunks():
            ri = np.flatnonzero((rows_px >= row0) & (rows_px < row0 + rows))
            ci = np.flatnonzero((cols_px >= col0) & (cols_px < col0 + cols))
            if len(ri) and len(ci):
                block = self.window(row0, col0, rows, cols)
                out[np.ix_(ri, ci)] = block[np.ix_(rows_px[ri] - row0, cols_px[ci] - col0)]
        return out


#: Chunks :class:`_Drawing` keeps decoded (1 MiB each at 1024 px): truth files list their
#: shapes roughly in place order, so a batch mostly touches the chunks the last one did.
DRAW_CACHE_CHUNKS = 64


class _Drawing:
    """A bool raster on ``frame`` being drawn chunk-aligned window by window: stored
    compressed in memory (zarr; all-False chunks not stored), the last
    :data:`DRAW_CACHE_CHUNKS` chunks drawn into kept decoded, so a chunk is encoded once
    per visit, not once per batch of polygons that reaches it."""

    def __init__(self, frame: PixelFrame) -> None:
        import zarr

        c = frame.chunk_px
        self.chunk_px = c
        self.array = zarr.create_array(store=zarr.storage.MemoryStore(),
                                       shape=(frame.height_px, frame.width_px),
                                       chunks=(min(c, max(1, frame.height_px)),
                                               min(c, max(1, frame.width_px))),
                                       dtype=bool, fill_value=False)
        self._cache: dict[tuple[int, int], np.ndarray] = {}  # insertion order = LRU order

    def or_window(self, row0: int, col0: int, win: np.ndarray) -> None:
        """``raster[window] |= win`` for a window at a chunk's corner."""
        if not win.any():
            return
        key = (row0, col0)
        block = self._cache.pop(key, None)
        if block is None:
            if len(self._cache) >= DRAW_CACHE_CHUNKS:  # the least recently drawn goes
                oldest = next(iter(self._cache))
                self._write(oldest, self._cache.pop(oldest))
            sl = (slice(row0, row0 + win.shape[0]), slice(col0, col0 + win.shape[1]))
            block = np.asarray(self.array[sl], dtype=bool)
        block |= win
        self._cache[key] = block

    def _write(self, key: tuple[int, int], block: np.ndarray) -> None:
        row0, col0 = key
        self.array[row0 : row0 + block.shape[0], col0 : col0 + block.shape[1]] = block

    def done(self) -> Any:
        """The finished raster (zarr), every kept chunk written."""
        for key, block in self._cache.items():
            self._write(key, block)
        self._cache.clear()
        return self.array


def _is_geojson(path: Path) -> bool:
    """A regular file whose first bytes are gzip's or JSON's (what annotations reads as
    GeoJSON); anything else, missing files included, is left to ``read_truth``."""
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        head = fh.read(512).removeprefix(b"\xef\xbb\xbf")
    return head[:2] == b"\x1f\x8b" or head.lstrip()[:1] in (b"{", b"[")


def _draw_geometry(geom_x0: BaseGeometry, frame: PixelFrame) -> Any:
    """The raster scoring draws of a truth geometry (level-0 px), chunk by chunk."""
    from wsi_seg.evaluation.metrics import rasterize_window

    out = _Drawing(frame)
    if not geom_x0.is_empty:
        geom_px = frame.from_level0(geom_x0)
        for row0, col0, rows, cols in frame.chunks():
            out.or_window(row0, col0, rasterize_window(geom_px, row0, col0, rows, cols))
    return out.done()


def _draw_coverage(out: _Drawing, polys: Sequence[BaseGeometry], frame: PixelFrame,
                   slide_size_x0: tuple[int, int]) -> tuple[float, float, float, float]:
    """Draw polygons of a coverage into ``out`` (their union: OR), clipped to the slide as
    :func:`~wsi_seg.evaluation.annotations.check_truth_fits` clips, each chunk of ``frame``
    from the parts that reach it; returns their level-0 bounds.

    Pixel for pixel what drawing the whole coverage gives: the nonzero rule over a coverage
    is the OR of its parts, and clipping works part by part.
    """
    from wsi_seg.evaluation.metrics import rasterize_window

    coverage = GeometryCollection(list(polys))
    bounds = coverage.bounds
    w, h = slide_size_x0
    parts = shapely.get_parts(frame.from_level0(shapely.clip_by_rect(coverage, 0, 0, w, h)))
    if not len(parts):
        return bounds
    box = shapely.bounds(parts)  # x = col, y = row
    c = frame.chunk_px
    # The chunks a part can reach: rasterize_window clips to the window plus 1 px.
    rows = range(max(0, math.floor((box[:, 1].min() - 1) / c)) * c,
                 min(frame.height_px, math.floor((box[:, 3].max() + 1) / c) * c + 1), c)
    cols = range(max(0, math.floor((box[:, 0].min() - 1) / c)) * c,
                 min(frame.width_px, math.floor((box[:, 2].max() + 1) / c) * c + 1), c)
    for row0 in rows:
        n_rows = min(c, frame.height_px - row0)
        in_rows = (box[:, 1] <= row0 + n_rows + 1) & (box[:, 3] >= row0 - 1)
        for col0 in cols:
            n_cols = min(c, frame.width_px - col0)
            near = in_rows & (box[:, 0] <= col0 + n_cols + 1) & (box[:, 2] >= col0 - 1)
            if near.any():
                out.or_window(row0, col0, rasterize_window(
                    GeometryCollection(list(parts[near])), row0, col0, n_rows, n_cols))
    return bounds


def rasterize_truth(path: str | Path, frame: PixelFrame, slide_size_x0: tuple[int, int],
                    classes: Sequence[str] | None = None, *, margin: float = 0.02,
                    mask_mpp: float | None = None, slide_mpp: float | None = None,
                    mask_px_x0: float | None = None) -> TruthRaster:
    """Ground truth drawn into the raster ``frame`` of a slide of level-0 size
    ``slide_size_x0``: pixel for pixel what scoring rasterises of
    ``check_truth_fits(read_truth(path, classes, ...), slide_size_x0, margin=margin)``, with
    the same errors (:func:`~wsi_seg.evaluation.annotations.read_truth`,
    :func:`~wsi_seg.evaluation.annotations.check_truth_fits`).

    A GeoJSON file is streamed (:func:`~wsi_seg.evaluation.truth_geojson.iter_geojson`):
    once it holds more than :data:`UNION_MAX_PARTS` tumour polygons (a coverage) they are
    drawn :data:`RASTER_BATCH_POLYGONS` at a time and let go, so memory is the compressed
    raster (:class:`TruthRaster`) plus one batch, whatever the number of polygons.
    XML (parsed whole, its negative areas subtracted from the union) and masks go through
    :class:`Truth`.
    """
    from wsi_seg.evaluation.annotations import check_truth_fits, read_truth
    from wsi_seg.evaluation.truth_geojson import iter_geojson
    from wsi_seg.evaluation.truth_mask import MASK_SUFFIXES

    p = Path(path)
    if p.suffix.casefold() in MASK_SUFFIXES or not _is_geojson(p):
        truth = check_truth_fits(read_truth(p, classes, mask_mpp=mask_mpp, slide_mpp=slide_mpp,
                                            mask_px_x0=mask_px_x0), slide_size_x0,
                                 margin=margin)
        return TruthRaster(p, frame, _draw_geometry(truth.geometry, frame), truth.classes,
                           truth.all_classes, len(truth.polygons))
    out = _Drawing(frame)
    seen, all_classes, kept = False, set(), set()
    pending: list[Polygon | MultiPolygon] = []
    n_polygons, coverage = 0, False
    lo_x = lo_y = math.inf
    hi_x = hi_y = -math.inf
    for a in iter_geojson(p):  # GeoJSON draws no negative areas
        seen = True
        all_classes.add(a.class_name)
        if a.class_name == CAMELYON_EXCLUSION_GROUP or not is_tumour_class(a.class_name,
                                                                            classes):
            continue
        kept.add(a.class_name)
        pending += a.polygons
        n_polygons += len(a.polygons)
        coverage = coverage or n_polygons > UNION_MAX_PARTS
        if coverage and len(pending) >= RASTER_BATCH_POLYGONS:
            for i in range(0, len(pending), RASTER_BATCH_POLYGONS):
                x0, y0, x1, y1 = _draw_coverage(out, pending[i : i + RASTER_BATCH_POLYGONS],
                                                frame, slide_size_x0)
                lo_x, lo_y = min(lo_x, x0), min(lo_y, y0)
                hi_x, hi_y = max(hi_x, x1), max(hi_y, y1)
            pending = []
    if not seen:  # no annotation at all: "no tumour"
        return TruthRaster(p, frame, out.done(), (), (), 0)
    if not n_polygons:
        raise no_tumour_error(p, classes, all_classes)
    names, every = tuple(sorted(kept)), tuple(sorted(all_classes))
    if not coverage:  # few polygons: their union, as read_truth makes it
        truth = check_truth_fits(Truth(p, tuple(pending), shapely.union_all(pending), names,
                                       every), slide_size_x0, margin=margin)
        return TruthRaster(p, frame, _draw_geometry(truth.geometry, frame), names, every,
                           n_polygons)
    if pending:
        x0, y0, x1, y1 = _draw_coverage(out, pending, frame, slide_size_x0)
        lo_x, lo_y, hi_x, hi_y = min(lo_x, x0), min(lo_y, y0), max(hi_x, x1), max(hi_y, y1)
    # The coverage's bounds, checked as check_truth_fits checks them (its line if outside).
    check_truth_fits(Truth(p, (), shapely.box(lo_x, lo_y, hi_x, hi_y), names, every),
                     slide_size_x0, margin=margin)
    return TruthRaster(p, frame, out.done(), names, every, n_polygons)
