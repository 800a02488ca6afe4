"""Thresholded probability mosaic -> tumour polygons (with holes) in level-0 slide pixels.

Algorithm, one chunk of a pyramid level at a time. Memory: one chunk, the edge strips of two
chunk rows, and the exact pixel-edge outlines of the regions that cross the current chunk row
(a region is finished and simplified as soon as a chunk row ends below it), so it grows with
the boundary length of the largest regions, not with the slide area:

1. Threshold the chunk (``value >= threshold_u8(threshold)``), decide each ambiguous 2x2
   saddle (two pixels touching only at a corner) by the mean of its four values, as marching
   squares does (:func:`resolve_saddles`: one pixel changes per saddle), and label the
   8-connected components (OpenCV): each component's pixel count, probability sum and maximum
   come from one ``bincount``. Components too small to ever reach ``min_area_um2`` that do not
   touch a chunk border are dropped before any contour is traced; holes smaller than it are
   filled as they are traced (a noisy map has tens of thousands of pinholes).
2. Trace the components with ``cv2.findContours(RETR_CCOMP)`` on the mask **upsampled 2x** (and
   padded by one zero pixel). In the 2x mask every boundary sub-pixel sits in the corner of its
   original pixel that faces the outside, so ``point // 2`` is exactly a pixel *corner*: the
   rings run along pixel edges, a polygon's area equals its pixel count, and rasterising it
   again gives back the same pixels (checked in ``tests/test_vectorize.py``). With the
   saddles resolved no ring pinches, so polygons are valid by construction; a saddle that
   straddles a chunk border is not seen by either chunk, so rings are still checked and the
   rare invalid one is repaired (``make_valid``).
3. Pieces that touch an interior chunk border get a global id, written into the chunk's four
   edge strips; facing strips of neighbouring chunks give the pairs of pieces that are
   8-adjacent across the border (union-find, no geometric search). Each group's *shells* are
   unioned; their rings get a vertex at every pixel corner on a chunk border, so pieces share
   identical segments there and form a polygon coverage (``shapely.coverage_union_all``,
   several times faster than an overlay union, and exact: integer coordinates), and
   the pieces' holes, which never touch a chunk border, are put back afterwards - unioning
   hole-riddled pieces directly is orders of magnitude slower.
4. Each region is mapped to level 0 (pixel ``(row, col)`` of level ``L`` covers
   ``[origin_x0 + col*s, origin_x0 + (col+1)*s)`` with ``s = geom.level_scale(L)``),
   simplified (``simplify_um``, topology-preserving Douglas-Peucker), snapped to QuPath's
   0.01 px grid with ``shapely.set_precision`` (which keeps it valid) unless the corners
   already lie on it (``s`` and the origin multiples of 0.01), and regions below
   ``min_area_um2`` are dropped.

Saddles across chunk borders: two pixels that touch only at a corner there belong to one
region, written as polygons touching at one point (each valid) that share the region's
probability statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.mosaic import Mosaic

QUPATH_GRID_PX = 0.01  # QuPath 0.6+ snaps every imported coordinate to this grid (FORMATS.md)
_BATCH = 256  # pieces finished (mapped, simplified, snapped) at a time: bounds their copies


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
        s, ox, oy = self.px_x0, self.origin_x0, self.origin_y0
        return shapely.transform(geom, lambda xy: xy * s + np.array([ox, oy]))

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
    """A region, or a part of one cut by chunk borders, in raster pixel-edge coordinates.

    The shell is kept apart from the holes: holes never touch a chunk border, so merging
    pieces across borders only needs their shells (far cheaper for ragged, hole-riddled maps).
    """

    shell: BaseGeometry  # valid Polygon/MultiPolygon: the outer rings, with pinch holes only
    holes: list[np.ndarray]  # simple hole rings, integer (x, y) corners
    count: int  # foreground pixels
    total: int  # sum of stored values (0..255) over them
    vmax: int  # maximum stored value
    suspect: bool = False  # a ring needed repair: check the final polygons' validity


@dataclass
class _Strips:
    """Global open-piece ids (-1: none) along a chunk's four edges, for border merging."""

    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray


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


def _trace(mask: np.ndarray,
           min_hole_px: float = 0.0) -> list[tuple[np.ndarray, list[np.ndarray], tuple[int, int]]]:
    """Exact pixel-edge rings of a binary mask without 2x2 checkerboards.

    Returns ``[(shell, [holes], (row, col))]``: rings as integer (x, y) pixel corners, and one
    foreground pixel of the component the shell bounds (to look up its label). Holes of fewer
    than ``min_hole_px`` pixels are left out (filled); a noisy map has tens of thousands, so
    their areas come from ``cv2.contourArea`` (C), not from shapely.
    """
    h, w = mask.shape
    up = cv2.resize(mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hier = hierarchy[0]
    out = []
    for i, contour in enumerate(contours):
        if hier[i][3] != -1:
            continue  # a hole; collected under its parent
        holes = []
        j = hier[i][2]
        while j != -1:
            ring = contours[j][:, 0, :] // 2
            if min_hole_px <= 0 or cv2.contourArea(ring) >= min_hole_px:
                holes.append(ring)
            j = hier[j][0]
        # With the 1-px padding, sub-pixel p maps to original corner p // 2 (module docstring).
        x, y = contour[0, 0]
        out.append((contour[:, 0, :] // 2, holes, (int(y - 1) // 2, int(x - 1) // 2)))
    return out


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


def _piece(shell: np.ndarray, holes: list[np.ndarray], count: int, total: int,
           vmax: int, spacing: int = 0) -> _Piece:
    """A traced component as a piece.

    Without saddles (:func:`resolve_saddles`) every ring is simple and no hole touches
    another ring, so the polygon is valid by construction. The shell is still checked (one
    cheap test per component); should it pinch anyway, it is repaired and the piece marked
    ``suspect`` so its final polygons get the full (costlier) validity check. With
    ``spacing`` (open pieces) the shell is densified on the chunk borders for coverage union.
    """
    shell_poly = Polygon(shell if spacing <= 0 else densify_on_grid_lines(shell, spacing))
    if shell_poly.is_valid:
        return _Piece(shell_poly, holes, count, total, vmax)
    repaired = shapely.make_valid(Polygon(shell, holes))
    return _Piece(shapely.MultiPolygon(_areal(repaired)), [], count, total, vmax, True)


def _chunk_pieces(block: np.ndarray, row0: int, col0: int, frame: PixelFrame, fg_min: int,
                  min_px: float, next_gid: int) -> tuple[list[_Piece], list[_Piece], _Strips]:
    """Closed pieces, open pieces (ids ``next_gid`` on) and edge strips of one chunk.

    Coordinates are raster pixel edges of the whole level.
    """
    rows, cols = block.shape
    strips = _Strips(np.full(cols, -1), np.full(cols, -1), np.full(rows, -1), np.full(rows, -1))
    fg0 = block >= fg_min
    if not fg0.any():
        return [], [], strips
    if fg0.all():  # inside a large region: one rectangle, nothing to label or trace
        touches = [row0 > 0, row0 + rows < frame.height_px, col0 > 0,
                   col0 + cols < frame.width_px]
        corners = np.array([[col0, row0], [col0 + cols, row0], [col0 + cols, row0 + rows],
                            [col0, row0 + rows], [col0, row0]])
        if not any(touches):
            box = _Piece(Polygon(corners), [], rows * cols, int(block.sum(dtype=np.int64)),
                         int(block.max()))
            return ([box] if rows * cols >= min_px else []), [], strips
        box = _Piece(Polygon(densify_on_grid_lines(corners, frame.chunk_px)), [], rows * cols,
                     int(block.sum(dtype=np.int64)), int(block.max()))
        for strip in (strips.top, strips.bottom, strips.left, strips.right):
            strip[:] = next_gid
        return [], [box], strips
    rows_any, cols_any = np.nonzero(fg0.any(axis=1))[0], np.nonzero(fg0.any(axis=0))[0]
    r0, r1, c0, c1 = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
    values = block[r0:r1, c0:c1]
    fg = resolve_saddles(fg0[r0:r1, c0:c1], values, fg_min)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    counts, sums, vmax = _component_stats(labels, values, fg, n)

    # Which components touch a chunk border shared with another chunk (level coordinates).
    left = stats[:, cv2.CC_STAT_LEFT] + c0 + col0
    top = stats[:, cv2.CC_STAT_TOP] + r0 + row0
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    is_open = (((left == col0) & (col0 > 0))
               | ((right == col0 + cols) & (col0 + cols < frame.width_px))
               | ((top == row0) & (row0 > 0))
               | ((bottom == row0 + rows) & (row0 + rows < frame.height_px)))
    is_open[0] = False  # background label
    keep = is_open | (counts >= min_px)
    keep[0] = False
    if not keep.any():
        return [], [], strips
    if not keep[1:].all():  # drop small closed components before tracing
        fg = keep[labels]

    gid = np.full(n, -1, dtype=np.int64)
    gid[is_open] = np.arange(next_gid, next_gid + int(is_open.sum()))
    if r0 == 0:
        strips.top[c0:c1] = gid[labels[0, :]]
    if r1 == rows:
        strips.bottom[c0:c1] = gid[labels[-1, :]]
    if c0 == 0:
        strips.left[r0:r1] = gid[labels[:, 0]]
    if c1 == cols:
        strips.right[r0:r1] = gid[labels[:, -1]]

    offset = np.array([c0 + col0, r0 + row0])
    closed: list[_Piece] = []
    opened: dict[int, _Piece] = {}
    for shell, holes, (row, col) in _trace(fg.view(np.uint8), min_px):
        label = int(labels[row, col])
        piece = _piece(shell + offset, [h + offset for h in holes], int(counts[label]),
                       int(sums[label]), int(vmax[label]),
                       frame.chunk_px if is_open[label] else 0)
        if is_open[label]:
            opened[int(gid[label])] = piece
        else:
            closed.append(piece)
    # Open pieces are indexed by their global id; keep the list aligned even if a label
    # produced no ring (not expected).
    ids = range(next_gid, next_gid + int(is_open.sum()))
    empty = _Piece(Polygon(), [], 0, 0, 0)
    return closed, [opened.get(g, empty) for g in ids], strips


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

    def pop_complete(self, active_ids: np.ndarray | None) -> Iterator[_Piece]:
        """Merge and release every group with no piece in ``active_ids`` (None: all groups)."""
        active = set() if active_ids is None else {self.find(int(g)) for g in active_ids}
        groups: dict[int, list[int]] = {}
        for gid in self.pieces:
            root = self.find(gid)
            if root not in active:
                groups.setdefault(root, []).append(gid)
        for members in groups.values():
            yield _merge_group([self.pieces.pop(g) for g in members])


def _merge_group(live: list[_Piece]) -> _Piece:
    """One region from its pieces: shells unioned, holes and statistics carried over."""
    if len(live) == 1:
        shell = live[0].shell
    elif any(p.suspect for p in live):  # a repaired shell: not densified, general union
        shell = shapely.union_all([p.shell for p in live])
    else:  # exact pixel partition with matching border vertices: a valid coverage
        shell = shapely.coverage_union_all([p.shell for p in live])
    return _Piece(shell, [h for p in live for h in p.holes],
                  sum(p.count for p in live), sum(p.total for p in live),
                  max(p.vmax for p in live), any(p.suspect for p in live))


def _assemble(piece: _Piece, min_hole_px: float) -> list[Polygon]:
    """A piece's polygons: its (merged) shell with its holes put back.

    Holes that the merge itself closed (a ring of tumour across chunk borders) are filled
    when smaller than ``min_hole_px`` raster pixels, like holes found inside one chunk.
    """
    parts = _areal(piece.shell)
    if min_hole_px > 0 and any(p.interiors for p in parts):
        parts = [Polygon(p.exterior, [r for r in p.interiors if Polygon(r).area >= min_hole_px])
                 for p in parts]
    if piece.holes and len(parts) == 1:
        parts = [Polygon(parts[0].exterior, [*parts[0].interiors, *piece.holes])]
    elif piece.holes:
        # Shells joined only at a corner: give each hole to the part whose outline holds it
        # (a point strictly inside the hole is inside exactly one part's exterior ring).
        owned: list[list[Any]] = [list(p.interiors) for p in parts]
        outlines = [Polygon(p.exterior) for p in parts]
        for hole in piece.holes:
            inside = Polygon(hole).representative_point()
            k = next((k for k, o in enumerate(outlines) if o.contains(inside)), None)
            if k is not None:
                owned[k].append(hole)
        parts = [Polygon(p.exterior, holes) for p, holes in zip(parts, owned, strict=True)]
    return parts


def _finish(pieces: list[_Piece], frame: PixelFrame, min_area_um2: float,
            simplify_um: float) -> list[RegionPolygon]:
    """Level-0 mapping, simplification, grid snapping and area filtering (unsorted)."""
    if not pieces:
        return []
    um2_per_px0 = frame.mpp0**2
    min_area_px0 = min_area_um2 / um2_per_px0
    min_hole_px = min_area_px0 / frame.px_x0**2
    polys: list[Polygon] = []
    owner: list[int] = []
    for k, piece in enumerate(pieces):
        for part in _assemble(piece, min_hole_px):
            polys.append(part)
            owner.append(k)
    # Valid by construction unless a ring needed repair (module doc); checking every polygon
    # would cost seconds for hole-riddled maps, so only suspect pieces are checked and split.
    suspect = np.array([pieces[k].suspect for k in owner], dtype=bool)
    valid = np.ones(len(polys), dtype=bool)
    if suspect.any():
        valid[suspect] = shapely.is_valid(np.array(polys, dtype=object)[suspect])
    if not valid.all():
        fixed_polys: list[Polygon] = []
        fixed_owner: list[int] = []
        for poly, k, ok in zip(polys, owner, valid, strict=True):
            parts = [poly] if ok else _areal(shapely.make_valid(poly))
            fixed_polys += parts
            fixed_owner += [k] * len(parts)
        polys, owner = fixed_polys, fixed_owner
    geoms = frame.to_level0(np.array(polys, dtype=object))
    if simplify_um > 0:
        geoms = shapely.simplify(geoms, simplify_um / frame.mpp0, preserve_topology=True)
    if not frame.on_qupath_grid():
        # Corners are off QuPath's 0.01 px grid: snap them the way that keeps them valid.
        geoms = shapely.set_precision(geoms, QUPATH_GRID_PX)  # mode "valid_output"
    out = []
    for geom, k in zip(geoms, owner, strict=True):
        piece = pieces[k]
        for part in shapely.get_parts(geom):
            if not isinstance(part, Polygon) or part.is_empty or part.area < min_area_px0:
                continue
            out.append(RegionPolygon(
                polygon=part,
                mean_prob=piece.total / max(piece.count, 1) / 255.0,
                max_prob=piece.vmax / 255.0,
                area_um2=part.area * um2_per_px0,
                perimeter_um=part.length * frame.mpp0,
            ))
    return out


def vectorize_array(arr: ArrayLike2D, frame: PixelFrame, *, fg_min: int,
                    min_area_um2: float = 0.0, simplify_um: float = 0.0) -> list[RegionPolygon]:
    """Polygons of ``arr >= fg_min`` (a 2-D array or zarr array laid on the slide by ``frame``).

    Reads ``arr`` one ``frame.chunk_px`` chunk at a time; besides the output, memory holds one
    chunk and the edge strips of two chunk rows, whatever the raster size.
    ``mean_prob``/``max_prob`` are ``value / 255``.

    Args:
        arr: 2-D uint8 (or integer/bool) array-like of shape ``(frame.height_px, frame.width_px)``.
        frame: where the raster lies on the slide (level-0 origin and pixel size, mpp).
        fg_min: smallest value that is foreground.
        min_area_um2: regions (and holes) smaller than this many µm² are dropped (filled).
        simplify_um: Douglas-Peucker tolerance in µm (0: keep every pixel corner).
    """
    if tuple(arr.shape) != (frame.height_px, frame.width_px):
        raise ValueError(f"array shape {arr.shape} does not match frame "
                         f"{(frame.height_px, frame.width_px)}")
    # A component (or hole) with fewer raster pixels than this can never reach min_area_um2.
    min_px = min_area_um2 / (frame.mpp0 * frame.px_x0) ** 2
    closed: list[_Piece] = []
    regions: list[RegionPolygon] = []
    open_regions = _OpenRegions()
    n_open = 0
    strips: dict[tuple[int, int], _Strips] = {}
    c = frame.chunk_px
    for row0, col0, rows, cols in frame.chunks():
        i, j = row0 // c, col0 // c
        if j == 0:  # a new chunk row: strips older than the previous row are no longer needed
            strips = {k: v for k, v in strips.items() if k[0] >= i - 1}
        block = np.asarray(arr[row0 : row0 + rows, col0 : col0 + cols])
        if block.dtype == bool:
            block = block.view(np.uint8)
        done, opened, strips[(i, j)] = _chunk_pieces(block, row0, col0, frame, fg_min, min_px,
                                                     n_open)
        closed += done
        open_regions.add(n_open, opened)
        n_open += len(opened)
        open_regions.link(_border_pairs(strips, i, j))
        if col0 + cols == frame.width_px:  # end of a chunk row: finish what cannot grow
            bottoms = np.concatenate([v.bottom for k, v in strips.items() if k[0] == i])
            closed += open_regions.pop_complete(bottoms[bottoms >= 0])
        if len(closed) >= _BATCH:  # final already: simplify now rather than hold staircases
            regions += _finish(closed, frame, min_area_um2, simplify_um)
            closed = []
    closed += open_regions.pop_complete(None)
    regions += _finish(closed, frame, min_area_um2, simplify_um)
    regions.sort(key=lambda r: (r.polygon.bounds[1], r.polygon.bounds[0]))
    return regions


def vectorize_mosaic(mosaic: Mosaic, level: int = 0, *, threshold: float = 0.5,
                     min_area_um2: float = 0.0, simplify_um: float = 0.0) -> list[RegionPolygon]:
    """Tumour polygons of a probability mosaic, in level-0 slide pixels.

    Args:
        mosaic: an opened mosaic (:func:`wsi_seg.mosaic.open_mosaic`).
        level: pyramid level to trace (0 = working resolution; each level halves it). Polygon
            corners fall on that level's pixel edges, so a coarser level is faster and coarser.
        threshold: probability (0..1] at or above which a pixel is tumour.
        min_area_um2: drop regions, and fill holes, smaller than this (µm²).
        simplify_um: simplification tolerance in µm (0 keeps the exact pixel staircase).

    Returns:
        Regions sorted top to bottom, each a valid Polygon that stays valid on QuPath's 0.01 px
        grid, with mean/max probability, area (µm²) and perimeter (µm).
    """
    if not 0 <= level < mosaic.n_levels:
        raise ValueError(f"level {level} not in mosaic (levels 0..{mosaic.n_levels - 1})")
    return vectorize_array(mosaic.level(level), PixelFrame.of_mosaic(mosaic, level),
                           fg_min=threshold_u8(threshold), min_area_um2=min_area_um2,
                           simplify_um=simplify_um)


def regions_geometry(regions: list[RegionPolygon]) -> BaseGeometry:
    """All regions as one (Multi)Polygon in level-0 pixels (for scoring and drawing)."""
    if not regions:
        return MultiPolygon()
    return shapely.union_all([r.polygon for r in regions])
