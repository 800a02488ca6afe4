"""What vectorizing yields, and the names it shares.

:class:`RegionPolygon` is one output region; :func:`threshold_u8` is the foreground test
shared with scoring. Where a raster lies on the slide is :class:`wsi_seg.core.geometry.PixelFrame`
(re-exported here with :data:`QUPATH_GRID_PX`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

from shapely.geometry import Polygon


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


def threshold_u8(threshold: float) -> int:
    """Smallest stored value (probability * 255) that counts as tumour: ``p >= threshold``.

    Shared by vectorization and scoring so both see the same foreground.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return max(1, math.ceil(threshold * 255 - 1e-9))

