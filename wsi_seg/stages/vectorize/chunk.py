"""Tracing one chunk, part 2: rings into closed polygons and open pieces.

Components whose bounding box is too small to ever reach ``min_area_um2`` and that do not
touch a chunk border are dropped before any contour is traced, and so are holes whose box is;
the rest is decided on exact areas once traced: a hole below ``min_area_um2`` is filled, then a
region below it is dropped - the same test whether or not chunk borders cut it.

Components that lie inside the chunk are *closed*: their polygons are built in bulk (shapely
arrays, :func:`_closed_batch`), valid by construction. A saddle that straddles a chunk border
is not seen by either chunk, so shells are still checked and the rare invalid polygon is
repaired later (``make_valid``, :mod:`.finish`). Components that touch an interior chunk
border are *open* pieces (:func:`_open_pieces`): they get a chunk-local id, written into the
chunk's four edge strips (:class:`_Strips`) for joining across borders (:mod:`.join`), and
their shells get a vertex at every pixel corner on a chunk border
(:func:`densify_on_grid_lines`).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.stages.vectorize.trace import (
    _component_stats,
    _fill_small_holes,
    _Rings,
    _trace,
)


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


def densify_on_grid_lines(ring: np.ndarray, spacing: int) -> np.ndarray:
    """Put a vertex at every integer point of the ring's segments that lie on a grid line
    (``x`` or ``y`` a multiple of ``spacing``: the chunk borders); returns the closed ring.

    Two pieces that meet across a chunk border then share identical unit segments there, which
    makes them a valid polygon *coverage* that :mod:`.join` dissolves by dropping the edges
    they share.

    Args:
        ring: ring of integer (x, y) vertices, shape (n, 2), closed or not.
        spacing: grid spacing (chunk edge) in pixels.
    """
    p = np.asarray(ring, dtype=np.int64)
    if len(p) > 1 and np.array_equal(p[0], p[-1]):
        p = p[:-1]
    points, _ = _densified(p, np.zeros(len(p), dtype=np.int64), spacing)
    return np.vstack([points, points[:1]])


def _densified(points: np.ndarray, ring_of: np.ndarray, spacing: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`densify_on_grid_lines` of many open rings at once (``points``: their integer
    corners one ring after another, ``ring_of``: each corner's ring, ascending); repeated
    corners are dropped. Returns the new corners (still open) and their rings."""
    n = len(points)
    first = np.r_[True, ring_of[1:] != ring_of[:-1]]
    nxt = np.arange(1, n + 1)
    nxt[np.r_[first[1:], True]] = np.nonzero(first)[0]  # each ring's last corner: its first
    d = points[nxt] - points
    on_line = (((d[:, 0] == 0) & (points[:, 0] % spacing == 0))
               | ((d[:, 1] == 0) & (points[:, 1] % spacing == 0)))
    steps = np.where(on_line, np.abs(d).sum(axis=1), 1)
    steps[(d == 0).all(axis=1)] = 0
    seg = np.repeat(np.arange(n), steps)
    k = np.arange(seg.size) - np.repeat(np.cumsum(steps) - steps, steps)
    return points[seg] + np.sign(d)[seg] * k[:, None], ring_of[seg]


def _pinched(points: np.ndarray, ring_of: np.ndarray, n_rings: int) -> np.ndarray:
    """Per ring, whether it visits a pixel corner twice, other than by repeating it at once
    (OpenCV doubles some corners). ``points``: integer corners ring after ring, each ring
    open or closed; ``ring_of``: each corner's ring, ascending, ``0 .. n_rings - 1``.

    On pixel edges two stretches of a ring can only meet at a corner where both turn (four
    boundary edges meet only at a checkerboard), so a ring without such a corner is simple.
    """
    if not len(points):
        return np.zeros(n_rings, dtype=bool)
    x = points[:, 0].astype(np.int64) - int(points[:, 0].min())
    y = points[:, 1].astype(np.int64) - int(points[:, 1].min())
    ring = ring_of.astype(np.int64)
    bx, by = int(x.max()).bit_length(), int(y.max()).bit_length()
    if bx + by + max(n_rings, 1).bit_length() > 62:  # does not pack into one int64 key
        return _pinched_by_rows(x, y, ring, n_rings)
    key = (ring << (bx + by)) | (x << by) | y
    key = key[np.r_[True, key[1:] != key[:-1]]]  # a corner repeated at once is one visit
    ring = key >> (bx + by)
    first = np.r_[True, ring[1:] != ring[:-1]]
    last = np.r_[first[1:], True]
    closing = last & ~first  # a closed ring's last corner repeats its first
    closing[last] &= key[last] == key[first]
    key = np.sort(key[~closing])
    out = np.zeros(n_rings, dtype=bool)
    out[key[1:][key[1:] == key[:-1]] >> (bx + by)] = True
    return out


def _pinched_by_rows(x: np.ndarray, y: np.ndarray, ring: np.ndarray, n_rings: int
                     ) -> np.ndarray:
    """:func:`_pinched` for coordinates too large to pack into one integer key."""
    out = np.zeros(n_rings, dtype=bool)
    for k in range(n_rings):
        own = ring == k
        xy = np.c_[x[own], y[own]]
        xy = xy[np.r_[True, (xy[1:] != xy[:-1]).any(axis=1)]]
        if len(xy) > 1 and (xy[0] == xy[-1]).all():
            xy = xy[:-1]
        out[k] = len(np.unique(xy, axis=0)) < len(xy)
    return out


def _areal(geom: BaseGeometry) -> list[Polygon]:
    return [p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and not p.is_empty]


def _pieces(shells: np.ndarray, shell_of: np.ndarray, holes: list[np.ndarray],
            stats: np.ndarray, spacing: int) -> list[_Piece]:
    """Open components (cut by a chunk border) as pieces, all at once.

    Without saddles (:func:`.trace.resolve_saddles`) every ring is simple and no hole touches
    another ring, so the polygon is valid by construction. The shells are still checked: a
    pixel-edge ring can only meet itself at a corner it turns at twice (:func:`_pinched`, far
    cheaper than GEOS's validity test on a ragged shell); should one, it is repaired and the
    piece marked ``suspect`` so its final polygons get the full validity check. The shells are
    densified on the chunk borders (``spacing``) for the join.

    Args:
        shells: integer ``(x, y)`` corners of the pieces' shells (open rings, level pixel
            edges), one after another; ``shell_of``: each corner's piece, ascending.
        holes: per piece, its hole LinearRings; ``stats``: per piece, count, value sum and
            value maximum (``(n, 3)``).
    """
    n = len(holes)
    dense, dense_of = _densified(shells, shell_of, spacing)
    polys = shapely.polygons(shapely.linearrings(dense.astype(np.float64), indices=dense_of))
    pinched = _pinched(shells, shell_of, n)
    pieces = []
    for k, ((count, total, vmax), own) in enumerate(zip(stats.tolist(), holes, strict=True)):
        if not pinched[k] or polys[k].is_valid:
            pieces.append(_Piece(polys[k], own, count, total, vmax))
            continue
        ring = shapely.linearrings(shells[shell_of == k].astype(np.float64))
        repaired = shapely.make_valid(shapely.polygons(ring, holes=own))
        pieces.append(_Piece(shapely.MultiPolygon(_areal(repaired)),
                             np.empty(0, dtype=object), count, total, vmax, True))
    return pieces


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
    ring_geoms = rings.linearrings(idx, offset)
    first = np.r_[True, lab[1:] != lab[:-1]]  # the shell of each component comes first
    polys = shapely.polygons(ring_geoms, indices=np.cumsum(first) - 1)
    # Valid by construction (see _pieces); a cheap check of the shells catches the unexpected
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
        holes = rings.linearrings(idx[is_hole], offset)
    hole_at = np.cumsum(is_hole) - is_hole  # position in `holes` of ring k, if a hole
    bounds = np.r_[np.nonzero(np.r_[True, ids[1:] != ids[:-1]])[0], idx.size]
    lo, hi = bounds[:-1], bounds[1:]
    shells, shell_of = rings.points(idx[lo])  # each component's first ring: its shell
    own = [holes[hole_at[a + 1]:hole_at[a + 1] + b - a - 1] if b > a + 1 else holes[:0]
           for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    for k, piece in zip(ids[lo].tolist(), _pieces(shells + offset, shell_of, own,
                                                 stats[ring_label[idx[lo]]], spacing),
                        strict=True):
        pieces[k] = piece
    return pieces


def _chunk_pieces(block: np.ndarray, fg: np.ndarray, row0: int, col0: int, frame: PixelFrame,
                  min_px: float) -> tuple[_Batch, list[_Piece], _Strips]:
    """Closed regions, open pieces (chunk-local ids 0, 1, ...) and edge strips of one chunk.

    Args:
        block: the chunk's stored values (0..255), at ``(row0, col0)`` of the raster.
        fg: the chunk's foreground, its saddles already decided over a halo
            (:func:`.trace.resolve_saddles` in :func:`.driver._chunk_work`).
        frame: the raster's frame (its shape and chunk edge decide which borders are shared).
        min_px: smallest region (and hole) kept, in raster pixels.

    Coordinates are raster pixel edges of the whole level.
    """
    rows, cols = block.shape
    strips = _Strips(np.full(cols, -1), np.full(cols, -1), np.full(rows, -1), np.full(rows, -1))
    if not fg.any():
        return _Batch.empty(), [], strips
    if fg.all():  # inside a large region: one rectangle, nothing to label or trace
        return _full_chunk(block, row0, col0, frame, strips)
    rows_any, cols_any = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    r0, r1, c0, c1 = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
    values = block[r0:r1, c0:c1]
    fg = fg[r0:r1, c0:c1]
    n, labels, cc, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    is_open = _open_components(cc, r0 + row0, c0 + col0, (row0, col0, rows, cols), frame)
    # A closed component whose bounding box is below min_px can never reach it, not even
    # with its holes filled: dropped before any contour is traced. (Not by its pixel count:
    # a ring with a small hole can reach min_px once the hole is filled, and would then be
    # kept or not depending on whether a chunk border cuts it.)
    box_px = cc[:, cv2.CC_STAT_WIDTH].astype(np.int64) * cc[:, cv2.CC_STAT_HEIGHT]
    keep = is_open | (box_px >= min_px)
    keep[0] = False
    if not keep.any():
        return _Batch.empty(), [], strips
    stats, fg = _component_stats(labels, values, keep)
    local_id = np.full(n, -1, dtype=np.int64)
    local_id[is_open] = np.arange(int(is_open.sum()))
    _write_strips(strips, local_id, labels, (r0, r1, c0, c1))
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


def _full_chunk(block: np.ndarray, row0: int, col0: int, frame: PixelFrame,
                strips: _Strips) -> tuple[_Batch, list[_Piece], _Strips]:
    """:func:`_chunk_pieces` of a chunk that is all foreground: one rectangle, closed when
    no border of it is shared with another chunk, else one open piece (id 0 on every strip)."""
    rows, cols = block.shape
    touches = [row0 > 0, row0 + rows < frame.height_px, col0 > 0, col0 + cols < frame.width_px]
    corners = np.array([[col0, row0], [col0 + cols, row0], [col0 + cols, row0 + rows],
                        [col0, row0 + rows], [col0, row0]])
    stats = np.array([[rows * cols, int(block.sum(dtype=np.int64)), int(block.max())]])
    if not any(touches):
        return (_Batch(np.array([Polygon(corners)], dtype=object), stats,
                       np.zeros(1, dtype=bool)), [], strips)
    [box] = _pieces(corners[:-1], np.zeros(4, dtype=np.int64), [np.empty(0, dtype=object)],
                    stats, frame.chunk_px)
    for strip in (strips.top, strips.bottom, strips.left, strips.right):
        strip[:] = 0
    return _Batch.empty(), [box], strips


def _open_components(cc: np.ndarray, top0: int, left0: int,
                     window: tuple[int, int, int, int], frame: PixelFrame) -> np.ndarray:
    """Per label, whether the component touches a chunk border shared with another chunk.

    Args:
        cc: OpenCV's component statistics of a crop whose top-left pixel is ``(top0, left0)``
            of the raster; ``window``: the chunk ``(row0, col0, rows, cols)``.
    """
    row0, col0, rows, cols = window
    left = cc[:, cv2.CC_STAT_LEFT] + left0
    top = cc[:, cv2.CC_STAT_TOP] + top0
    right = left + cc[:, cv2.CC_STAT_WIDTH]
    bottom = top + cc[:, cv2.CC_STAT_HEIGHT]
    is_open = (((left == col0) & (col0 > 0))
               | ((right == col0 + cols) & (col0 + cols < frame.width_px))
               | ((top == row0) & (row0 > 0))
               | ((bottom == row0 + rows) & (row0 + rows < frame.height_px)))
    is_open[0] = False  # background label
    return is_open


def _write_strips(strips: _Strips, local_id: np.ndarray, labels: np.ndarray,
                  crop: tuple[int, int, int, int]) -> None:
    """Write the open-piece id (``local_id`` per label, -1: none) of the crop's edge pixels
    (``labels``) on the chunk edges that the crop ``(r0, r1, c0, c1)`` (chunk-local rows and
    columns) reaches."""
    r0, r1, c0, c1 = crop
    if r0 == 0:
        strips.top[c0:c1] = local_id[labels[0, :]]
    if r1 == strips.left.size:
        strips.bottom[c0:c1] = local_id[labels[-1, :]]
    if c0 == 0:
        strips.left[r0:r1] = local_id[labels[:, 0]]
    if c1 == strips.top.size:
        strips.right[r0:r1] = local_id[labels[:, -1]]
