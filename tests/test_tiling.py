"""wsi_seg.stages.tiling: MONAI's window placement on one global grid, and the block plan."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsi_seg.stages.tiling import plan_blocks, step_for, window_starts


def monai_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts of MONAI's sliding_window_inference along one axis, in image pixels.

    Written from MONAI 1.x (``_get_scan_interval`` + ``dense_patch_slices`` after padding the
    image to at least ``roi``, half before and the rest after), independently of wsi_seg.
    """
    pad_before = max(roi - size, 0) // 2
    padded = max(size, roi)
    interval = roi if roi == padded else int(roi * (1 - overlap))
    interval = interval if interval > 0 else 1
    num = math.ceil(padded / interval)
    scan = next((d for d in range(num) if d * interval + roi >= padded), None)
    n = scan + 1 if scan is not None else 1
    starts = []
    for i in range(n):
        s = i * interval
        s -= max(s + roi - padded, 0)
        starts.append(s - pad_before)
    return starts


@pytest.mark.parametrize("roi", [1, 7, 64, 256])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9, 0.999])
def test_window_starts_follow_monai(roi: int, overlap: float) -> None:
    for size in [*range(1, 3 * roi + 5), 1000, 4097, 10_001]:
        got = window_starts(size, roi, step_for(roi, overlap)).tolist()
        assert got == monai_starts(size, roi, overlap), (size, roi, overlap)


def test_step_for() -> None:
    assert step_for(256, 0.25) == 192
    assert step_for(256, 0.0) == 256
    assert step_for(50, 0.5) == 25
    assert step_for(3, 0.9) == 1  # never zero
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            step_for(256, bad)


def test_window_starts_properties() -> None:
    s = window_starts(1000, 256, 192)
    assert s.dtype == np.int64 and s[0] == 0 and s[-1] == 1000 - 256
    assert (np.diff(s) > 0).all() and (np.diff(s)[:-1] == 192).all()
    # An axis shorter than the window: one centred window (padding half before).
    assert window_starts(100, 256, 192).tolist() == [-78]
    with pytest.raises(ValueError):
        window_starts(100, 0, 1)


def check_plan(w: int, h: int, roi: int, step: int, block: int, chunk: int,
               keep: np.ndarray | None) -> None:
    keep_fn = None
    if keep is not None:
        k = keep

        def keep_fn(y_lo: np.ndarray, y_hi: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray
                    ) -> np.ndarray:
            assert y_lo.shape == (k.shape[0], 1) and x_lo.shape == (1, k.shape[1])
            assert (y_hi - y_lo == roi).all() and (x_hi - x_lo == roi).all()
            return k

    plan = plan_blocks(w, h, roi, step, block, chunk, keep_fn)
    sy, sx = window_starts(h, roi, step), window_starts(w, roi, step)
    np.testing.assert_array_equal(plan.starts_y, sy)
    np.testing.assert_array_equal(plan.starts_x, sx)
    kept = np.ones((len(sy), len(sx)), bool) if keep is None else keep
    np.testing.assert_array_equal(plan.keep, kept)
    n_rows, n_cols = -(-h // block), -(-w // block)
    assert plan.n_blocks_total == n_rows * n_cols
    assert plan.n_tiles == kept.sum() and plan.n_windows_total == kept.size
    listed = {(b.row, b.col) for b in plan.blocks}
    assert len(listed) == len(plan.blocks)
    assert [(b.row, b.col) for b in plan.blocks] == sorted(listed)  # row-major
    for row in range(n_rows):
        for col in range(n_cols):
            yw, xw = row * block, col * block
            bh, bw = min(block, h - yw), min(block, w - xw)
            # Windows touching the block (overlapping its pixels).
            ti = np.flatnonzero((sy < yw + bh) & (sy + roi > yw))
            tj = np.flatnonzero((sx < xw + bw) & (sx + roi > xw))
            n = int(kept[np.ix_(ti, tj)].sum())
            if n == 0:
                assert (row, col) not in listed, "a block without tissue is planned"
                continue
            (b,) = [b for b in plan.blocks if (b.row, b.col) == (row, col)]
            # Chunk-aligned, owned region inside the image.
            assert (b.yw, b.xw, b.h_px, b.w_px) == (yw, xw, bh, bw)
            assert b.yw % chunk == 0 and b.xw % chunk == 0
            assert b.key == f"r{row:04d}_c{col:04d}"
            # The window ranges are exactly the windows touching the block ...
            assert b.win_rows == (ti[0], ti[-1] + 1) and b.win_cols == (tj[0], tj[-1] + 1)
            assert b.n_windows == n
            # ... and the halo is their union, which covers the block.
            assert b.halo_yw == sy[ti[0]] and b.halo_yw + b.halo_h_px == sy[ti[-1]] + roi
            assert b.halo_xw == sx[tj[0]] and b.halo_xw + b.halo_w_px == sx[tj[-1]] + roi
            assert b.halo_yw <= yw and b.halo_yw + b.halo_h_px >= yw + bh
            assert b.halo_xw <= xw and b.halo_xw + b.halo_w_px >= xw + bw
            if h >= roi and w >= roi:  # windows never leave the image
                assert b.halo_yw >= 0 and b.halo_yw + b.halo_h_px <= h
                assert b.halo_xw >= 0 and b.halo_xw + b.halo_w_px <= w
    assert plan.n_tile_predictions == sum(b.n_windows for b in plan.blocks)
    # Every kept window is predicted by every block it touches.
    for i, j in zip(*np.nonzero(kept), strict=True):
        touched = [b for b in plan.blocks
                   if b.win_rows[0] <= i < b.win_rows[1] and b.win_cols[0] <= j < b.win_cols[1]]
        assert touched


def test_plan_invariants_all_windows() -> None:
    check_plan(5000, 3000, 256, 192, 1024, 512, None)
    check_plan(1000, 700, 256, 256, 2048, 1024, None)  # one partial block
    check_plan(100, 90, 256, 192, 1024, 1024, None)  # image smaller than a window


def test_plan_invariants_random_tissue() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        roi = int(rng.choice([32, 64, 100]))
        step = max(1, int(roi * (1 - rng.choice([0.0, 0.25, 0.5]))))
        chunk = int(rng.choice([32, 64, 128]))
        block = chunk * int(rng.integers(1, 4))
        w, h = int(rng.integers(10, 700)), int(rng.integers(10, 700))
        ny = len(window_starts(h, roi, step))
        nx = len(window_starts(w, roi, step))
        keep = rng.random((ny, nx)) < rng.choice([0.0, 0.05, 0.3, 1.0])
        check_plan(w, h, roi, step, block, chunk, keep)


def test_blocks_without_tissue_are_skipped() -> None:
    # Tissue only in the top-left corner: one block of 4 remains.
    def top_left(y_lo: np.ndarray, y_hi: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray
                 ) -> np.ndarray:
        return (y_lo < 300) & (x_lo < 300)

    plan = plan_blocks(2048, 2048, 256, 256, 1024, 1024, top_left)
    assert plan.n_blocks_total == 4
    assert [(b.row, b.col) for b in plan.blocks] == [(0, 0)]
    assert plan.n_tiles == 4  # windows at 0 and 256 along each axis


def test_block_must_be_a_multiple_of_chunk() -> None:
    with pytest.raises(ValueError, match="multiple"):
        plan_blocks(1000, 1000, 256, 192, 1000, 512)


@pytest.mark.parametrize("w,h,roi,step,block,chunk", [
    (5000, 3000, 256, 192, 1024, 512), (100, 80, 256, 192, 1024, 512),
    (4000, 4000, 50, 50, 512, 256), (3000, 2000, 64, 48, 256, 128)])
def test_each_kept_window_is_owned_by_one_block(w: int, h: int, roi: int, step: int,
                                                block: int, chunk: int) -> None:
    """Progress counts owned windows; they must add up to the tiles a report gives."""
    rng = np.random.default_rng(w + h)
    mask = rng.random((64, 64)) < 0.6

    def keep(y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return mask[(np.maximum(y0, 0) // 97) % 64, (np.maximum(x0, 0) // 89) % 64]

    plan = plan_blocks(w, h, roi, step, block, chunk, keep)
    assert sum(b.n_owned for b in plan.blocks) == plan.n_tiles
    assert all(0 <= b.n_owned <= b.n_windows for b in plan.blocks)
