"""The pipeline's stages, in the order a slide meets them.

1. :mod:`~wsi_seg.stages.slide` reads a slide by microns per pixel (with
   :mod:`~wsi_seg.stages.read_pool` and :mod:`~wsi_seg.stages.tiff_reader`);
2. :mod:`~wsi_seg.stages.tissue` finds tissue on a thumbnail;
3. :mod:`~wsi_seg.stages.tiling` plans overlapping windows and the blocks that own them;
4. :mod:`~wsi_seg.stages.infer` runs the model (:mod:`~wsi_seg.stages.card`,
   :mod:`~wsi_seg.stages.models`, :mod:`~wsi_seg.stages.backends`) over batches of windows;
5. :mod:`~wsi_seg.stages.blend` blends overlapping predictions seamlessly;
6. :mod:`~wsi_seg.stages.mosaic` stores them as a chunked, multiscale OME-Zarr mosaic;
7. :mod:`~wsi_seg.stages.vectorize` traces tumour polygons, and
   :mod:`~wsi_seg.stages.geojson` writes them for QuPath.

A stage imports only stages before it (and :mod:`wsi_seg.core`); running them over slides is
:mod:`wsi_seg.orchestration`'s work.
"""
