"""The block plan: one global window grid, chunk-aligned blocks with halos, tissue only.

All coordinates here are **working-resolution pixels** (the model's MPP): ``xw, yw`` positions,
``row, col`` block or window indices.

Windows (the model's input tiles) follow MONAI's ``sliding_window_inference`` placement on
**one global grid** over the whole working-resolution image: step ``int(roi * (1 - overlap))``
(at least 1), starts ``i * step`` until a window reaches the end, the last one moved back inside
(``start = size - roi``). Only an axis shorter than ``roi`` is padded (half before, the rest
after), which shows up here as a negative start.

Blocks are ``block_px`` squares aligned to the mosaic chunks. A block's **halo** is the union of
the windows that touch it, so processing a block needs nothing from its neighbours and computes
exactly what one pass over the whole image computes at those pixels. Windows and blocks that do
not touch tissue are dropped by one global rule, so the result still does not depend on the block
size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def step_for(roi_px: int, overlap: float) -> int:
    """Window step in pixels for a fractional ``overlap`` (MONAI's rule)."""
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    return max(1, int(roi_px * (1 - overlap)))


def window_starts(size_px: int, roi_px: int, step_px: int) -> np.ndarray:
    """Start of every window along an axis of ``size_px`` pixels (int64, ascending).

    Starts are ``0, step, 2*step, ...`` up to the first window that reaches the end, which is
    moved back to ``size - roi``. An axis shorter than the window gets a single window
    centred on it (negative start: it is padded half before, the rest after).
    """
    if roi_px <= 0 or step_px <= 0:
        raise ValueError("roi and step must be positive")
    if size_px <= roi_px:
        return np.array([-((roi_px - size_px) // 2)], dtype=np.int64)
    n = 1
    while (n - 1) * step_px + roi_px < size_px:
        n += 1
    starts = np.arange(n, dtype=np.int64) * step_px
    starts[-1] = size_px - roi_px
    return starts


@dataclass(frozen=True)
class Block:
    """One unit of work: the owned chunk-aligned region, its halo and its windows.

    Attributes:
        row, col: block index on the block grid.
        xw, yw, w_px, h_px: owned region (written to the mosaic by this block alone).
        halo_xw, halo_yw, halo_w_px, halo_h_px: region read (every window touching the block).
        win_rows, win_cols: half-open index ranges into the plan's window grid.
        n_windows: windows of this block that touch tissue (those that are predicted).
        n_owned: kept windows this block counts as its own: those whose start (clamped to the
            image) lies in its owned region. Each kept window is owned by exactly one block,
            so these sum to the plan's ``n_tiles`` (progress counts tiles as reports do).
    """

    row: int
    col: int
    xw: int
    yw: int
    w_px: int
    h_px: int
    halo_xw: int
    halo_yw: int
    halo_w_px: int
    halo_h_px: int
    win_rows: tuple[int, int]
    win_cols: tuple[int, int]
    n_windows: int
    n_owned: int = 0

    @property
    def key(self) -> str:
        """Stable name of the block, e.g. for completion markers: ``r0003_c0012``."""
        return f"r{self.row:04d}_c{self.col:04d}"


@dataclass(frozen=True)
class BlockPlan:
    """The whole plan of one slide at one working resolution.

    Attributes:
        width_px, height_px: working-resolution image size.
        roi_px, step_px: window edge and step.
        block_px, chunk_px: block and mosaic chunk edges (block is a multiple of chunk).
        starts_y, starts_x: the global window grid.
        keep: ``(len(starts_y), len(starts_x))`` bool, windows touching tissue.
        blocks: blocks with at least one kept window touching them, row-major.
        n_blocks_total: blocks on the grid, with or without tissue.
    """

    width_px: int
    height_px: int
    roi_px: int
    step_px: int
    block_px: int
    chunk_px: int
    starts_y: np.ndarray
    starts_x: np.ndarray
    keep: np.ndarray
    blocks: tuple[Block, ...]
    n_blocks_total: int

    @property
    def n_tiles(self) -> int:
        """Distinct windows that are predicted (touch tissue)."""
        return int(self.keep.sum())

    @property
    def n_tile_predictions(self) -> int:
        """Window predictions over all blocks; more than ``n_tiles`` by the halo overlap."""
        return sum(b.n_windows for b in self.blocks)

    @property
    def n_windows_total(self) -> int:
        return int(self.keep.size)

    def windows_of(self, block: Block) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The window grid restricted to a block: ``(starts_y, starts_x, keep)`` copies.

        Copies, so a task carries kilobytes rather than the whole slide's grid.
        """
        i0, i1 = block.win_rows
        j0, j1 = block.win_cols
        return (self.starts_y[i0:i1].copy(), self.starts_x[j0:j1].copy(),
                self.keep[i0:i1, j0:j1].copy())


#: ``keep_fn(y_lo, y_hi, x_lo, x_hi)`` gets per-window edge arrays (working px, half-open,
#: the y arrays shaped (n, 1) and the x arrays (1, m)) and returns a bool (n, m) array.
KeepFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _block(row: int, col: int, xw: int, yw: int, w_px: int, h_px: int, sx: np.ndarray,
           sy: np.ndarray, roi_px: int, kc: np.ndarray) -> Block | None:
    """The block owning ``[xw, xw + w_px) x [yw, yw + h_px)``, or None when no kept window
    touches it (``kc``: prefix sums of the kept-window grid)."""

    def kept(i0: int, i1: int, j0: int, j1: int) -> int:
        return int(kc[i1, j1] - kc[i0, j1] - kc[i1, j0] + kc[i0, j0])

    # Windows touching [yw, yw + h): start < yw + h and start + roi > yw.
    i0 = int(np.searchsorted(sy + roi_px, yw, side="right"))
    i1 = int(np.searchsorted(sy, yw + h_px, side="left"))
    j0 = int(np.searchsorted(sx + roi_px, xw, side="right"))
    j1 = int(np.searchsorted(sx, xw + w_px, side="left"))
    n = kept(i0, i1, j0, j1)
    if n == 0:
        return None
    halo_xw, halo_yw = int(sx[j0]), int(sy[i0])
    halo_w_px = int(sx[j1 - 1]) + roi_px - halo_xw
    halo_h_px = int(sy[i1 - 1]) + roi_px - halo_yw
    # A window belongs to the block holding its start (clamped: short axes start below 0).
    o_i0, o_i1 = np.searchsorted(np.maximum(sy, 0), [yw, yw + h_px], side="left")
    o_j0, o_j1 = np.searchsorted(np.maximum(sx, 0), [xw, xw + w_px], side="left")
    return Block(row, col, xw, yw, w_px, h_px, halo_xw, halo_yw, halo_w_px, halo_h_px,
                 (i0, i1), (j0, j1), n, kept(int(o_i0), int(o_i1), int(o_j0), int(o_j1)))


def plan_blocks(
    width_px: int,
    height_px: int,
    roi_px: int,
    step_px: int,
    block_px: int = 4096,
    chunk_px: int = 1024,
    keep_fn: KeepFn | None = None,
) -> BlockPlan:
    """Plan the blocks of a ``width_px x height_px`` working-resolution image.

    Args:
        roi_px, step_px: window edge and step (see :func:`step_for`).
        block_px: block edge, a multiple of ``chunk_px``.
        chunk_px: mosaic chunk edge.
        keep_fn: which windows touch tissue (default: all).

    Example: a 5000 x 3000 px image, 256 px windows overlapping by a quarter, 2048 px blocks:

    >>> plan = plan_blocks(5000, 3000, roi_px=256, step_px=step_for(256, 0.25),
    ...                    block_px=2048, chunk_px=1024)
    >>> len(plan.blocks), plan.n_tiles
    (6, 416)
    >>> b = plan.blocks[0]
    >>> (b.xw, b.yw, b.w_px, b.h_px), (b.halo_w_px, b.halo_h_px), b.n_owned
    ((0, 0, 2048, 2048), (2176, 2176), 121)
    """
    if block_px % chunk_px:
        raise ValueError(f"block_px {block_px} must be a multiple of chunk_px {chunk_px}")
    sy = window_starts(height_px, roi_px, step_px)
    sx = window_starts(width_px, roi_px, step_px)
    if keep_fn is None:
        keep = np.ones((len(sy), len(sx)), dtype=bool)
    else:
        keep = np.asarray(
            keep_fn(sy[:, None], sy[:, None] + roi_px, sx[None, :], sx[None, :] + roi_px), bool
        )
    # Prefix sums make "how many kept windows in this index range" O(1) per block.
    kc = np.zeros((len(sy) + 1, len(sx) + 1), dtype=np.int64)
    kc[1:, 1:] = keep.cumsum(0).cumsum(1)
    n_rows = -(-height_px // block_px)
    n_cols = -(-width_px // block_px)
    blocks = []
    for row in range(n_rows):
        yw, h = row * block_px, min(block_px, height_px - row * block_px)
        for col in range(n_cols):
            xw, w = col * block_px, min(block_px, width_px - col * block_px)
            block = _block(row, col, xw, yw, w, h, sx, sy, roi_px, kc)
            if block is not None:
                blocks.append(block)
    return BlockPlan(width_px, height_px, roi_px, step_px, block_px, chunk_px, sy, sx, keep,
                     tuple(blocks), n_rows * n_cols)
