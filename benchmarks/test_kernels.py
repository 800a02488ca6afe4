"""Kernel timings with pytest-benchmark, each result checked against an independent rule.

    python -m pytest benchmarks/test_kernels.py                      # timings (a few minutes)
    python -m pytest benchmarks/test_kernels.py --benchmark-disable  # each kernel once, checked

The second form runs in the test suite (``tests/test_benchmarks_smoke.py``). Nothing here
asserts a time: speed is for reading, correctness is what fails. The kernels and their inputs
are ``asv_benches/kernels.py``, the same that asv times commit against commit.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely
from asv_benches import kernels


@pytest.mark.parametrize(("block_px", "maps"), [(2048, 1), (2048, 5), (4096, 1)])
def test_blend_block(benchmark: Any, block_px: int, maps: int) -> None:
    case = kernels.blend_case(block_px, maps)
    out = benchmark(kernels.blend, case)
    assert out.dtype == np.uint8 and out.shape == case.spec.map_shape(block_px, block_px)
    np.testing.assert_array_equal(out, kernels.blend_reference(case))
    assert out.std() > 0  # real values, not a constant


@pytest.mark.parametrize("kind", ["blobs", "noise"])
def test_vectorize_chunk(benchmark: Any, kind: str) -> None:
    arr = kernels.mask(kind)
    regions = benchmark(kernels.vectorize, arr)
    assert regions and all(shapely.is_valid(r.polygon) for r in regions)
    assert min(r.area_um2 for r in regions) >= kernels.MIN_AREA_UM2
    # The same polygons whatever the chunking and the threads.
    other = kernels.vectorize(arr, chunk_px=256, workers=2)
    assert [r.polygon.wkb for r in other] == [r.polygon.wkb for r in regions]
    if kind == "blobs":
        # Traced exactly, an ordinary mask's regions cover its foreground pixels, no more.
        exact = kernels.vectorize(arr, exact=True)
        assert sum(r.area_um2 for r in exact) == int((arr >= 128).sum()) * 1.0  # 1 µm² px


def test_downsample2_mean(benchmark: Any) -> None:
    block = kernels.level_block()
    out = benchmark(kernels.downsample, block)
    np.testing.assert_array_equal(out, kernels.downsample_reference(block))


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return kernels.write_slides(tmp_path_factory.mktemp("kernel-slides"))


@pytest.fixture
def handles() -> Iterator[list[Any]]:
    opened: list[Any] = []
    yield opened
    for s in opened:
        s.close()


@pytest.mark.parametrize("reader", ["tifffile", "openslide"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("kind", ["level", "resampled"])
def test_read_box(benchmark: Any, slides: dict[str, Path], handles: list[Any], kind: str,
                  threads: int, reader: str) -> None:
    def fresh() -> tuple[tuple[Any, str, int], dict[str, Any]]:
        # Each round through a new handle: decoded tiles never come from its cache.
        handles.append(kernels.open_for_reading(slides[kind], reader))
        return (handles[-1], kind, threads), {}

    out = benchmark.pedantic(kernels.read_box, setup=fresh, rounds=5, iterations=1)
    assert bool(handles[-1].tiff_levels) == (reader == "tifffile")  # the reader asked for
    assert out.shape == (kernels.BOX_PX, kernels.BOX_PX, 3) and out.std() > 0
    if kind == "level":
        np.testing.assert_array_equal(out, kernels.read_reference(slides[kind]))
    # The same pixels with either reader and any number of threads.
    with kernels.open_for_reading(slides[kind], "openslide") as ref:
        np.testing.assert_array_equal(out, kernels.read_box(ref, kind, 1))
