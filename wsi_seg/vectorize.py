"""Thresholded probability mosaic -> tumour polygons (with holes) in level-0 slide pixels.

Algorithm, one chunk of a pyramid level at a time (memory: one chunk, plus the output):

1. Threshold the chunk (``value >= threshold_u8(threshold)``) and label its 8-connected
   components (OpenCV), so each component's pixel count, probability sum and maximum come from
   one ``bincount``; components too small to ever reach ``min_area_um2`` that do not touch a
   chunk border are dropped before any contour is traced.
2. Trace the components with ``cv2.findContours(RETR_CCOMP)`` on the mask **upsampled 2x** (and
   padded by one zero pixel). In the 2x mask every boundary sub-pixel sits in the corner of its
   original pixel that faces the outside, so ``point // 2`` is exactly a pixel *corner*: the
   rings run along pixel edges, a polygon's area equals its pixel count, and rasterising it
   again gives back the same pixels (checked in ``tests/test_vectorize.py``).
3. Pieces that touch an interior chunk border are kept aside; at the end, pieces that touch one
   another are grouped (STRtree + union-find) and each group is unioned (shapely). Their pixel
   edges on the shared border coincide exactly (integer coordinates), so the union is exact.
4. Each region is mapped to level 0 (pixel ``(row, col)`` of level ``L`` covers
   ``[origin_x0 + col*s, origin_x0 + (col+1)*s)`` with ``s = geom.level_scale(L)``), holes
   smaller than ``min_area_um2`` are filled, it is simplified (``simplify_um``), snapped to
   QuPath's 0.01 px grid with ``shapely.set_precision`` (which keeps it valid) and regions
   below ``min_area_um2`` are dropped.

Eight-connectivity: two pixels that touch only at a corner belong to one component (OpenCV's
rule), but a polygon may not pinch itself, so such a region is written as two polygons touching
at one point (both valid) that share the component's probability statistics.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.mosaic import Mosaic

QUPATH_GRID_PX = 0.01  # QuPath 0.6+ snaps every imported coordinate to this grid (FORMATS.md)


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
    """A region, or a part of one cut by chunk borders, in raster pixel-edge coordinates."""

    geom: BaseGeometry  # Polygon or MultiPolygon (integer coordinates)
    count: int  # foreground pixels
    total: int  # sum of stored values (0..255) over them
    vmax: int  # maximum stored value
    open: bool  # touches an interior chunk border: may continue in a neighbour chunk


def _component_stats(labels: np.ndarray, values: np.ndarray, fg: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: pixel count, value sum and value max over foreground pixels."""
    lab = labels[fg].astype(np.int64)
    val = values[fg].astype(np.int64)
    if n * 256 <= 1 << 22:  # one histogram per label: count, sum and max in a single pass
        hist = np.bincount(lab * 256 + val, minlength=n * 256).reshape(n, 256)
        counts = hist.sum(axis=1)
        sums = hist @ np.arange(256, dtype=np.int64)
        vmax = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
        return counts, sums, vmax
    counts = np.bincount(lab, minlength=n)
    sums = np.bincount(lab, weights=val, minlength=n).astype(np.int64)
    key = np.sort(lab * 256 + val)  # many labels (noise): sort instead of a huge histogram
    last = np.r_[np.nonzero(np.diff(key >> 8))[0], key.size - 1]
    vmax = np.zeros(n, dtype=np.int64)
    vmax[key[last] >> 8] = key[last] & 255
    return counts, sums, vmax


def _trace(mask: np.ndarray) -> list[tuple[np.ndarray, list[np.ndarray], tuple[int, int]]]:
    """Exact pixel-edge rings of a binary mask.

    Returns ``[(shell, [holes], (row, col))]``: rings as integer (x, y) pixel corners, and one
    foreground pixel of the component the shell bounds (to look up its label).
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
            holes.append(contours[j][:, 0, :] // 2)
            j = hier[j][0]
        # With the 1-px padding, sub-pixel p maps to original corner p // 2 (module docstring).
        x, y = contour[0, 0]
        out.append((contour[:, 0, :] // 2, holes, (int(y - 1) // 2, int(x - 1) // 2)))
    return out


def _as_valid(poly: Polygon) -> BaseGeometry:
    """A traced ring may pinch at a corner (8-connectivity); split such polygons validly."""
    if poly.is_valid:
        return poly
    fixed = shapely.make_valid(poly)
    return MultiPolygon([p for p in shapely.get_parts(fixed) if isinstance(p, Polygon)])


def _chunk_pieces(block: np.ndarray, row0: int, col0: int, frame: PixelFrame, fg_min: int,
                  min_px: float) -> list[_Piece]:
    """Pieces of one chunk, in raster pixel-edge coordinates of the whole level."""
    fg = block >= fg_min
    if not fg.any():
        return []
    rows_any, cols_any = np.nonzero(fg.any(axis=1))[0], np.nonzero(fg.any(axis=0))[0]
    r0, r1, c0, c1 = rows_any[0], rows_any[-1] + 1, cols_any[0], cols_any[-1] + 1
    fg = np.ascontiguousarray(fg[r0:r1, c0:c1])
    values = block[r0:r1, c0:c1]
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.view(np.uint8), connectivity=8)
    counts, sums, vmax = _component_stats(labels, values, fg, n)

    # Which components touch a chunk border shared with another chunk (level coordinates).
    left = stats[:, cv2.CC_STAT_LEFT] + c0 + col0
    top = stats[:, cv2.CC_STAT_TOP] + r0 + row0
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    rows, cols = block.shape
    is_open = (((left == col0) & (col0 > 0))
               | ((right == col0 + cols) & (col0 + cols < frame.width_px))
               | ((top == row0) & (row0 > 0))
               | ((bottom == row0 + rows) & (row0 + rows < frame.height_px)))
    keep = is_open | (counts >= min_px)
    keep[0] = False  # background label
    if not keep.any():
        return []
    if not keep[1:].all():  # drop small closed components before tracing
        fg = keep[labels]
        labels = np.where(fg, labels, 0)

    pieces: list[_Piece] = []
    offset = np.array([c0 + col0, r0 + row0])
    per_label: dict[int, list[BaseGeometry]] = {}
    for shell, holes, (row, col) in _trace(fg.view(np.uint8)):
        label = int(labels[row, col])
        poly = Polygon(shell + offset, [h + offset for h in holes])
        per_label.setdefault(label, []).append(_as_valid(poly))
    for label, geoms in per_label.items():
        geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        pieces.append(_Piece(geom, int(counts[label]), int(sums[label]), int(vmax[label]),
                             bool(is_open[label])))
    return pieces


def _merge_open(pieces: list[_Piece]) -> list[_Piece]:
    """Union pieces that touch one another (across chunk borders); stats add up."""
    if not pieces:
        return []
    geoms = np.array([p.geom for p in pieces], dtype=object)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(len(pieces)):
        groups.setdefault(find(i), []).append(i)
    merged = []
    for members in groups.values():
        parts = [pieces[i] for i in members]
        geom = parts[0].geom if len(parts) == 1 else shapely.union_all([p.geom for p in parts])
        merged.append(_Piece(geom, sum(p.count for p in parts), sum(p.total for p in parts),
                             max(p.vmax for p in parts), False))
    return merged


def _fill_small_holes(poly: Polygon, min_area: float) -> Polygon:
    if min_area <= 0 or not poly.interiors:
        return poly
    holes = [r for r in poly.interiors if Polygon(r).area >= min_area]
    return poly if len(holes) == len(poly.interiors) else Polygon(poly.exterior, holes)


def _finish(pieces: list[_Piece], frame: PixelFrame, min_area_um2: float,
            simplify_um: float) -> list[RegionPolygon]:
    """Level-0 mapping, hole filling, simplification, grid snapping and area filtering."""
    if not pieces:
        return []
    um2_per_px0 = frame.mpp0**2
    min_area_px0 = min_area_um2 / um2_per_px0
    min_hole_raster = min_area_px0 / frame.px_x0**2
    polys: list[Polygon] = []
    owner: list[int] = []
    for k, piece in enumerate(pieces):
        for part in shapely.get_parts(piece.geom):
            polys.append(_fill_small_holes(part, min_hole_raster))
            owner.append(k)
    geoms = frame.to_level0(np.array(polys, dtype=object))
    if simplify_um > 0:
        geoms = shapely.simplify(geoms, simplify_um / frame.mpp0, preserve_topology=True)
    geoms = shapely.set_precision(geoms, QUPATH_GRID_PX)  # mode "valid_output": stays valid
    out = []
    for geom, k in zip(geoms, owner, strict=True):
        piece = pieces[k]
        for part in shapely.get_parts(geom):
            if not isinstance(part, Polygon) or part.is_empty or part.area < max(min_area_px0, 0):
                continue
            if not part.is_valid:  # defensive: set_precision promises validity
                continue
            out.append(RegionPolygon(
                polygon=part,
                mean_prob=piece.total / max(piece.count, 1) / 255.0,
                max_prob=piece.vmax / 255.0,
                area_um2=part.area * um2_per_px0,
                perimeter_um=part.length * frame.mpp0,
            ))
    out.sort(key=lambda r: (r.polygon.bounds[1], r.polygon.bounds[0]))
    return out


def vectorize_array(arr: ArrayLike2D, frame: PixelFrame, *, fg_min: int,
                    min_area_um2: float = 0.0, simplify_um: float = 0.0) -> list[RegionPolygon]:
    """Polygons of ``arr >= fg_min`` (a 2-D array or zarr array laid on the slide by ``frame``).

    Reads ``arr`` one ``frame.chunk_px`` chunk at a time, so memory is one chunk plus the
    output whatever the raster size. ``mean_prob``/``max_prob`` are ``value / 255``.

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
    # A component with fewer raster pixels than this can never reach min_area_um2.
    min_px = min_area_um2 / (frame.mpp0 * frame.px_x0) ** 2
    closed: list[_Piece] = []
    open_pieces: list[_Piece] = []
    for row0, col0, rows, cols in frame.chunks():
        block = np.asarray(arr[row0 : row0 + rows, col0 : col0 + cols])
        if block.dtype == bool:
            block = block.view(np.uint8)
        for piece in _chunk_pieces(block, row0, col0, frame, fg_min, min_px):
            (open_pieces if piece.open else closed).append(piece)
    return _finish(closed + _merge_open(open_pieces), frame, min_area_um2, simplify_um)


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
