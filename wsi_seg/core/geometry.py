"""Where a raster lies on the slide: the one pixel <-> level-0 mapping of wsi-seg.

Every raster wsi-seg makes or reads (the mosaic and its pyramid levels, the tissue view, a
thumbnail, a truth mask) is a :class:`PixelFrame`: a shape, the level-0 position of its
top-left pixel corner and the level-0 pixels per raster pixel. Polygons are traced on pixel
edges and mapped to level-0 pixels (what QuPath and GeoJSON use) through it, and back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import shapely

QUPATH_GRID_PX = 0.01  # QuPath 0.6+ snaps every imported coordinate to this grid (FORMATS.md)


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

    @property
    def mpp(self) -> float:
        """Micrometres per raster pixel."""
        return self.px_x0 * self.mpp0

    def halved(self, times: int) -> PixelFrame:
        """The frame of a 2x pyramid ``times`` levels coarser: each level halves the shape
        (rounding up: a last odd row or column still gets a pixel) and doubles the pixel."""
        f = 2**times
        return replace(self, height_px=math.ceil(self.height_px / f),
                       width_px=math.ceil(self.width_px / f), px_x0=self.px_x0 * f)

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

    def points_to_level0(self, xy: np.ndarray) -> np.ndarray:
        """``(n, 2)`` raster pixel-edge coordinates ``(x = col, y = row)`` -> level-0 pixels."""
        return xy * self.px_x0 + np.array([self.origin_x0, self.origin_y0])

    def points_from_level0(self, xy: np.ndarray) -> np.ndarray:
        """``(n, 2)`` level-0 pixels -> raster pixel-edge coordinates ``(x = col, y = row)``."""
        return (xy - np.array([self.origin_x0, self.origin_y0])) / self.px_x0

    def to_level0(self, geom: Any) -> Any:
        """Map geometries from raster pixel edges to level-0 pixels (vectorized)."""
        return shapely.transform(geom, self.points_to_level0)

    def from_level0(self, geom: Any) -> Any:
        """Map geometries from level-0 pixels to raster pixel-edge coordinates (vectorized)."""
        return shapely.transform(geom, self.points_from_level0)
