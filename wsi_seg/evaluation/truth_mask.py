"""Mask truth: a PNG/TIFF image or a Zarr array, nonzero = tumour, traced to polygons in
level-0 pixels with :mod:`wsi_seg.stages.vectorize`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.files import size_text
from wsi_seg.evaluation.truth import MAX_TRUTH_BYTES, Truth

MASK_SUFFIXES = frozenset({".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg"})
# A mask image is decoded whole (a 1 MB PNG may decode to gigabytes): 268 Mpx (16384² px,
# 256 MiB as 8-bit grey) at most; larger masks go in Zarr, which is read chunk by chunk.
MAX_MASK_PIXELS = 1 << 28



def _mask_array(path: Path) -> Any:
    if path.is_dir():  # Zarr
        import zarr

        try:
            node: Any = zarr.open(str(path), mode="r")
            if isinstance(node, zarr.Group):
                node = node.get("0")
        except Exception as exc:
            raise AnnotationError(f"cannot open Zarr mask: {exc}", path) from None
        if not isinstance(node, zarr.Array) or len(node.shape) != 2:
            raise AnnotationError("Zarr mask must be a 2-D array (or a group with array '0')",
                                  path)
        chunk_bytes = math.prod(node.chunks) * node.dtype.itemsize
        if chunk_bytes > MAX_TRUTH_BYTES:  # each chunk is inflated whole when read
            raise AnnotationError(f"Zarr mask chunks {node.chunks} inflate to "
                                  f"{size_text(chunk_bytes)} each, more than the "
                                  f"{size_text(MAX_TRUTH_BYTES)} allowed", path)
        return node
    import cv2

    _check_mask_pixels(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise AnnotationError("cannot read mask image (corrupt or unsupported)", path)
    if arr.ndim == 3:
        arr = arr.max(axis=2)  # any nonzero channel counts
    return arr


def _check_mask_pixels(path: Path) -> None:
    """AnnotationError for a mask image of more than :data:`MAX_MASK_PIXELS`, judged from its
    header before anything is decoded (a 1 MB PNG can decode to gigabytes)."""
    import warnings

    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as im:
                width, height = im.size
            size = f"{width} x {height} px"
        except Image.DecompressionBombError:  # Pillow's ceiling, where wsi_seg.stages.slide kept it
            width = height = MAX_MASK_PIXELS
            size = f"over {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} Mpx" if Image.MAX_IMAGE_PIXELS \
                else "too large"
        except Exception:
            return  # a format Pillow cannot read the header of: OpenCV decides
    if width * height > MAX_MASK_PIXELS:
        raise AnnotationError(f"mask image is {size}, more than the "
                              f"{MAX_MASK_PIXELS / 1e6:.0f} Mpx read whole; store a mask that "
                              "large as Zarr (read chunk by chunk)", path)


class _Nonzero255:
    """A 2-D array-like seen as 0/255: nonzero pixels become 255.

    With values 0/255 and threshold 1, every corner-only contact (saddle) counts as connected
    when vectorized, i.e. a binary mask keeps 8-connectivity.
    """

    def __init__(self, arr: Any) -> None:
        self.arr = arr
        self.shape = tuple(arr.shape)

    def __getitem__(self, key: Any) -> np.ndarray:
        # uint8 throughout: np.where(..., 255, 0) would build an int64 copy 8x the window.
        return (np.asarray(self.arr[key]) != 0).view(np.uint8) * np.uint8(255)


def read_mask_truth(path: str | Path, *, mask_px_x0: float | None = None,
                    mask_mpp: float | None = None, slide_mpp: float | None = None) -> Truth:
    """A binary mask (nonzero = tumour) traced to polygons in level-0 slide pixels.

    Give the mask's resolution as ``mask_px_x0`` (level-0 px per mask px) or as ``mask_mpp``
    and ``slide_mpp`` (µm per mask px and per level-0 px). The mask's top-left corner is the
    slide's level-0 origin. Zarr masks are read chunk by chunk.
    """
    from wsi_seg.core.geometry import PixelFrame
    from wsi_seg.stages.vectorize import vectorize_array

    path = Path(path)
    if mask_px_x0 is None:
        if mask_mpp is None or slide_mpp is None:
            raise AnnotationError("a mask needs its resolution: give mask_mpp and slide_mpp "
                                  "(or mask_px_x0)", path)
        mask_px_x0 = mask_mpp / slide_mpp
    arr = _mask_array(path)
    rows, cols = int(arr.shape[0]), int(arr.shape[1])
    # Work in windows of the Zarr's chunk rows, kept between 256 and 4096 px: a window is
    # held whole (4096² px = 16 MiB), and one pixel high would take forever.
    chunk = (min(max(int(arr.chunks[0]), 256), 4096) if path.is_dir() else 1024)
    frame = PixelFrame(rows, cols, 0.0, 0.0, float(mask_px_x0), slide_mpp or 1.0, chunk)
    regions = vectorize_array(_Nonzero255(arr), frame, fg_min=1)
    polys = tuple(r.polygon for r in regions)
    geom = shapely.union_all(polys) if polys else MultiPolygon()
    return Truth(path, polys, geom, ("nonzero",), ("nonzero",))
