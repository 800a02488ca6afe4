"""Where a raster lies on the slide, and what vectorizing it yields.

:class:`PixelFrame` maps raster pixel edges to level-0 slide pixels (pixel ``(row, col)`` of
level ``L`` covers ``[origin_x0 + col*s, origin_x0 + (col+1)*s)`` with
``s = geom.level_scale(L)``); :class:`RegionPolygon` is one output region;
:func:`threshold_u8` is the foreground test shared with scoring.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import shapely
from shapely.geometry import Polygon

from wsi_seg.stages.mosaic import Mosaic

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

