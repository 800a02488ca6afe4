"""Synthetic H&E-like whole-slide images with exact tumour ground truth.

A slide is a vector *layout* (tissue islands, tumour regions with holes, lymphocyte clusters,
all shapely geometry in level-0 pixels) and a *renderer* that paints any level-0 rectangle at
any downsample from that layout and the seed alone. Tiles are rendered on demand and handed to
tifffile as an iterator, so writing a 100,000 x 100,000 px slide keeps memory at a few tiles.

What the pixels look like (the demo models must learn the difference, and it is not only
"darker is tumour"):

* glass: near white, faint noise;
* stroma: pink eosin with fibre-like low-frequency texture, sparse small, elongated nuclei;
* lymphocyte clusters (confounder): dense, small, round, very dark nuclei;
* tumour: crowded, large, pleomorphic nuclei with a dark rim and paler (vesicular) centre.

Nuclei sit on jittered grids whose cells are hashed from ``(seed, population, row, col)``, so a
nucleus crossing a tile border is drawn identically by both tiles. Levels coarser than 2x are
rendered at twice their resolution and box-averaged, so they look like scanner pyramids.

Modules: :mod:`~wsi_seg.tools.synth.layout` (spec and vector layout),
:mod:`~wsi_seg.tools.synth.render` (pixels of any rectangle) and
:mod:`~wsi_seg.tools.synth.write` (the pyramidal TIFF and its truth).
"""

from wsi_seg.tools.synth.layout import TILE_PX, Layout, SynthSpec, make_layout
from wsi_seg.tools.synth.render import MAX_DRAWN_UM, Renderer
from wsi_seg.tools.synth.write import (
    APERIO_THUMBNAIL_PX,
    SynthResult,
    truth_path_for,
    write_synthetic_slide,
    write_truth_geojson,
)

__all__ = [
    "APERIO_THUMBNAIL_PX", "MAX_DRAWN_UM", "TILE_PX", "Layout", "Renderer", "SynthResult",
    "SynthSpec", "make_layout", "truth_path_for", "write_synthetic_slide", "write_truth_geojson",
]
