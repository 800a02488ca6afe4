"""The kernels the benchmarks time, their inputs, and what each must return.

Shared by the asv suite (``bench_kernels.py``: one commit against another) and the
pytest-benchmark tests (``benchmarks/test_kernels.py``: this checkout, with its results
checked). wsi-seg is imported inside the functions, so a commit that lacks one of them fails
only the benchmarks that use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The UNet's windows as ``wsi-seg run`` cuts them: 256 px, a quarter overlap.
ROI_PX, OVERLAP = 256, 0.25
#: ``wsi-seg run``'s polygon defaults.
MIN_AREA_UM2, SIMPLIFY_UM = 1000.0, 1.0


def per_pixel_model(n_maps: int = 1) -> Any:
    """A stand-in model: each pixel's probability is a channel of its colour / 255, so the
    blend has real values to weigh (``n_maps`` > 1: one value per map, ``(n, roi, roi, n)``)."""

    def predict(tiles: np.ndarray) -> np.ndarray:
        p = tiles.astype(np.float32) / np.float32(255)
        if n_maps == 1:
            return p[..., 0]
        return np.stack([p[..., i % 3] for i in range(n_maps)], axis=-1)

    return predict


# -- blending a block -----------------------------------------------------------------------
@dataclass
class BlendCase:
    image: np.ndarray
    block: Any
    starts_y: np.ndarray
    starts_x: np.ndarray
    keep: np.ndarray
    spec: Any
    predict: Any


def blend_case(block_px: int = 2048, n_maps: int = 1, seed: int = 0) -> BlendCase:
    """One block of ``block_px`` px, every window kept, over random pixels."""
    from wsi_seg.stages.blend import BlendSpec
    from wsi_seg.stages.tiling import plan_blocks, step_for

    step = step_for(ROI_PX, OVERLAP)
    plan = plan_blocks(block_px, block_px, ROI_PX, step, block_px, min(block_px, 1024))
    (block,) = plan.blocks
    sy, sx, keep = plan.windows_of(block)
    image = np.random.default_rng(seed).integers(0, 256, (block_px, block_px, 3), np.uint8)
    return BlendCase(image, block, sy, sx, keep, BlendSpec(ROI_PX, step, batch_size=32,
                                                           n_maps=n_maps),
                     per_pixel_model(n_maps))


def blend(case: BlendCase) -> np.ndarray:
    """:func:`wsi_seg.stages.blend.blend_block`: the block's uint8 mosaic values."""
    from wsi_seg.stages.blend import blend_block

    return blend_block(case.image, 0, 0, case.block, case.starts_y, case.starts_x, case.keep,
                       case.predict, case.spec)


def blend_reference(case: BlendCase) -> np.ndarray:
    """The same values from the in-memory specification, ``sliding_window_inference``."""
    from wsi_seg.stages.blend import sliding_window_inference, to_uint8

    return to_uint8(sliding_window_inference(case.image, case.predict, ROI_PX, OVERLAP,
                                             batch_size=case.spec.batch_size,
                                             n_maps=case.spec.n_maps))


# -- vectorizing a mask chunk ---------------------------------------------------------------
def mask(kind: str, n: int = 1024, seed: int = 0) -> np.ndarray:
    """An ``n x n`` uint8 probability map: ``blobs`` (an ordinary mask: smooth blobs of
    ~100 px) or ``noise`` (independent random pixels: an untrained model's speckle)."""
    import cv2

    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.integers(0, 256, (n, n), dtype=np.uint8)
    if kind == "blobs":
        cells = max(2, n // 100)
        field = cv2.resize(rng.random((cells, cells)).astype(np.float32), (n, n),
                           interpolation=cv2.INTER_CUBIC)
        return np.clip((field - 0.25) * 255 / 0.75, 0, 255).astype(np.uint8)
    raise ValueError(f"unknown mask {kind!r}")


def frame(n: int, chunk_px: int = 1024) -> Any:
    """A mosaic at 1 µm/px over a 0.5 µm/px slide."""
    from wsi_seg.core.geometry import PixelFrame

    return PixelFrame(n, n, 0.0, 0.0, 2.0, 0.5, chunk_px=chunk_px)


def vectorize(arr: np.ndarray, *, chunk_px: int = 1024, workers: int = 1,
              exact: bool = False) -> list[Any]:
    """:func:`wsi_seg.stages.vectorize.vectorize_array` with ``wsi-seg run``'s defaults
    (``exact``: every region and hole, no simplification)."""
    from wsi_seg.stages.vectorize import vectorize_array

    kw = {} if exact else {"min_area_um2": MIN_AREA_UM2, "simplify_um": SIMPLIFY_UM}
    return vectorize_array(arr, frame(arr.shape[0], chunk_px), fg_min=128, workers=workers,
                           **kw)


# -- the pyramid's 2x2 mean -----------------------------------------------------------------
def level_block(n: int = 4096, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, n), dtype=np.uint8)


def downsample(block: np.ndarray) -> np.ndarray:
    from wsi_seg.stages.mosaic import downsample2_mean

    return downsample2_mean(block)


def downsample_reference(block: np.ndarray) -> np.ndarray:
    """The pyramid rule, plainly: the mean of each 2x2 cell, rounding half up."""
    h, w = block.shape
    s = block.reshape(h // 2, 2, w // 2, 2).sum(axis=(1, 3), dtype=np.uint32)
    return ((s + 2) // 4).astype(np.uint8)


# -- reading tiles from a synthetic slide ---------------------------------------------------
#: ``level``: a 20x-like slide (0.5 µm/px, 2x pyramid) read at its level-0 resolution;
#: ``resampled``: a 40x-like slide (0.2525 µm/px, 4x pyramid) read at the UNet's 1 µm/px,
#: level 0 resampled by 3.96 (each working pixel decodes ~16 slide pixels).
SLIDES = {"level": {"size_px": 2048, "mpp": 0.5, "level_factor": 2, "read_mpp": 0.5},
          "resampled": {"size_px": 4096, "mpp": 0.2525, "level_factor": 4, "read_mpp": 1.0}}
BOX_PX = 1000


def write_slides(folder: Path) -> dict[str, Path]:
    """Each of :data:`SLIDES` written once with the project's synthetic-slide writer."""
    from wsi_seg.tools.synth import write_synthetic_slide

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind, s in SLIDES.items():
        path = folder / f"kernel-{kind}.svs"
        if not path.exists():
            write_synthetic_slide(path, (s["size_px"], s["size_px"]), seed=5, mpp=s["mpp"],
                                  level_factor=s["level_factor"])
        paths[kind] = path
    return paths


def open_for_reading(path: Path, reader: str) -> Any:
    """The slide opened as a run opens it: ``tifffile`` (the default, where it gives
    OpenSlide's pixels) or ``openslide`` (``$WSI_SEG_TIFF_READER=0``)."""
    import os

    from wsi_seg.stages.slide import open_slide
    from wsi_seg.stages.tiff_reader import ENV

    old = os.environ.get(ENV)
    os.environ[ENV] = "0" if reader == "openslide" else "1"
    try:
        return open_slide(path)
    finally:
        if old is None:
            os.environ.pop(ENV)
        else:
            os.environ[ENV] = old


def read_box(slide: Any, kind: str, threads: int) -> np.ndarray:
    """A :data:`BOX_PX` box of working pixels, its tiles read on ``threads`` threads."""
    return slide.read_w(7, 11, BOX_PX, BOX_PX, SLIDES[kind]["read_mpp"], threads=threads)


def read_reference(path: Path) -> np.ndarray:
    """The ``level`` box straight from OpenSlide's ``read_region``."""
    import openslide

    with openslide.OpenSlide(str(path)) as osr:
        return np.asarray(osr.read_region((7, 11), 0, (BOX_PX, BOX_PX)).convert("RGB"))
