"""The probability mosaic: a multiscale OME-Zarr 0.5 (Zarr v3) store of uint8 tumour probability.

Layout of ``mask.zarr``::

    zarr.json            group; attributes ``ome`` (NGFF 0.5 multiscales) and ``wsi_seg``
    0/                   working resolution (the model's MPP), probability * 255, chunked
    1/, 2/, ...          each a 2x mean of the level above, computed chunk by chunk

Frames. Mosaic pixel ``(row, col)`` of level ``L`` covers the level-0 rectangle whose top-left
corner is ``(origin_x0 + col * s, origin_y0 + row * s)`` with ``s = level0_px_per_px * 2**L``
(pixel edges, not centres). ``origin_*`` is the slide's ``openslide.bounds-*`` offset.
In micrometres, NGFF ``scale`` is ``mpp * 2**L`` and ``translation`` puts each level's pixel
centres where they belong, so napari overlays the levels exactly.

Writers own whole chunks (blocks are chunk-aligned), so no locks are needed; chunks that are
never written hold the fill value 0 and are not stored at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr
import zarr.storage

from wsi_seg.core.geometry import PixelFrame

NGFF_VERSION = "0.5"


@dataclass(frozen=True)
class MosaicGeometry:
    """Where the mosaic sits on the slide.

    Attributes:
        height_px, width_px: level-0 mosaic size in working-resolution pixels.
        mpp: working resolution, micrometres per mosaic pixel at mosaic level 0.
        origin_x0, origin_y0: level-0 slide pixel of the top-left corner of mosaic pixel (0, 0).
        level0_px_per_px: level-0 slide pixels per mosaic pixel at mosaic level 0.
        chunk_px: chunk edge in pixels (same for every level).
    """

    height_px: int
    width_px: int
    mpp: float
    origin_x0: float
    origin_y0: float
    level0_px_per_px: float
    chunk_px: int = 1024

    def frame(self, level: int = 0) -> PixelFrame:
        """Where pyramid level ``level`` lies on the slide (chunked as stored)."""
        return PixelFrame(self.height_px, self.width_px, self.origin_x0, self.origin_y0,
                          self.level0_px_per_px, self.mpp / self.level0_px_per_px,
                          self.chunk_px).halved(level)

    def level_shape(self, level: int) -> tuple[int, int]:
        """Shape (rows, cols) of pyramid level ``level``: ceil-halved once per level."""
        frame = self.frame(level)
        return frame.height_px, frame.width_px

    def level_scale(self, level: int) -> float:
        """Level-0 slide pixels per pixel of pyramid level ``level``."""
        return self.frame(level).px_x0


def n_levels_for(geom: MosaicGeometry, min_size_px: int = 256) -> int:
    """Pyramid depth: halve until the longer side fits ``min_size_px`` (at least one level)."""
    n = 1
    while max(geom.level_shape(n - 1)) > min_size_px:
        n += 1
    return n


def _ome_attrs(geom: MosaicGeometry, n_levels: int, name: str) -> dict[str, Any]:
    datasets = []
    for level in range(n_levels):
        scale_um = geom.mpp * 2**level
        shift_um = (2**level - 1) / 2 * geom.mpp  # centre of a 2^L block of level-0 pixels
        datasets.append(
            {
                "path": str(level),
                "coordinateTransformations": [
                    {"type": "scale", "scale": [scale_um, scale_um]},
                    {"type": "translation", "translation": [shift_um, shift_um]},
                ],
            }
        )
    return {
        "version": NGFF_VERSION,
        "multiscales": [
            {
                "name": name,
                "axes": [
                    {"name": "y", "type": "space", "unit": "micrometer"},
                    {"name": "x", "type": "space", "unit": "micrometer"},
                ],
                "datasets": datasets,
                "type": "mean",
            }
        ],
    }


def create_mosaic(
    path: str | Path,
    geom: MosaicGeometry,
    *,
    provenance: dict[str, Any] | None = None,
    name: str = "tumour probability",
    n_levels: int | None = None,
) -> zarr.Group:
    """Create an empty mosaic store (all levels, fill value 0) and return its group.

    ``provenance`` is stored under the ``wsi_seg`` attribute beside the geometry.
    Overwrites whatever was at ``path``.
    """
    n = n_levels or n_levels_for(geom)
    group = zarr.open_group(store=zarr.storage.LocalStore(str(path)), mode="w", zarr_format=3)
    for level in range(n):
        group.create_array(
            name=str(level),
            shape=geom.level_shape(level),
            chunks=(geom.chunk_px, geom.chunk_px),
            dtype="uint8",
            fill_value=0,
            dimension_names=("y", "x"),
        )
    group.attrs.update(
        {
            "ome": _ome_attrs(geom, n, name),
            "wsi_seg": {"geometry": asdict(geom), "n_levels": n, **(provenance or {})},
        }
    )
    return group


@dataclass(frozen=True)
class Mosaic:
    """An opened mosaic store: its group, geometry and provenance."""

    path: Path
    group: zarr.Group
    geom: MosaicGeometry
    n_levels: int
    provenance: dict[str, Any]

    def level(self, level: int) -> zarr.Array:
        """The uint8 probability array of pyramid level ``level`` (0 = working resolution)."""
        arr = self.group[str(level)]
        assert isinstance(arr, zarr.Array)
        return arr

    def chunks(self, level: int) -> Iterator[tuple[int, int, int, int]]:
        """Chunk windows ``(row0, col0, rows, cols)`` of a level, in mosaic pixels."""
        rows, cols = self.geom.level_shape(level)
        c = self.geom.chunk_px
        for row0 in range(0, rows, c):
            for col0 in range(0, cols, c):
                yield row0, col0, min(c, rows - row0), min(c, cols - col0)


def open_mosaic(path: str | Path, mode: Literal["r", "r+"] = "r") -> Mosaic:
    """Open a mosaic written by :func:`create_mosaic`."""
    group = zarr.open_group(store=zarr.storage.LocalStore(str(path), read_only=mode == "r"),
                            mode=mode, zarr_format=3)
    meta: dict[str, Any] = dict(group.attrs["wsi_seg"])  # type: ignore[arg-type]
    geom = MosaicGeometry(**meta.pop("geometry"))
    n = int(meta.pop("n_levels"))
    return Mosaic(Path(path), group, geom, n, meta)


def downsample2_mean(block: np.ndarray) -> np.ndarray:
    """2x2 mean of a uint8 array, rounding half up; an odd last row/column averages what exists.

    This is the pyramid rule: an output pixel is the mean of the (up to four) input pixels it
    covers, so each level equals a direct 2^L-mean of level 0 up to rounding.
    """
    h, w = block.shape
    if h % 2 == 0 and w % 2 == 0:
        # Fast path (every full chunk): four strided views summed in uint16, (s + 2) >> 2 is
        # the same half-up rounding as below with a count of 4.
        s = (block[0::2, 0::2].astype(np.uint16) + block[1::2, 0::2] + block[0::2, 1::2]
             + block[1::2, 1::2])
        return ((s + 2) >> 2).astype(np.uint8)
    h2, w2 = (h + 1) // 2, (w + 1) // 2
    total = np.zeros((h2 * 2, w2 * 2), dtype=np.uint32)
    count = np.zeros_like(total, dtype=np.uint8)
    total[:h, :w] = block
    count[:h, :w] = 1
    sums = total.reshape(h2, 2, w2, 2).sum(axis=(1, 3))
    counts = count.reshape(h2, 2, w2, 2).sum(axis=(1, 3), dtype=np.uint32)
    return ((sums * 2 + counts) // (2 * counts)).astype(np.uint8)


def build_level(mosaic: Mosaic, level: int) -> None:
    """Compute pyramid level ``level`` (>= 1) from ``level - 1``, one output chunk at a time.

    Memory is one 2x2-chunk window of the finer level. Output chunks whose source is all zero
    are skipped (they stay at the fill value), which keeps sparse slides cheap.
    """
    src, dst = mosaic.level(level - 1), mosaic.level(level)
    for row0, col0, rows, cols in mosaic.chunks(level):
        window = np.asarray(src[2 * row0 : 2 * (row0 + rows), 2 * col0 : 2 * (col0 + cols)])
        if not window.any():
            continue
        dst[row0 : row0 + rows, col0 : col0 + cols] = downsample2_mean(window)


def block_levels(geom: MosaicGeometry, n_levels: int, block_px: int) -> int:
    """How many pyramid levels above 0 a block task can write by itself.

    Level ``L`` of a block is chunk-aligned (so no other block writes its chunks) while
    ``block_px / 2**L`` is a multiple of the chunk edge; beyond that levels are left to
    :func:`build_pyramid`.
    """
    levels = 0
    while levels + 1 < n_levels and block_px % (geom.chunk_px * 2 ** (levels + 1)) == 0:
        levels += 1
    return levels


def write_block(mosaic: Mosaic, yw: int, xw: int, values: np.ndarray, levels: int) -> None:
    """Write a chunk-aligned block to level 0 and its own part of levels 1..``levels``.

    Uses the pyramid rule (:func:`downsample2_mean`) on the block alone, which equals what
    :func:`build_level` computes, because the block's 2x2 groups never straddle its border.
    """
    mosaic.level(0)[yw : yw + values.shape[0], xw : xw + values.shape[1]] = values
    for level in range(1, levels + 1):
        values = downsample2_mean(values)
        y, x = yw >> level, xw >> level
        mosaic.level(level)[y : y + values.shape[0], x : x + values.shape[1]] = values


def build_pyramid(mosaic: Mosaic, start_level: int = 1) -> None:
    """Fill levels ``start_level``..n-1 from the level below, chunk by chunk (bounded memory)."""
    for level in range(max(1, start_level), mosaic.n_levels):
        build_level(mosaic, level)
