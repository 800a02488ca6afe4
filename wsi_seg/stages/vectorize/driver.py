"""The driver: chunks streamed through a thread pool, open pieces joined, regions finished.

One chunk of a pyramid level at a time, ``workers`` chunks at once in a thread pool (OpenCV,
NumPy and GEOS release the GIL), their results taken in chunk order so the output does not
depend on the threads. The level is read one band at a time (a chunk row and the saddle halo
above and below it, across the width: :class:`_Band`). Memory: at most two bands,
``2 * workers`` chunks in flight, the edge strips of two chunk rows, and the exact pixel-edge
outlines of the regions that cross the current chunk row (a region is finished and simplified
as soon as a chunk row ends below it), so it grows with the width of the raster and the
boundary length of the largest regions, not with the slide area.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import numpy as np
import shapely
from shapely.geometry import MultiPolygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.stages.mosaic import Mosaic
from wsi_seg.stages.vectorize.chunk import _Batch, _chunk_pieces, _Piece, _Strips
from wsi_seg.stages.vectorize.finish import _finish
from wsi_seg.stages.vectorize.frame import ArrayLike2D, RegionPolygon, threshold_u8
from wsi_seg.stages.vectorize.join import _border_pairs, _merge_group, _OpenRegions
from wsi_seg.stages.vectorize.trace import SADDLE_HALO_PX, resolve_saddles

_BATCH = 256  # complete groups of open pieces merged and finished per pool task


@dataclass(frozen=True)
class _ChunkResult:
    """What one chunk contributes: finished regions, pieces that continue, their border ids."""

    regions: list[RegionPolygon]
    opened: list[_Piece]
    strips: _Strips  # chunk-local open-piece ids


@dataclass(frozen=True)
class _Band:
    """The rows of the raster that one chunk row's windows read: the chunk row and the saddle
    halo above and below it, across the whole width (``pixels`` starts at raster row ``row0``).

    Read once per chunk row: a window with its halo reaches into eight neighbouring chunks,
    and a zarr read decodes each chunk it touches whole (3x less decoding than per window).
    """

    row0: int
    pixels: np.ndarray


def _bands(arr: ArrayLike2D, frame: PixelFrame
           ) -> Iterator[tuple[tuple[int, int, int, int], _Band]]:
    """Every chunk window of ``frame`` (row-major) with the band of its chunk row."""
    band, chunk_row0 = _Band(0, np.empty((0, 0), dtype=np.uint8)), -1
    for window in frame.chunks():
        row0, _, rows, _ = window
        if row0 != chunk_row0:
            r_lo = max(0, row0 - SADDLE_HALO_PX)
            r_hi = min(frame.height_px, row0 + rows + SADDLE_HALO_PX)
            band, chunk_row0 = _Band(r_lo, np.asarray(arr[r_lo:r_hi, :])), row0
        yield window, band


def _chunk_work(item: tuple[tuple[int, int, int, int], _Band], frame: PixelFrame,
                fg_min: int, min_px: float, simplify_um: float) -> _ChunkResult:
    """Trace and finish one chunk (a worker thread's task; touches no shared state)."""
    (row0, col0, rows, cols), band = item
    # Saddles are decided over a halo around the chunk, so a saddle on a chunk border is
    # decided as it would be in one whole-raster pass, by both chunks that share it alike.
    # The band holds the rows of it (:func:`_bands`); the columns are cut here.
    r_lo, c_lo = band.row0, max(0, col0 - SADDLE_HALO_PX)
    c_hi = min(frame.width_px, col0 + cols + SADDLE_HALO_PX)
    wide = band.pixels[:, c_lo:c_hi]
    if wide.dtype == bool:
        wide = wide.view(np.uint8)
    inner = (slice(row0 - r_lo, row0 - r_lo + rows), slice(col0 - c_lo, col0 - c_lo + cols))
    block = wide[inner]
    fg = wide >= fg_min
    decided = resolve_saddles(fg, wide, fg_min)[inner] if fg.any() else fg[inner]
    closed, opened, strips = _chunk_pieces(block, decided, row0, col0, frame, min_px)
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
    batch = _Batch.concat([_merge_group(group, min_px, frame.chunk_px) for group in groups])
    return _finish(batch, frame, min_px, simplify_um, workers)


def default_workers() -> int:
    """Threads used when ``workers`` is None: the CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _sorted(regions: list[RegionPolygon]) -> list[RegionPolygon]:
    """Regions top to bottom, then left to right (by bounds; ties by extent, area and the
    shell's first vertex), an order of the polygons alone: not of the chunks they came from.
    """
    if not regions:
        return regions
    polys = np.array([r.polygon for r in regions], dtype=object)
    minx, miny, maxx, maxy = shapely.bounds(polys).T
    first = shapely.get_point(shapely.get_exterior_ring(polys), 0)
    order = np.lexsort((shapely.get_y(first), shapely.get_x(first), shapely.area(polys), maxx,
                        maxy, minx, miny))
    return [regions[k] for k in order]


def vectorize_array(arr: ArrayLike2D, frame: PixelFrame, *, fg_min: int,
                    min_area_um2: float = 0.0, simplify_um: float = 0.0,
                    workers: int | None = None) -> list[RegionPolygon]:
    """Polygons of ``arr >= fg_min`` (a 2-D array or zarr array laid on the slide by ``frame``).

    Reads ``arr`` one band of ``frame.chunk_px`` rows (and a small halo) at a time and traces
    it ``workers`` chunks at once; besides the output, memory holds two bands,
    ``2 * workers`` chunks and the edge strips of two chunk rows: it grows with the raster's
    width, not its area. The result does not depend on ``workers``.
    ``mean_prob``/``max_prob`` are ``value / 255``.

    Args:
        arr: 2-D uint8 (or integer/bool) array-like of shape ``(frame.height_px, frame.width_px)``;
            read from several threads at once.
        frame: where the raster lies on the slide (level-0 origin and pixel size, mpp).
        fg_min: smallest value that is foreground.
        min_area_um2: regions (and holes) smaller than this many µm² are dropped (filled).
        simplify_um: Douglas-Peucker tolerance in µm (0: keep every pixel corner).
        workers: threads tracing chunks (None: :func:`default_workers`; 1: this thread only).

    Example: a 32 px square with an 8 px hole, on a raster of 4 level-0 px per pixel at
    0.25 µm per level-0 px (so 1 µm per raster pixel):

    >>> import numpy as np
    >>> from wsi_seg.core.geometry import PixelFrame
    >>> mask = np.zeros((64, 64), np.uint8)
    >>> mask[8:40, 8:40] = 255
    >>> mask[16:24, 16:24] = 0
    >>> frame = PixelFrame(64, 64, origin_x0=0.0, origin_y0=0.0, px_x0=4.0, mpp0=0.25)
    >>> [region] = vectorize_array(mask, frame, fg_min=128)
    >>> region.polygon.bounds, len(region.polygon.interiors), region.area_um2
    ((32.0, 32.0, 160.0, 160.0), 1, 960.0)
    """
    if tuple(arr.shape) != (frame.height_px, frame.width_px):
        raise ValueError(f"array shape {arr.shape} does not match frame "
                         f"{(frame.height_px, frame.width_px)}")
    # A region (or hole) with fewer raster pixels than this can never reach min_area_um2.
    min_px = min_area_um2 / (frame.mpp0 * frame.px_x0) ** 2
    work = partial(_chunk_work, frame=frame, fg_min=fg_min, min_px=min_px,
                   simplify_um=simplify_um)
    n_workers = default_workers() if workers is None else max(1, workers)
    pool = ThreadPoolExecutor(n_workers, "vectorize") if n_workers > 1 else None
    try:
        regions = _stream(pool, work, _bands(arr, frame), frame, min_px, simplify_um,
                          n_workers)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return _sorted(regions)


def _stream(pool: ThreadPoolExecutor | None,
            work: Callable[[tuple[tuple[int, int, int, int], _Band]], _ChunkResult],
            items: Iterable[tuple[tuple[int, int, int, int], _Band]], frame: PixelFrame,
            min_px: float, simplify_um: float, n_workers: int) -> list[RegionPolygon]:
    """Regions of every chunk window of ``frame`` (``items``: each with its band), traced by
    ``work`` in ``pool`` (unsorted).

    Open pieces are linked to their neighbours as each chunk arrives (in chunk order); at the
    end of a chunk row, the groups that cannot grow any more are merged and finished.
    """
    regions: list[RegionPolygon] = []
    merging: list[Future[list[RegionPolygon]]] = []  # complete groups of open pieces
    open_regions = _OpenRegions()
    n_open = 0
    strips: dict[tuple[int, int], _Strips] = {}
    c = frame.chunk_px
    for ((row0, col0, _, cols), _), done in _in_order(pool, work, items, 2 * n_workers):
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
            # Merged and simplified in the pool as the next rows are traced; final already,
            # so no staircase is held for long. A giant region (a noise map's) may spread its
            # rings over every core: the rows still traced share them.
            for k in range(0, len(groups), _BATCH):
                merging.append(_submit(pool, _finish_groups, groups[k : k + _BATCH], frame,
                                       min_px, simplify_um, n_workers))
    # What is left (regions reaching the last chunk row) has the whole pool to itself.
    last = list(open_regions.pop_complete(None))
    merging.append(_submit(None, _finish_groups, last, frame, min_px, simplify_um, n_workers))
    for future in merging:
        regions += future.result()
    return regions


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
    return vectorize_array(mosaic.level(level), mosaic.geom.frame(level),
                           fg_min=threshold_u8(threshold), min_area_um2=min_area_um2,
                           simplify_um=simplify_um, workers=workers)


def regions_geometry(regions: list[RegionPolygon]) -> BaseGeometry:
    """All regions as one (Multi)Polygon in level-0 pixels (for scoring and drawing)."""
    if not regions:
        return MultiPolygon()
    return shapely.union_all([r.polygon for r in regions])
