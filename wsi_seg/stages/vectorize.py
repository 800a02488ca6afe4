"""Thresholded probability mosaic -> tumour polygons (with holes) in level-0 slide pixels.

Algorithm, one chunk of a pyramid level at a time, ``workers`` chunks at once in a thread pool
(OpenCV, NumPy and GEOS release the GIL), their results taken in chunk order so the output does
not depend on the threads. Memory: ``2 * workers`` chunks in flight, the edge strips of two
chunk rows, and the exact pixel-edge outlines of the regions that cross the current chunk row
(a region is finished and simplified as soon as a chunk row ends below it), so it grows with
the boundary length of the largest regions, not with the slide area:

1. Threshold the chunk (``value >= threshold_u8(threshold)``), decide each ambiguous 2x2
   saddle (two pixels touching only at a corner) by the mean of its four values, as marching
   squares does (:func:`resolve_saddles`: one pixel changes per saddle), and label the
   8-connected components (OpenCV): each component's pixel count, probability sum and maximum
   come from one ``bincount``. Components whose bounding box is too small to ever reach
   ``min_area_um2`` and that do not touch a chunk border are dropped before any contour is
   traced, and so are holes whose box is (a noisy map has tens of thousands of pinholes);
   the rest is decided on exact areas once traced: a hole below ``min_area_um2`` is filled,
   then a region below it is dropped - the same test whether or not chunk borders cut it.
2. Trace all rings with ``cv2.findContours(RETR_LIST)`` on the mask **upsampled 2x** (and
   padded by one zero pixel). In the 2x mask every boundary sub-pixel sits in the corner of its
   original pixel that faces the outside, so ``point // 2`` is exactly a pixel *corner*: the
   rings run along pixel edges, a polygon's area equals its pixel count, and rasterising it
   again gives back the same pixels (checked in ``tests/test_vectorize.py``). Shells and holes
   are told apart by their sense (signed area), and each ring finds its component by the label
   of a pixel it runs along; ``RETR_CCOMP`` would do this bookkeeping in time quadratic in the
   holes of one component. With the saddles resolved no ring pinches, so polygons are valid by
   construction, and closed components' polygons are built in bulk (shapely arrays); a saddle
   that straddles a chunk border is not seen by either chunk, so shells are still checked
   and the rare invalid polygon is repaired (``make_valid``).
3. Pieces that touch an interior chunk border get a global id, written into the chunk's four
   edge strips; facing strips of neighbouring chunks give the pairs of pieces that are
   8-adjacent across the border (union-find, no geometric search). Each group's *shells* are
   unioned; their rings get a vertex at every pixel corner on a chunk border, so pieces share
   identical segments there and form a polygon coverage (``shapely.coverage_union_all``,
   several times faster than an overlay union, and exact: integer coordinates), and
   the pieces' holes, which never touch a chunk border, are put back afterwards, each piece's
   into the part of the union that holds the piece - unioning hole-riddled pieces directly is
   orders of magnitude slower.
4. Each region is mapped to level 0 (pixel ``(row, col)`` of level ``L`` covers
   ``[origin_x0 + col*s, origin_x0 + (col+1)*s)`` with ``s = geom.level_scale(L)``),
   simplified (``simplify_um``, topology-preserving Douglas-Peucker; ring by ring for a
   polygon with very many holes and vertices, see :func:`simplify_polygons`), snapped to
   QuPath's 0.01 px grid with ``shapely.set_precision`` (which keeps it valid) unless the
   corners already lie on it (``s`` and the origin multiples of 0.01), and parts whose
   simplified area is below ``min_area_um2`` are dropped too (no reported area is below it).

Saddles across chunk borders: two pixels that touch only at a corner there belong to one
region, written as polygons touching at one point (each valid) that share the region's
probability statistics.
"""

from __future__ import annotations

import itertools
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.stages.mosaic import Mosaic

QUPATH_GRID_PX = 0.01  # QuPath 0.6+ snaps every imported coordinate to this grid (FORMATS.md)
_BATCH = 256  # complete groups of open pieces merged and finished per pool task


class ArrayLike2D(Protocol):
    """Anything sliceable like a 2-D array (numpy, zarr) with a ``shape``."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __getitem__(self, key: Any) -> Any: ...


@dataclass(frozen=True)
class RegionPolygon:
    """One tumour region.

    Attributes:
        polygon: valid shapely Polygon (holes allowed) in level-0 slide pixels, on the 0.01 px grid.
        mean_prob, max_prob: mean and maximum probability (0..1) of the region's foreground
            pixels at the vectorized pyramid level.
        area_um2: polygon area in square micrometres (holes excluded).
        perimeter_um: length of all rings in micrometres.
    """

    polygon: Polygon
    mean_prob: float
    max_prob: float
    area_um2: float
    perimeter_um: float


@dataclass(frozen=True)
class PixelFrame:
    """How a 2-D raster sits on the slide: pixel ``(row, col)`` covers the level-0 rectangle
    ``[origin_x0 + col*px_x0, origin_x0 + (col+1)*px_x0) x [origin_y0 + row*px_x0, ...)``.

    Attributes:
        height_px, width_px: raster shape.
        origin_x0, origin_y0: level-0 position of the raster's top-left pixel corner.
        px_x0: level-0 slide pixels per raster pixel.
        mpp0: micrometres per level-0 slide pixel.
        chunk_px: processing chunk edge in raster pixels (ideally the storage chunk).
    """

    height_px: int
    width_px: int
    origin_x0: float
    origin_y0: float
    px_x0: float
    mpp0: float
    chunk_px: int = 1024

    @classmethod
    def of_mosaic(cls, mosaic: Mosaic, level: int) -> PixelFrame:
        """The frame of pyramid level ``level`` of a mosaic."""
        g = mosaic.geom
        rows, cols = g.level_shape(level)
        return cls(rows, cols, g.origin_x0, g.origin_y0, g.level_scale(level),
                   g.mpp / g.level0_px_per_px, g.chunk_px)

    def on_qupath_grid(self) -> bool:
        """Whether every pixel corner maps to a level-0 point on QuPath's 0.01 px grid.

        Then traced polygons (and their Douglas-Peucker simplifications, which keep a subset
        of the corners) are already on the grid, valid as they are, and need no snapping.
        """
        return all(abs(v / QUPATH_GRID_PX - round(v / QUPATH_GRID_PX)) < 1e-6
                   for v in (self.px_x0, self.origin_x0, self.origin_y0))

    def chunks(self) -> Iterator[tuple[int, int, int, int]]:
        """Chunk windows ``(row0, col0, rows, cols)`` in raster pixels, row-major."""
        c = self.chunk_px
        for row0 in range(0, self.height_px, c):
            for col0 in range(0, self.width_px, c):
                yield row0, col0, min(c, self.height_px - row0), min(c, self.width_px - col0)

    def to_level0(self, geom: Any) -> Any:
        """Map geometries from raster pixel edges to level-0 pixels (vectorized)."""
        s, origin = self.px_x0, np.array([self.origin_x0, self.origin_y0])

        def scale(xy: np.ndarray) -> np.ndarray:  # xy is shapely's own copy: reuse it
            xy *= s
            xy += origin
            return xy

        return shapely.transform(geom, scale)

    def from_level0(self, geom: Any) -> Any:
        """Map geometries from level-0 pixels to raster pixel-edge coordinates (vectorized)."""
        s, ox, oy = self.px_x0, self.origin_x0, self.origin_y0
        return shapely.transform(geom, lambda xy: (xy - np.array([ox, oy])) / s)


def threshold_u8(threshold: float) -> int:
    """Smallest stored value (probability * 255) that counts as tumour: ``p >= threshold``.

    Shared by vectorization and scoring so both see the same foreground.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return max(1, math.ceil(threshold * 255 - 1e-9))


@dataclass
class _Piece:
    """A part of a region cut by chunk borders, in raster pixel-edge coordinates.

    The shell is kept apart from the holes: holes never touch a chunk border, so merging
    pieces across borders only needs their shells (far cheaper for ragged, hole-riddled maps).
    """

    shell: BaseGeometry  # valid Polygon/MultiPolygon: the outer rings, with pinch holes only
    holes: np.ndarray  # shapely LinearRings: simple hole rings on integer (x, y) corners
    count: int  # foreground pixels
    total: int  # sum of stored values (0..255) over them
    vmax: int  # maximum stored value
    suspect: bool = False  # a ring needed repair: check the final polygons' validity


@dataclass(frozen=True)
class _Batch:
    """Regions as arrays, before mapping to level 0 (one row per polygon).

    Attributes:
        polys: shapely Polygons in raster pixel-edge coordinates.
        stats: ``(n, 3)`` int64: foreground pixel count, sum of stored values, maximum value
            of the region the polygon belongs to.
        suspect: whether the polygon may be invalid (a ring needed repair).
    """

    polys: np.ndarray
    stats: np.ndarray
    suspect: np.ndarray

    @staticmethod
    def empty() -> _Batch:
        return _Batch(np.empty(0, dtype=object), np.empty((0, 3), dtype=np.int64),
                      np.empty(0, dtype=bool))

    @staticmethod
    def concat(batches: list[_Batch]) -> _Batch:
        if not batches:
            return _Batch.empty()
        return _Batch(np.concatenate([b.polys for b in batches]),
                      np.concatenate([b.stats for b in batches]),
                      np.concatenate([b.suspect for b in batches]))

    def __len__(self) -> int:
        return int(self.polys.size)


@dataclass
class _Strips:
    """Global open-piece ids (-1: none) along a chunk's four edges, for border merging."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray

    def shifted(self, offset: int) -> _Strips:
        """The strips with chunk-local ids made global (``offset`` added to every id)."""
        def shift(a: np.ndarray) -> np.ndarray:
            return np.where(a >= 0, a + offset, -1)
        return _Strips(shift(self.top), shift(self.bottom), shift(self.left), shift(self.right))


def _component_stats(labels: np.ndarray, values: np.ndarray, fg: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: pixel count, value sum and value max over foreground pixels."""
    lab = labels[fg]  # int32 from OpenCV
    val = values[fg]
    if n * 256 <= 1 << 22:  # one histogram per label: count, sum and max in a single pass
        key = lab * 256  # int32 suffices: n * 256 < 2**31 here
        key += val
        hist = np.bincount(key, minlength=n * 256).reshape(n, 256)
        counts = hist.sum(axis=1)
        sums = hist @ np.arange(256, dtype=np.int64)
        vmax = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
        return counts, sums, vmax
    lab64 = lab.astype(np.int64)
    counts = np.bincount(lab64, minlength=n)
    sums = np.bincount(lab64, weights=val, minlength=n).astype(np.int64)
    key = np.sort(lab64 * 256 + val)  # many labels (noise): sort instead of a huge histogram
    last = np.r_[np.nonzero(np.diff(key >> 8))[0], key.size - 1]
    vmax = np.zeros(n, dtype=np.int64)
    vmax[key[last] >> 8] = key[last] & 255
    return counts, sums, vmax


#: Pixels read around a chunk to decide the saddles near its border. A decision reaches one
#: pixel further per round of :func:`resolve_saddles`; four deciding rounds and the filling
#: rounds after them end within a few pixels on real and noise maps, so 16 px gives every
#: chunk the whole-raster decisions (a pathological staircase of saddles longer than the halo
#: could still be decided differently).
SADDLE_HALO_PX = 16


def resolve_saddles(fg: np.ndarray, values: np.ndarray, fg_min: int,
                    max_rounds: int = 4) -> np.ndarray:
    """Decide every 2x2 checkerboard (two pixels touching only at a corner) by the data.

    Such a saddle is ambiguous, and as pixel-edge polygons it would pinch (invalid). As in
    marching squares' asymptotic decider, the corner is connected when the mean of the four
    values is at least the threshold: then the higher-valued background pixel is filled;
    otherwise the lower-valued foreground pixel is cleared. Only saddle pixels change. A change
    can create a new saddle next door, so this repeats; after ``max_rounds`` rounds remaining
    saddles are filled (monotone, so it ends).

    Returns a new boolean mask without 2x2 checkerboards.
    """
    fg = fg.astype(bool, copy=True)
    v = values  # read only at saddles, cast there (a full-chunk cast costs more than it saves)
    rounds = 0
    while True:
        a, b, c, d = fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:]
        main = a & d & ~b & ~c  # foreground on the main diagonal
        anti = b & c & ~a & ~d  # foreground on the anti-diagonal
        if not (main.any() or anti.any()):
            return fg
        r, q = np.nonzero(main | anti)  # top-left corner of each saddle
        is_main = main[r, q]
        # (row, col) of the two foreground and the two background pixels of each saddle
        f1 = (r, np.where(is_main, q, q + 1))
        f2 = (r + 1, np.where(is_main, q + 1, q))
        b1 = (r, np.where(is_main, q + 1, q))
        b2 = (r + 1, np.where(is_main, q, q + 1))
        vf1, vf2, vb1, vb2 = (v[p].astype(np.int32) for p in (f1, f2, b1, b2))
        connect = (vf1 + vf2 + vb1 + vb2 >= 4 * fg_min) | (rounds >= max_rounds)
        fill = tuple(np.where(vb1 >= vb2, b1[k], b2[k])[connect] for k in (0, 1))
        clear = tuple(np.where(vf1 <= vf2, f1[k], f2[k])[~connect] for k in (0, 1))
        fg[fill] = True
        fg[clear] = False
        rounds += 1


@dataclass(frozen=True)
class _Rings:
    """The rings of one traced mask as flat arrays: a noisy chunk has 10^5 of them, too many
    for a Python object (or a shapely call) each.

    Attributes:
        coords: ``(n_points, 2)`` int64 pixel corners ``(x, y)``, ring after ring, each open
            (first point not repeated), in OpenCV's order.
        starts: ``(n_rings + 1,)`` offset of each ring in ``coords``; the last is ``n_points``.
        pixel: ``(n_rings, 2)`` ``(row, col)`` of a foreground pixel the ring runs along: its
            component's label is the shell's, or for a hole the enclosing component's.
        area2: ``(n_rings,)`` twice the signed ring area in px²: negative for shells (outer
            borders), positive for holes (OpenCV traces the two kinds in opposite senses).
    """

    coords: np.ndarray
    starts: np.ndarray
    pixel: np.ndarray
    area2: np.ndarray

    @property
    def is_hole(self) -> np.ndarray:
        return self.area2 > 0

    def points_of(self, rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Corners of the given rings (in that order) and, per corner, its ring's position."""
        lengths = self.starts[rings + 1] - self.starts[rings]
        pos = np.repeat(np.arange(rings.size), lengths)
        first = np.repeat(self.starts[rings] - np.cumsum(lengths) + lengths, lengths)
        return self.coords[first + np.arange(pos.size)], pos


def _trace(mask: np.ndarray) -> _Rings:
    """Exact pixel-edge rings (shells and holes) of a binary mask without 2x2 checkerboards.

    ``RETR_LIST`` and not ``RETR_CCOMP``: the latter links every hole to its parent in time
    quadratic in the holes of one component (a pinhole-riddled 1024 px chunk: 30 s against
    0.4 s); shells and holes are told apart by their sense instead, and a hole finds its
    component by the label of a pixel it runs along.
    """
    h, w = mask.shape
    up = cv2.resize(mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(up, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        empty = np.empty((0, 2), dtype=np.int64)
        return _Rings(empty, np.zeros(1, dtype=np.int64), empty, np.empty(0, dtype=np.int64))
    sizes = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    starts = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    up_points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    # With the 1-px padding, sub-pixel p lies in original pixel (p - 1) // 2 and maps to the
    # original corner p // 2 (module docstring).
    first = up_points[starts[:-1]]
    pixel = np.c_[(first[:, 1] - 1) // 2, (first[:, 0] - 1) // 2]
    coords = up_points // 2
    nxt = np.arange(1, coords.shape[0] + 1)
    nxt[starts[1:] - 1] = starts[:-1]  # each ring closes on its own first corner
    cross = coords[:, 0] * coords[nxt, 1] - coords[nxt, 0] * coords[:, 1]
    return _Rings(coords, starts, pixel, np.add.reduceat(cross, starts[:-1]))


def densify_on_grid_lines(ring: np.ndarray, spacing: int) -> np.ndarray:
    """Put a vertex at every integer point of the ring's segments that lie on a grid line
    (``x`` or ``y`` a multiple of ``spacing``: the chunk borders).

    Two pieces that meet across a chunk border then share identical unit segments there, which
    makes them a valid polygon *coverage*, and ``shapely.coverage_union_all`` merges them
    several times faster than a general overlay union.

    Args:
        ring: ring of integer (x, y) vertices, shape (n, 2), closed or not.
        spacing: grid spacing (chunk edge) in pixels.
    """
    p = np.asarray(ring, dtype=np.int64)
    if not np.array_equal(p[0], p[-1]):
        p = np.vstack([p, p[:1]])  # OpenCV rings are open; the closing segment counts too
    d = p[1:] - p[:-1]
    on_line = (((d[:, 0] == 0) & (p[:-1, 0] % spacing == 0))
               | ((d[:, 1] == 0) & (p[:-1, 1] % spacing == 0)))
    steps = np.where(on_line, np.abs(d).sum(axis=1), 1)
    steps[(d == 0).all(axis=1)] = 0  # repeated vertices: drop
    if (steps == 1).all():
        return p
    seg = np.repeat(np.arange(len(d)), steps)
    k = np.arange(seg.size) - np.repeat(np.cumsum(steps) - steps, steps)
    points = p[:-1][seg] + np.sign(d)[seg] * k[:, None]
    return np.vstack([points, p[:1]])


def _areal(geom: BaseGeometry) -> list[Polygon]:
    return [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]


def _piece(shell: np.ndarray, holes: np.ndarray, count: int, total: int, vmax: int,
           spacing: int) -> _Piece:
    """An open component (one cut by a chunk border) as a piece.

    Without saddles (:func:`resolve_saddles`) every ring is simple and no hole touches
    another ring, so the polygon is valid by construction. The shell is still checked (one
    cheap test per open component); should it pinch anyway, it is repaired and the piece
    marked ``suspect`` so its final polygons get the full (costlier) validity check. The
    shell is densified on the chunk borders (``spacing``) for the coverage union.
    """
    shell_poly = Polygon(densify_on_grid_lines(shell, spacing))
    if shell_poly.is_valid:
        return _Piece(shell_poly, holes, count, total, vmax)
    repaired = shapely.make_valid(shapely.polygons(shapely.linearrings(shell), holes=holes))
    return _Piece(shapely.MultiPolygon(_areal(repaired)), np.empty(0, dtype=object),
                  count, total, vmax, True)


def _ring_order(rings: _Rings, chosen: np.ndarray, key: np.ndarray) -> np.ndarray:
    """The rings ``chosen`` (a boolean mask) sorted by ``key`` (their component), each
    component's shell before its holes, holes in OpenCV's order (stable sort)."""
    idx = np.nonzero(chosen)[0]
    return idx[np.lexsort((rings.is_hole[idx], key[idx]))]


def _closed_batch(rings: _Rings, ring_label: np.ndarray, chosen: np.ndarray,
                  offset: np.ndarray, stats: np.ndarray) -> _Batch:
    """Polygons of the components that lie inside the chunk, built in bulk (shapely arrays).

    Args:
        rings: the chunk's traced rings; ``ring_label`` the component label of each.
        chosen: rings to use (the closed components' shells and their unfilled holes).
        offset: ``(x, y)`` of the traced crop in the level's pixel coordinates.
        stats: ``(n_labels, 3)`` count, value sum, value maximum per label.
    """
    idx = _ring_order(rings, chosen, ring_label)
    if idx.size == 0:
        return _Batch.empty()
    lab = ring_label[idx]
    points, ring_pos = rings.points_of(idx)
    ring_geoms = shapely.linearrings((points + offset).astype(np.float64), indices=ring_pos)
    first = np.r_[True, lab[1:] != lab[:-1]]  # the shell of each component comes first
    polys = shapely.polygons(ring_geoms, indices=np.cumsum(first) - 1)
    # Valid by construction (see _piece); a cheap check of the shells catches the unexpected
    # (a pinch, or a component with no or two outer borders), which _finish then repairs.
    shell_count = np.add.reduceat((~rings.is_hole[idx]).astype(np.int64), np.nonzero(first)[0])
    suspect = (shell_count != 1) | rings.is_hole[idx[first]]
    suspect |= ~shapely.is_valid(shapely.polygons(ring_geoms[first]))
    return _Batch(polys, stats[lab[first]], suspect)


def _open_pieces(rings: _Rings, ring_label: np.ndarray, chosen: np.ndarray,
                 offset: np.ndarray, local_id: np.ndarray, stats: np.ndarray,
                 spacing: int) -> list[_Piece]:
    """Pieces of the components cut by a chunk border, indexed by their chunk-local id.

    Args:
        local_id: per label, the chunk-local open-piece id (-1: closed).
        spacing: the chunk edge (pixels), where shells get a vertex at every pixel corner.
        (others as :func:`_closed_batch`)
    """
    n_open = int(local_id.max()) + 1
    empty = _Piece(Polygon(), np.empty(0, dtype=object), 0, 0, 0)
    pieces = [empty] * n_open  # a label without a ring is not expected; keep ids aligned
    idx = _ring_order(rings, chosen, local_id[ring_label])
    if idx.size == 0:
        return pieces
    ids = local_id[ring_label[idx]]
    holes = np.empty(0, dtype=object)
    is_hole = rings.is_hole[idx]
    if is_hole.any():
        points, ring_pos = rings.points_of(idx[is_hole])
        holes = shapely.linearrings((points + offset).astype(np.float64), indices=ring_pos)
    hole_at = np.cumsum(is_hole) - is_hole  # position in `holes` of ring k, if a hole
    bounds = np.r_[np.nonzero(np.r_[True, ids[1:] != ids[:-1]])[0], idx.size]
    for lo, hi in itertools.pairwise(bounds.tolist()):
        r = idx[lo]
        shell = rings.coords[rings.starts[r]:rings.starts[r + 1]] + offset
        own = holes[hole_at[lo + 1]:hole_at[lo + 1] + hi - lo - 1] if hi > lo + 1 else holes[:0]
        count, total, vmax = (int(v) for v in stats[ring_label[r]])
        pieces[int(ids[lo])] = _piece(shell, own, count, total, vmax, spacing)
    return pieces


def _fill_small_holes(fg: np.ndarray, min_px: float) -> np.ndarray:
    """``fg`` with the holes whose bounding box is below ``min_px`` pixels filled.

    They would be filled anyway (a hole's ring encloses at most its box), islands and all,
    but a noisy map has 10^5 pinholes a chunk, cheaper to fill than to trace. Labels and
    statistics stay those of the unfilled mask: a filled pixel never lies on a remaining ring
    (without 2x2 checkerboards no background pixel touches another hole or the outside).
    """
    _, labels, cc, _ = cv2.connectedComponentsWithStats((~fg).view(np.uint8), connectivity=4)
    h, w = fg.shape
    left, top = cc[:, cv2.CC_STAT_LEFT], cc[:, cv2.CC_STAT_TOP]
    width, height = cc[:, cv2.CC_STAT_WIDTH], cc[:, cv2.CC_STAT_HEIGHT]
    inside = (left > 0) & (top > 0) & (left + width < w) & (top + height < h)
    small = inside & (width.astype(np.int64) * height < min_px)
    small[0] = False  # label 0: the foreground
    return fg | small[labels] if small.any() else fg


def _chunk_pieces(block: np.ndarray, row0: int, col0: int, frame: PixelFrame, fg_min: int,
                  min_px: float, decided: np.ndarray | None = None
                  ) -> tuple[_Batch, list[_Piece], _Strips]:
    """Closed regions, open pieces (chunk-local ids 0, 1, ...) and edge strips of one chunk.

    Coordinates are raster pixel edges of the whole level; ``min_px`` is the smallest region
    (and hole) kept, in raster pixels. ``decided`` is the chunk's foreground with its saddles
    already decided over a halo (:func:`_chunk_work`); None decides them inside the chunk.
    """
    rows, cols = block.shape
    strips = _Strips(np.full(cols, -1), np.full(cols, -1), np.full(rows, -1), np.full(rows, -1))
    fg0 = block >= fg_min if decided is None else decided
    if not fg0.any():
        return _Batch.empty(), [], strips
    if fg0.all():  # inside a large region: one rectangle, nothing to label or trace
        touches = [row0 > 0, row0 + rows < frame.height_px, col0 > 0,
                   col0 + cols < frame.width_px]
        corners = np.array([[col0, row0], [col0 + cols, row0], [col0 + cols, row0 + rows],
                            [col0, row0 + rows], [col0, row0]])
        stats = np.array([[rows * cols, int(block.sum(dtype=np.int64)), int(block.max())]])
        if not any(touches):
            return (_Batch(np.array([Polygon(corners)], dtype=object), stats,
                           np.zeros(1, dtype=bool)), [], strips)
        count, total, vmax = (int(v) for v in stats[0])
        box = _Piece(Polygon(densify_on_grid_lines(corners, frame.chunk_px)),
                     np.empty(0, dtype=object), count, total, vmax)
        for strip in (strips.top, strips.bottom, strips.left, strips.right):
            strip[:] = 0
        return _Batch.empty(), [box], strips
    rows_any, cols_any = np.nonzero(fg0.any(axis=1))[0], np.nonzero(fg0.any(axis=0))[0]
    r0, r1, c0, c1 = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
    values = block[r0:r1, c0:c1]
    fg = (resolve_saddles(fg0[r0:r1, c0:c1], values, fg_min) if decided is None
          else fg0[r0:r1, c0:c1])
    n, labels, cc, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    stats = np.stack(_component_stats(labels, values, fg, n), axis=1).astype(np.int64)

    # Which components touch a chunk border shared with another chunk (level coordinates).
    left = cc[:, cv2.CC_STAT_LEFT] + c0 + col0
    top = cc[:, cv2.CC_STAT_TOP] + r0 + row0
    right = left + cc[:, cv2.CC_STAT_WIDTH]
    bottom = top + cc[:, cv2.CC_STAT_HEIGHT]
    is_open = (((left == col0) & (col0 > 0))
               | ((right == col0 + cols) & (col0 + cols < frame.width_px))
               | ((top == row0) & (row0 > 0))
               | ((bottom == row0 + rows) & (row0 + rows < frame.height_px)))
    is_open[0] = False  # background label
    # A closed component whose bounding box is below min_px can never reach it, not even
    # with its holes filled: dropped before any contour is traced. (Not by its pixel count:
    # a ring with a small hole can reach min_px once the hole is filled, and would then be
    # kept or not depending on whether a chunk border cuts it.)
    box_px = cc[:, cv2.CC_STAT_WIDTH].astype(np.int64) * cc[:, cv2.CC_STAT_HEIGHT]
    keep = is_open | (box_px >= min_px)
    keep[0] = False
    if not keep.any():
        return _Batch.empty(), [], strips
    if not keep[1:].all():
        fg = keep[labels]

    local_id = np.full(n, -1, dtype=np.int64)
    local_id[is_open] = np.arange(int(is_open.sum()))
    if r0 == 0:
        strips.top[c0:c1] = local_id[labels[0, :]]
    if r1 == rows:
        strips.bottom[c0:c1] = local_id[labels[-1, :]]
    if c0 == 0:
        strips.left[r0:r1] = local_id[labels[:, 0]]
    if c1 == cols:
        strips.right[r0:r1] = local_id[labels[:, -1]]

    if min_px > 0:
        fg = _fill_small_holes(fg, min_px)
    rings = _trace(fg.view(np.uint8))
    ring_label = labels[rings.pixel[:, 0], rings.pixel[:, 1]]
    # Holes below min_px are filled (left out), islands and all: an island in such a hole is
    # smaller still and is dropped too.
    chosen = ~rings.is_hole | (rings.area2 >= 2 * min_px)
    ring_open = is_open[ring_label]
    offset = np.array([c0 + col0, r0 + row0])
    closed = _closed_batch(rings, ring_label, chosen & ~ring_open, offset, stats)
    opened = (_open_pieces(rings, ring_label, chosen & ring_open, offset, local_id, stats,
                           frame.chunk_px) if is_open.any() else [])
    return closed, opened, strips


def _pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Id pairs of two facing edge strips that are 8-adjacent across the border."""
    both = [(a, b), (a[:-1], b[1:]), (a[1:], b[:-1])]
    out = [np.c_[x[(x >= 0) & (y >= 0)], y[(x >= 0) & (y >= 0)]] for x, y in both]
    return np.concatenate(out) if out else np.empty((0, 2), dtype=np.int64)


def _border_pairs(strips: dict[tuple[int, int], _Strips], i: int, j: int) -> list[np.ndarray]:
    """Adjacent open-piece id pairs between chunk (i, j) and its already-processed neighbours."""
    me = strips[(i, j)]
    out = []
    if (i, j - 1) in strips:
        out.append(_pairs(strips[(i, j - 1)].right, me.left))
    if (i - 1, j) in strips:
        out.append(_pairs(strips[(i - 1, j)].bottom, me.top))
    corner = strips.get((i - 1, j - 1))  # diagonal neighbours touch at one pixel corner
    if corner is not None and corner.bottom[-1] >= 0 and me.top[0] >= 0:
        out.append(np.array([[corner.bottom[-1], me.top[0]]]))
    corner = strips.get((i - 1, j + 1))
    if corner is not None and corner.bottom[0] >= 0 and me.top[-1] >= 0:
        out.append(np.array([[corner.bottom[0], me.top[-1]]]))
    return out


class _OpenRegions:
    """Pieces cut by chunk borders, grouped by union-find as border pairs arrive.

    A group is complete once none of its pieces lies on the bottom edge of the chunk row just
    finished (only those can continue downwards); it is then merged and released, so memory
    holds only the regions that cross the current chunk row.
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.pieces: dict[int, _Piece] = {}

    def add(self, first_id: int, pieces: list[_Piece]) -> None:
        assert first_id == len(self.parent)
        for k, piece in enumerate(pieces):
            self.parent.append(first_id + k)
            self.pieces[first_id + k] = piece

    def find(self, i: int) -> int:
        parent = self.parent
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def link(self, pairs: Iterable[np.ndarray]) -> None:
        for arr in pairs:
            for a, b in arr.tolist():
                ra, rb = self.find(a), self.find(b)
                if ra != rb:
                    self.parent[max(ra, rb)] = min(ra, rb)

    def pop_complete(self, active_ids: np.ndarray | None) -> Iterator[list[_Piece]]:
        """Release every group with no piece in ``active_ids`` (None: all groups)."""
        active = set() if active_ids is None else {self.find(int(g)) for g in active_ids}
        groups: dict[int, list[int]] = {}
        for gid in self.pieces:
            root = self.find(gid)
            if root not in active:
                groups.setdefault(root, []).append(gid)
        for members in groups.values():
            yield [self.pieces.pop(g) for g in members]


def _merge_group(live: list[_Piece], min_hole_px: float) -> _Batch:
    """One region's polygons from its pieces: shells unioned, the holes put back.

    Holes that the union itself closes (a ring of tumour across chunk borders) are filled when
    smaller than ``min_hole_px`` raster pixels, like holes found inside one chunk.
    """
    suspect = any(p.suspect for p in live)
    if len(live) == 1:
        shell = live[0].shell
    elif suspect:  # a repaired shell: not densified, general union
        shell = shapely.union_all([p.shell for p in live])
    else:  # exact pixel partition with matching border vertices: a valid coverage
        shell = shapely.coverage_union_all([p.shell for p in live])
    parts = _areal(shell)
    if min_hole_px > 0 and any(p.interiors for p in parts):
        parts = [Polygon(p.exterior, [r for r in p.interiors if Polygon(r).area >= min_hole_px])
                 for p in parts]
    owned: list[list[np.ndarray]] = [[] for _ in parts]
    for piece in live:
        if piece.holes.size:
            owned[_part_of(piece, parts) if len(parts) > 1 else 0].append(piece.holes)
    polys = [shapely.polygons(p.exterior, holes=np.concatenate(
                 [np.array(list(p.interiors), dtype=object), *own])) if own else p
             for p, own in zip(parts, owned, strict=True)]
    stats = np.array([sum(p.count for p in live), sum(p.total for p in live),
                      max(p.vmax for p in live)], dtype=np.int64)
    return _Batch(np.array(polys, dtype=object), np.tile(stats, (len(polys), 1)),
                  np.full(len(polys), suspect))


def _part_of(piece: _Piece, parts: list[Polygon]) -> int:
    """Which part of a region (shells joined only at corners) holds a piece.

    A point inside the piece's shell lies inside exactly one part, and not in that part's
    holes (the union closed those outside every piece). Testing the *hole's* point against
    the parts' outer rings instead is wrong when one part sits in another's hole: its holes
    then went to the outer part, nested in that part's hole (an invalid polygon).
    """
    inside = shapely.point_on_surface(piece.shell)
    x, y = shapely.get_x(inside), shapely.get_y(inside)
    for k, part in enumerate(parts):
        minx, miny, maxx, maxy = part.bounds
        if minx < x < maxx and miny < y < maxy and shapely.contains_xy(part, x, y):
            return k
    return int(np.argmin(shapely.distance(np.array(parts, dtype=object), inside)))


# GEOS's topology-preserving simplifier takes time ~ vertices x rings (see simplify_polygons);
# above this product a polygon is simplified ring by ring. A tumour outline with a few hundred
# gland lumens stays below it (same result as before); a noise map's giant region does not.
_RINGWISE_WORK = 1 << 26


def simplify_polygons(geoms: np.ndarray, tolerance: float, workers: int = 1) -> np.ndarray:
    """Topology-preserving Douglas-Peucker simplification of an array of Polygons.

    As ``shapely.simplify(..., preserve_topology=True)``, but polygons with many rings and
    vertices go through :func:`_simplify_ringwise`: GEOS tests every shortcut it takes
    against every ring of the polygon (so no ring jumps over another), so its time grows as
    vertices x rings: 4 s for a 2048 px noise map's 10^6 vertices and 370 holes, 65 s at
    4096 px, hours at 8192 px.

    Args:
        geoms: Polygons (object array); tolerance: in their coordinate units.
        workers: threads sharing the rings of a large many-ring polygon.

    Returns:
        Valid Polygons or, rarely, MultiPolygons (where rings simplified apart crossed).
    """
    out = np.array(geoms, dtype=object, copy=True)
    if out.size == 0:
        return out
    rings = shapely.get_num_interior_rings(out).astype(np.int64) + 1  # int32 would overflow
    work = rings * shapely.get_num_coordinates(out)
    many = work >= _RINGWISE_WORK
    out[~many] = shapely.simplify(out[~many], tolerance, preserve_topology=True)
    for k in np.nonzero(many)[0]:
        out[k] = _simplify_ringwise(out[k], tolerance, workers)
    return out


def _simplify_ringwise(poly: Polygon, tolerance: float, workers: int) -> Polygon:
    """Topology-preserving simplification of a polygon with many holes, in time about linear
    in its vertices.

    Each ring is simplified on its own (GEOS, topology-preserving: it stays simple), in
    ``workers`` threads. Rings far apart cannot interfere, as each moves little. Where the
    simplified rings cross or touch, or a hole leaves the shell or enters another hole, those
    holes get their exact rings back, and so does the shell near them (its shortcuts within
    a few tolerances of such a hole get their original vertices back), until nothing
    conflicts: the exact polygon is valid, so at worst this ends there.
    """
    rings = np.array([poly.exterior, *poly.interiors], dtype=object)
    simple = _simplify_rings(rings, tolerance, workers)
    exact = np.zeros(rings.size, dtype=bool)  # holes given their exact ring back
    near = np.zeros(rings.size, dtype=bool)  # holes the shell is exact next to
    for _ in range(8):
        pairs = _ring_conflicts(simple)
        # Rings that touch at a point in the exact polygon (valid) still do: no conflict.
        a, b = pairs[:, 0], pairs[:, 1]
        pairs = pairs[~np.where(a == 0, exact[b] & near[b], exact[a] & exact[b])]
        if not pairs.size:
            # Valid: rings simple (GEOS), no new contacts, holes inside the shell and apart.
            # (Not checked again: that costs as much as a third of the simplification.)
            return shapely.polygons(simple[0], holes=simple[1:])
        holes = np.unique(pairs[pairs > 0])
        simple[holes] = rings[holes]
        exact[holes] = True
        by_shell = pairs[pairs[:, 0] == 0, 1]
        if by_shell.size:
            # GEOS strays up to ~1.55 tolerances from a ring, so 3 leave a margin.
            simple[0] = _restore_near(rings[0], simple[0], rings[by_shell], 3 * tolerance)
            near[by_shell] = True
    return poly  # rings still conflict after many rounds (not seen): keep the exact polygon


def _restore_near(exact: Any, simple: Any, near: np.ndarray, distance: float) -> Any:
    """``simple`` (a simplification of the ring ``exact``: a subset of its vertices in ring
    order) with the original vertices put back along every shortcut that passes within
    ``distance`` of one of the geometries ``near``."""
    orig = shapely.get_coordinates(exact)[:-1]  # open rings: the closing vertex dropped
    kept = shapely.get_coordinates(simple)[:-1]
    n = orig.shape[0]
    # Each kept vertex's position in the exact ring (vertices do not repeat there, except
    # OpenCV's doubled corners of hole rings, which sit next to each other).
    key = orig[:, 0] + 1j * orig[:, 1]
    order = np.argsort(key, kind="stable")
    at = order[np.searchsorted(key[order], kept[:, 0] + 1j * kept[:, 1])]
    shortcuts = shapely.linestrings(np.stack([kept, np.roll(kept, -1, axis=0)], axis=1))
    hit = shapely.STRtree(shortcuts).query(near, predicate="dwithin", distance=distance)[1]
    if hit.size == 0:
        return simple
    span = np.ones(at.size, dtype=np.int64)
    span[hit] = (np.roll(at, -1)[hit] - at[hit]) % n  # the shortcut's vertices, its start on
    span[span == 0] = 1
    step = np.arange(span.sum()) - np.repeat(np.cumsum(span) - span, span)
    return shapely.linearrings(orig[(np.repeat(at, span) + step) % n])


def _simplify_rings(rings: np.ndarray, tolerance: float, workers: int) -> np.ndarray:
    """Each ring simplified on its own (topology-preserving), slices of similar vertex counts
    in ``workers`` threads when there are many vertices (GEOS releases the GIL)."""
    size = shapely.get_num_coordinates(rings)
    if workers <= 1 or size.sum() < 200_000:
        return np.asarray(shapely.simplify(rings, tolerance, preserve_topology=True))
    cuts = np.searchsorted(np.cumsum(size), np.linspace(0, size.sum(), 4 * workers + 1)[1:-1])
    with ThreadPoolExecutor(workers, thread_name_prefix="simplify") as pool:
        parts = pool.map(partial(shapely.simplify, tolerance=tolerance, preserve_topology=True),
                         np.split(rings, cuts))
        return np.concatenate(list(parts))


def _ring_conflicts(rings: np.ndarray) -> np.ndarray:
    """Pairs of rings (0: the shell, 1...: holes) that keep the polygon from being valid.

    A pair conflicts when its rings touch or cross, or when the hole lies outside the shell or
    inside the other hole. Each test prepares the one large geometry or queries a tree, never
    a large ring against every hole.

    Returns:
        ``(k, 2)`` int64 ring indices, each pair once, the lower index first.
    """
    holes = rings[1:]
    if holes.size == 0:
        return np.empty((0, 2), dtype=np.int64)
    tree = shapely.STRtree(holes)
    pairs = []
    hit = tree.query(rings[0], predicate="intersects")  # the shell is prepared once
    pairs.append(np.c_[np.zeros_like(hit), 1 + hit])
    a, b = tree.query(holes, predicate="intersects")
    pairs.append(np.c_[1 + a[a < b], 1 + b[a < b]])
    # No crossings: a hole lies inside the shell (or another hole) when its first vertex does.
    first = shapely.get_point(holes, 0)
    shell = shapely.polygons(rings[0])
    shapely.prepare(shell)
    outside = np.nonzero(~shapely.contains(shell, first))[0]
    pairs.append(np.c_[np.zeros_like(outside), 1 + outside])
    a, b = shapely.STRtree(shapely.polygons(holes)).query(first, predicate="within")
    pairs.append(np.sort(np.c_[1 + a[a != b], 1 + b[a != b]], axis=1))
    return np.unique(np.concatenate(pairs).astype(np.int64), axis=0)


def _finish(batch: _Batch, frame: PixelFrame, min_px: float, simplify_um: float,
            workers: int = 1) -> list[RegionPolygon]:
    """Area filtering, level-0 mapping, simplification and grid snapping (unsorted).

    Regions are kept by their exact area in raster pixels (holes below ``min_px`` already
    filled), the same test for a region whether or not chunk borders cut it, and again by
    their area as reported, after simplification.
    """
    if not len(batch):
        return []
    polys, stats, suspect = batch.polys, batch.stats, batch.suspect
    if min_px > 0:
        big = shapely.area(polys) >= min_px
        polys, stats, suspect = polys[big], stats[big], suspect[big]
    # Valid by construction unless a ring needed repair (module doc); checking every polygon
    # would cost seconds for hole-riddled maps, so only suspect ones are checked and split.
    if suspect.any():
        bad = np.nonzero(suspect)[0][~shapely.is_valid(polys[suspect])]
        if bad.size:
            fixed = shapely.make_valid(polys[bad])
            parts, which = shapely.get_parts(fixed, return_index=True)
            areal = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
            keep = np.ones(len(polys), dtype=bool)
            keep[bad] = False
            polys = np.concatenate([polys[keep], parts[areal]])
            stats = np.concatenate([stats[keep], stats[bad][which[areal]]])
    geoms = frame.to_level0(polys)
    if simplify_um > 0:
        geoms = simplify_polygons(geoms, simplify_um / frame.mpp0, workers)
    if not frame.on_qupath_grid():
        # Corners are off QuPath's 0.01 px grid: snap them the way that keeps them valid.
        geoms = shapely.set_precision(geoms, QUPATH_GRID_PX)  # mode "valid_output"
    parts, owner = shapely.get_parts(geoms, return_index=True)
    areas = shapely.area(parts)
    # Tested again as reported (simplified, snapped), so that no area_um2 is below the minimum.
    ok = (shapely.get_type_id(parts) == 3) & (areas > 0) & (areas >= min_px * frame.px_x0**2)
    um2_per_px0 = frame.mpp0**2
    return [RegionPolygon(polygon=part, mean_prob=float(total) / max(int(count), 1) / 255.0,
                          max_prob=float(vmax) / 255.0, area_um2=float(area) * um2_per_px0,
                          perimeter_um=float(length) * frame.mpp0)
            for part, (count, total, vmax), area, length in zip(
                parts[ok], stats[owner[ok]].tolist(), areas[ok],
                shapely.length(parts[ok]).tolist(), strict=True)]


@dataclass(frozen=True)
class _ChunkResult:
    """What one chunk contributes: finished regions, pieces that continue, their border ids."""

    regions: list[RegionPolygon]
    opened: list[_Piece]
    strips: _Strips  # chunk-local open-piece ids


def _chunk_work(arr: ArrayLike2D, window: tuple[int, int, int, int], frame: PixelFrame,
                fg_min: int, min_px: float, simplify_um: float) -> _ChunkResult:
    """Read, trace and finish one chunk (a worker thread's task; touches no shared state)."""
    row0, col0, rows, cols = window
    # Saddles are decided over a halo around the chunk, so a saddle on a chunk border is
    # decided as it would be in one whole-raster pass, by both chunks that share it alike.
    r_lo, c_lo = max(0, row0 - SADDLE_HALO_PX), max(0, col0 - SADDLE_HALO_PX)
    r_hi = min(frame.height_px, row0 + rows + SADDLE_HALO_PX)
    c_hi = min(frame.width_px, col0 + cols + SADDLE_HALO_PX)
    wide = np.asarray(arr[r_lo:r_hi, c_lo:c_hi])
    if wide.dtype == bool:
        wide = wide.view(np.uint8)
    inner = (slice(row0 - r_lo, row0 - r_lo + rows), slice(col0 - c_lo, col0 - c_lo + cols))
    block = wide[inner]
    fg = wide >= fg_min
    decided = resolve_saddles(fg, wide, fg_min)[inner] if fg.any() else fg[inner]
    closed, opened, strips = _chunk_pieces(block, row0, col0, frame, fg_min, min_px, decided)
    return _ChunkResult(_finish(closed, frame, min_px, simplify_um), opened, strips)


_T = TypeVar("_T")
_R = TypeVar("_R")


def _in_order(pool: ThreadPoolExecutor | None, fn: Callable[[_T], _R], items: Iterable[_T],
              ahead: int) -> Iterator[tuple[_T, _R]]:
    """``(item, fn(item))`` in the order of ``items``, computed in ``pool`` (None: here).

    At most ``ahead`` items are in flight, so memory stays bounded (a few chunks) whatever
    the raster size; OpenCV, NumPy and GEOS release the GIL for the heavy parts.
    """
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: deque[tuple[_T, Future[_R]]] = deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= ahead:
                first, future = pending.popleft()
                yield first, future.result()
        while pending:
            first, future = pending.popleft()
            yield first, future.result()
    finally:
        for _, future in pending:  # abandoned early (an error): do not trace the rest
            future.cancel()


def _submit(pool: ThreadPoolExecutor | None, fn: Callable[..., _R], *args: Any) -> Future[_R]:
    """``fn(*args)`` in ``pool``, or here and now when there is none."""
    if pool is not None:
        return pool.submit(fn, *args)
    done: Future[_R] = Future()
    done.set_result(fn(*args))
    return done


def _finish_groups(groups: list[list[_Piece]], frame: PixelFrame, min_px: float,
                   simplify_um: float, workers: int) -> list[RegionPolygon]:
    """Regions of complete groups of open pieces: merged, then finished like closed ones."""
    batch = _Batch.concat([_merge_group(group, min_px) for group in groups])
    return _finish(batch, frame, min_px, simplify_um, workers)


def default_workers() -> int:
    """Threads used when ``workers`` is None: the CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _sorted(regions: list[RegionPolygon]) -> list[RegionPolygon]:
    """Regions top to bottom, then left to right (by bounds; ties by extent and area)."""
    if not regions:
        return regions
    polys = np.array([r.polygon for r in regions], dtype=object)
    minx, miny, maxx, maxy = shapely.bounds(polys).T
    order = np.lexsort((shapely.area(polys), maxx, maxy, minx, miny))
    return [regions[k] for k in order]


def vectorize_array(arr: ArrayLike2D, frame: PixelFrame, *, fg_min: int,
                    min_area_um2: float = 0.0, simplify_um: float = 0.0,
                    workers: int | None = None) -> list[RegionPolygon]:
    """Polygons of ``arr >= fg_min`` (a 2-D array or zarr array laid on the slide by ``frame``).

    Reads ``arr`` one ``frame.chunk_px`` chunk at a time, ``workers`` chunks at once; besides
    the output, memory holds ``2 * workers`` chunks and the edge strips of two chunk rows,
    whatever the raster size. The result does not depend on ``workers``.
    ``mean_prob``/``max_prob`` are ``value / 255``.

    Args:
        arr: 2-D uint8 (or integer/bool) array-like of shape ``(frame.height_px, frame.width_px)``;
            read from several threads at once.
        frame: where the raster lies on the slide (level-0 origin and pixel size, mpp).
        fg_min: smallest value that is foreground.
        min_area_um2: regions (and holes) smaller than this many µm² are dropped (filled).
        simplify_um: Douglas-Peucker tolerance in µm (0: keep every pixel corner).
        workers: threads tracing chunks (None: :func:`default_workers`; 1: this thread only).
    """
    if tuple(arr.shape) != (frame.height_px, frame.width_px):
        raise ValueError(f"array shape {arr.shape} does not match frame "
                         f"{(frame.height_px, frame.width_px)}")
    # A region (or hole) with fewer raster pixels than this can never reach min_area_um2.
    min_px = min_area_um2 / (frame.mpp0 * frame.px_x0) ** 2
    work = partial(_chunk_work, arr, frame=frame, fg_min=fg_min, min_px=min_px,
                   simplify_um=simplify_um)
    n_workers = default_workers() if workers is None else max(1, workers)
    regions: list[RegionPolygon] = []
    merging: list[Future[list[RegionPolygon]]] = []  # complete groups of open pieces
    open_regions = _OpenRegions()
    n_open = 0
    strips: dict[tuple[int, int], _Strips] = {}
    c = frame.chunk_px
    pool = ThreadPoolExecutor(n_workers, "vectorize") if n_workers > 1 else None
    try:
        for (row0, col0, _, cols), done in _in_order(pool, work, frame.chunks(), 2 * n_workers):
            i, j = row0 // c, col0 // c
            if j == 0:  # a new chunk row: strips older than the previous row are not needed
                strips = {k: v for k, v in strips.items() if k[0] >= i - 1}
            regions += done.regions
            strips[(i, j)] = done.strips.shifted(n_open)
            open_regions.add(n_open, done.opened)
            n_open += len(done.opened)
            open_regions.link(_border_pairs(strips, i, j))
            if col0 + cols == frame.width_px:  # end of a chunk row: finish what cannot grow
                bottoms = np.concatenate([v.bottom for k, v in strips.items() if k[0] == i])
                groups = list(open_regions.pop_complete(bottoms[bottoms >= 0]))
                # Merged and simplified in the pool as the next rows are traced (one thread
                # each: the pool is busy); final already, so no staircase is held for long.
                for k in range(0, len(groups), _BATCH):
                    merging.append(_submit(pool, _finish_groups, groups[k : k + _BATCH], frame,
                                           min_px, simplify_um, 1))
        # What is left (regions reaching the last chunk row) has the whole pool to itself.
        last = list(open_regions.pop_complete(None))
        merging.append(_submit(None, _finish_groups, last, frame, min_px, simplify_um,
                               n_workers))
        for future in merging:
            regions += future.result()
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _sorted(regions)


def vectorize_mosaic(mosaic: Mosaic, level: int = 0, *, threshold: float = 0.5,
                     min_area_um2: float = 0.0, simplify_um: float = 0.0,
                     workers: int | None = None) -> list[RegionPolygon]:
    """Tumour polygons of a probability mosaic, in level-0 slide pixels.

    Args:
        mosaic: an opened mosaic (:func:`wsi_seg.stages.mosaic.open_mosaic`).
        level: pyramid level to trace (0 = working resolution; each level halves it). Polygon
            corners fall on that level's pixel edges, so a coarser level is faster and coarser.
        threshold: probability (0..1] at or above which a pixel is tumour.
        min_area_um2: drop regions, and fill holes, smaller than this (µm²).
        simplify_um: simplification tolerance in µm (0 keeps the exact pixel staircase).
        workers: threads tracing chunks (None: every core this process may use).

    Returns:
        Regions sorted top to bottom, each a valid Polygon that stays valid on QuPath's 0.01 px
        grid, with mean/max probability, area (µm²) and perimeter (µm).
    """
    if not 0 <= level < mosaic.n_levels:
        raise ValueError(f"level {level} not in mosaic (levels 0..{mosaic.n_levels - 1})")
    return vectorize_array(mosaic.level(level), PixelFrame.of_mosaic(mosaic, level),
                           fg_min=threshold_u8(threshold), min_area_um2=min_area_um2,
                           simplify_um=simplify_um, workers=workers)


def regions_geometry(regions: list[RegionPolygon]) -> BaseGeometry:
    """All regions as one (Multi)Polygon in level-0 pixels (for scoring and drawing)."""
    if not regions:
        return MultiPolygon()
    return shapely.union_all([r.polygon for r in regions])
