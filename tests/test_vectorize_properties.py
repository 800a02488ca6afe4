"""Property-based tests of the vectorizer: mask -> polygons -> raster, over random masks and
chunk sizes (hypothesis shrinks any failure to a smallest mask)."""

from __future__ import annotations

import numpy as np
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from tests.test_vectorize import _saddle_free
from wsi_seg.evaluation.metrics import rasterize_window
from wsi_seg.stages.vectorize import PixelFrame, vectorize_array

masks = st.integers(2, 28).flatmap(lambda h: st.integers(2, 28).flatmap(
    lambda w: arrays(np.bool_, (h, w))))
PROPS = settings(max_examples=80, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _polygons(mask: np.ndarray, chunk: int, min_area_um2: float = 0.0) -> list:
    h, w = mask.shape
    frame = PixelFrame(h, w, 7.0, 3.0, 2.0, 0.5, chunk_px=chunk)
    regions = vectorize_array(mask.astype(np.uint8) * 255, frame, fg_min=128,
                              min_area_um2=min_area_um2, workers=1)
    return [r.polygon for r in regions]


@PROPS
@given(mask=masks, chunk=st.integers(2, 16))
def test_polygons_are_valid_and_give_the_mask_back(mask: np.ndarray, chunk: int) -> None:
    """Exact for masks without saddles (two pixels touching only at a corner, which the
    vectorizer resolves by the mean of the four values: its own rule, tested elsewhere)."""
    mask = _saddle_free(mask.astype(np.uint8) * 255)
    polys = _polygons(mask, chunk)
    assert all(p.is_valid for p in polys)
    # Disjoint and exact: the areas add up to the pixels (4 level-0 px² per pixel) ...
    assert sum(p.area for p in polys) == np.count_nonzero(mask) * 4
    # ... and rasterised back (pixel centres) they are the mask.
    h, w = mask.shape
    frame = PixelFrame(h, w, 7.0, 3.0, 2.0, 0.5, chunk_px=chunk)
    back = rasterize_window(frame.from_level0(shapely.union_all(polys)), 0, 0, h, w)
    assert np.array_equal(back, mask)


@PROPS
@given(mask=masks, chunk=st.integers(2, 16), min_px=st.integers(0, 12))
def test_results_do_not_depend_on_the_chunk_size(mask: np.ndarray, chunk: int,
                                                 min_px: int) -> None:
    """With or without a minimum area, the covered area is the same for any chunking, raw
    masks included: a saddle on a chunk border is decided as inside a chunk (hypothesis once
    found [[1, 0, 1], [1, 1, 0]] with chunk 2 losing a pixel only when not chunked)."""
    min_area_um2 = min_px * 1.0  # a raster pixel is 2 x 2 level-0 px of 0.5 µm: 1 µm²
    whole = shapely.union_all(_polygons(mask, max(mask.shape), min_area_um2))
    chunked = _polygons(mask, chunk, min_area_um2)
    assert all(p.is_valid for p in chunked)
    assert shapely.union_all(chunked).symmetric_difference(whole).area == 0
