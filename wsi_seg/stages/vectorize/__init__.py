"""Thresholded probability mosaic -> tumour polygons (with holes) in level-0 slide pixels.

One chunk of a pyramid level at a time, in a thread pool, with memory bounded by the boundary
length of the largest regions, not by the slide area (:mod:`.driver`). Each step lives in its
own module, in the order the data flows through them:

1. :mod:`.trace` - threshold a chunk, decide its 2x2 saddles by the data (over a halo of
   :data:`SADDLE_HALO_PX` around the chunk, so that the result does not depend on the chunk
   size), label components with their probability statistics, and trace exact pixel-edge rings
   (OpenCV on the mask upsampled 2x: a polygon's area equals its pixel count).
2. :mod:`.chunk` - turn the rings into polygons of the components inside the chunk (closed)
   and pieces of those cut by a chunk border (open), dropping regions and filling holes that
   are too small on exact areas, the same test whether or not chunk borders cut them.
3. :mod:`.join` - group open pieces across chunk borders (union-find over the chunks' edge
   strips), union their shells as a coverage and put their holes back.
4. :mod:`.finish` with :mod:`.simplify` - write each region one canonical way (no vertices on
   straight runs, shell ccw, rings from their smallest vertex, holes sorted: what chunk borders
   left must not steer the simplifier), map to level 0, simplify (topology-preserving
   Douglas-Peucker; ring by ring for giant many-hole polygons), snap to QuPath's 0.01 px grid
   where needed so the polygons stay valid there, drop what became too small.

:mod:`.frame` holds what they share (:class:`RegionPolygon`, :func:`threshold_u8`); where
a raster lies on the slide is :class:`wsi_seg.core.geometry.PixelFrame` (re-exported here).
"""

from wsi_seg.core.geometry import QUPATH_GRID_PX, PixelFrame
from wsi_seg.stages.vectorize.chunk import densify_on_grid_lines
from wsi_seg.stages.vectorize.driver import (
    default_workers,
    regions_geometry,
    vectorize_array,
    vectorize_mosaic,
)
from wsi_seg.stages.vectorize.frame import (
    ArrayLike2D,
    RegionPolygon,
    threshold_u8,
)
from wsi_seg.stages.vectorize.simplify import simplify_polygons
from wsi_seg.stages.vectorize.trace import SADDLE_HALO_PX, resolve_saddles

__all__ = [
    "QUPATH_GRID_PX",
    "SADDLE_HALO_PX",
    "ArrayLike2D",
    "PixelFrame",
    "RegionPolygon",
    "default_workers",
    "densify_on_grid_lines",
    "regions_geometry",
    "resolve_saddles",
    "simplify_polygons",
    "threshold_u8",
    "vectorize_array",
    "vectorize_mosaic",
]
