"""Kernels that matter for a run's speed, timed by asv at each commit asked for.

    asv run --config benchmarks/asv.conf.json HEAD~5..HEAD
    asv continuous --config benchmarks/asv.conf.json main HEAD
    asv compare --config benchmarks/asv.conf.json A B

What each kernel is given and must return is in ``kernels.py``; ``benchmarks/test_kernels.py``
checks those results on this checkout.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from . import kernels


class BlendBlock:
    """A block's windows weighed and summed, normalised and made uint8 (predictions given)."""

    params = ([2048, 4096], [1, 5])
    param_names: ClassVar[list[str]] = ["block_px", "maps"]

    def setup(self, block_px: int, maps: int) -> None:
        self.case = kernels.blend_case(block_px, maps)

    def time_blend_block(self, block_px: int, maps: int) -> None:
        kernels.blend(self.case)


class VectorizeChunk:
    """One 1024 px chunk of a mosaic traced into polygons, with ``wsi-seg run``'s defaults."""

    params = (["blobs", "noise"],)
    param_names: ClassVar[list[str]] = ["mask"]

    def setup(self, kind: str) -> None:
        self.mask = kernels.mask(kind)

    def time_vectorize_chunk(self, kind: str) -> None:
        kernels.vectorize(self.mask)


class Downsample:
    """One pyramid level of a 4096 px block (2x2 mean, rounding half up)."""

    def setup(self) -> None:
        self.block = kernels.level_block()

    def time_downsample2_mean(self) -> None:
        kernels.downsample(self.block)


class ReadTiles:
    """A 1000 px box read from a synthetic slide, as a block reads its image: each timed read
    through a freshly opened slide (``number = 1``: setup before every call), so decoded
    tiles are never served from the handle's cache."""

    params = (["level", "resampled"], [1, 2], ["tifffile", "openslide"])
    param_names: ClassVar[list[str]] = ["read", "threads", "reader"]
    number = 1
    warmup_time = 0.0
    timeout = 300

    def setup_cache(self) -> dict[str, str]:
        # Written once per run into asv's working folder for this class (the file then sits
        # in the page cache: what is timed is decoding and resampling, not the disk).
        return {k: str(p.resolve()) for k, p in kernels.write_slides(Path("slides")).items()}

    def setup(self, paths: dict[str, str], kind: str, threads: int, reader: str) -> None:
        self.slide = kernels.open_for_reading(Path(paths[kind]), reader)

    def teardown(self, paths: dict[str, str], kind: str, threads: int, reader: str) -> None:
        self.slide.close()

    def time_read_box(self, paths: dict[str, str], kind: str, threads: int,
                      reader: str) -> None:
        kernels.read_box(self.slide, kind, threads)
