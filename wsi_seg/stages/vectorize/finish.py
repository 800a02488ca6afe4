"""Finishing regions: area filtering, level-0 mapping, simplification, grid snapping.

Each region is written one canonical way (:func:`.simplify.canonical_polygons`: the same
coordinates whatever chunk borders cut it), mapped to level 0
(:meth:`wsi_seg.core.geometry.PixelFrame.to_level0`), simplified (``simplify_um``,
topology-preserving Douglas-Peucker; ring by ring for a polygon with very many holes and
vertices, see :func:`.simplify.simplify_polygons`), snapped to QuPath's 0.01 px
grid with ``shapely.set_precision`` (which keeps it valid) unless the corners already lie on it
(pixel size ``px_x0`` and origin multiples of 0.01), and parts whose simplified area is below
``min_area_um2`` are dropped too (no reported area is below it).
"""

from __future__ import annotations

import numpy as np
import shapely

from wsi_seg.core.geometry import QUPATH_GRID_PX, PixelFrame
from wsi_seg.stages.vectorize.chunk import _Batch
from wsi_seg.stages.vectorize.frame import RegionPolygon
from wsi_seg.stages.vectorize.simplify import canonical_polygons, simplify_polygons


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
    if suspect.any():
        polys, stats = _repaired(polys, stats, suspect)
    # Written one way whatever chunk borders cut the region (they leave extra vertices and
    # other ring starts), on exact raster corners: so the simplified polygons, and the exact
    # ones as written, depend on the raster alone, not on the chunk size.
    polys = canonical_polygons(polys)
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




def _repaired(polys: np.ndarray, stats: np.ndarray,
              suspect: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The polygons (and their rows of ``stats``) with the invalid ``suspect`` ones split into
    valid parts (``make_valid``; each part keeps its region's statistics).

    Polygons are valid by construction unless a ring needed repair (a saddle across a chunk
    border, :mod:`.chunk`); checking every polygon would cost seconds for hole-riddled maps,
    so only suspect ones are checked.
    """
    bad = np.nonzero(suspect)[0][~shapely.is_valid(polys[suspect])]
    if not bad.size:
        return polys, stats
    fixed = shapely.make_valid(polys[bad])
    parts, which = shapely.get_parts(fixed, return_index=True)
    areal = (shapely.get_type_id(parts) == 3) & ~shapely.is_empty(parts)
    keep = np.ones(len(polys), dtype=bool)
    keep[bad] = False
    return (np.concatenate([polys[keep], parts[areal]]),
            np.concatenate([stats[keep], stats[bad][which[areal]]]))
