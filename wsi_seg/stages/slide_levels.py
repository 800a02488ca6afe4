"""Level choice and resampling arithmetic of :mod:`wsi_seg.stages.slide`.

Which pyramid level serves a request at some µm/px, how much resampling is left, how a region
is cut into read tiles on a grid fixed in absolute coordinates, and the sub-pixel grid that
makes ``cv2.remap``'s weights depend only on a pixel's position. Pure arithmetic: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: A level this close to the request (relative) is used as is, without resampling.
EXACT_TOL = 1e-3
#: How much finer than its finest level a slide may be asked for before it is an error:
#: 5 % upsampling is harmless (scanners report 0.2495 vs 0.25), more would invent detail.
UPSAMPLE_TOL = 0.05

#: Level pixels per side of the source of one read tile. Bounds the temporaries of a read
#: (~25 MB a thread), keeps cv2.remap under its 32767 px limit, and gives 16 tiles to a
#: 4096 px box at 2x. The resampling margin (2 scale + 2 px a side) makes neighbouring tiles
#: share a column of slide tiles, which the tile caches mostly absorb.
TILE_SRC_PX = 2048
#: Sub-pixel grid of cv2.remap's bilinear weights (OpenCV's INTER_TAB_SIZE). Sample positions
#: are rounded to it in absolute level coordinates, so the quantisation is the same for a pixel
#: in every region that holds it.
REMAP_SUBPX = 32


@dataclass(frozen=True)
class LevelChoice:
    """The pyramid level serving a request and the resampling left to do.

    Attributes:
        level: pyramid level index read from.
        downsample: level-0 pixels per pixel of that level.
        scale: level pixels per working pixel (>= 1 - UPSAMPLE_TOL; 1 means a pure crop).
    """

    level: int
    downsample: float
    scale: float


def choose_level(downsamples: tuple[float, ...], f: float) -> LevelChoice:
    """Pick the coarsest level not coarser than ``f`` level-0 pixels per working pixel.

    Raises ``ValueError`` when even level 0 is coarser than the request (beyond tolerance).
    """
    best = 0
    for i, d in enumerate(downsamples):
        if d <= f * (1 + EXACT_TOL) and d >= downsamples[best]:
            best = i
    d = downsamples[best]
    if d > f * (1 + UPSAMPLE_TOL):
        raise ValueError(f"finest level is {d / f:.3g}x coarser than requested")
    scale = f / d
    if abs(scale - 1) < EXACT_TOL:
        scale = 1.0
    return LevelChoice(best, d, scale)


def on_remap_grid(pos: np.ndarray) -> np.ndarray:
    """Positions (level px) rounded to remap's sub-pixel grid, as int64 in 1/32 px units."""
    return np.floor(pos * REMAP_SUBPX + 0.5).astype(np.int64)


def tile_step_px(scale: float) -> int:
    """Working pixels per side of a read tile, for ``scale`` level px per working px."""
    return max(16, int(TILE_SRC_PX / max(scale, 1.0)))


def grid_cuts(start: int, n: int, step: int) -> list[tuple[int, int]]:
    """Split ``[start, start + n)`` at the multiples of ``step`` into ``(start, length)`` pieces.

    Cutting on a grid fixed in absolute coordinates (not relative to ``start``) makes
    neighbouring reads share tile edges; for crops and integer factors these fall on
    multiples of 2048 level px, which are edges of the slide's own 256 or 512 px tiles.
    """
    cuts = []
    a, end = start, start + n
    while a < end:
        b = min(end, (a // step + 1) * step)
        cuts.append((a, b - a))
        a = b
    return cuts
