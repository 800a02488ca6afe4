"""A block's chunks are written exactly when they hold a non-zero value (what zarr decides
itself, by a slower test), in runs along each chunk row, and read back as written."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_seg.stages.mosaic import (
    MosaicGeometry,
    _runs,
    create_mosaic,
    downsample2_mean,
    open_mosaic,
    write_block,
)


def _chunk_files(level_dir: Path) -> set[tuple[int, int]]:
    return {(int(p.parent.name), int(p.name)) for p in (level_dir / "c").glob("*/*")}


def test_block_writes_only_non_empty_chunks_and_reads_back(tmp_path: Path) -> None:
    geom = MosaicGeometry(256, 256, 2.0, 0, 0, 4.0, chunk_px=32)
    create_mosaic(tmp_path / "m.zarr", geom, n_levels=3)
    mosaic = open_mosaic(tmp_path / "m.zarr", mode="r+")
    values = np.zeros((128, 128), np.uint8)
    values[0:32, 32:64] = 7          # chunk (0, 1)
    values[40, 100] = 1              # chunk (1, 3): one pixel
    values[100:128, 0:96] = 200      # chunks (3, 0..2): a run of three
    write_block(mosaic, 128, 0, values, levels=1)
    lv0 = np.asarray(mosaic.level(0)[:])
    assert np.array_equal(lv0[128:, :128], values) and not lv0[:128].any()
    assert _chunk_files(tmp_path / "m.zarr" / "0") == {(4, 1), (5, 3), (7, 0), (7, 1), (7, 2)}
    # Level 1: the block's own share, downsampled; the lone pixel averages to 0 (no chunk).
    lv1 = np.asarray(mosaic.level(1)[:])
    assert np.array_equal(lv1[64:128, :64], downsample2_mean(values))
    want = {(2 + r, c) for r in range(2) for c in range(2)
            if downsample2_mean(values)[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32].any()}
    assert _chunk_files(tmp_path / "m.zarr" / "1") == want


def test_runs() -> None:
    assert _runs([True, True, False, True]) == [(0, 2), (3, 4)]
    assert _runs([False, False]) == [] and _runs([True]) == [(0, 1)]


def test_downsample_fast_path_is_the_rounding_rule() -> None:
    block = np.random.default_rng(1).integers(0, 256, (64, 96), dtype=np.uint8)
    s = (block[0::2, 0::2].astype(np.int64) + block[1::2, 0::2] + block[0::2, 1::2]
         + block[1::2, 1::2])
    assert np.array_equal(downsample2_mean(block), np.floor(s / 4 + 0.5).astype(np.uint8))
