"""Small synthetic slides for the tests, written once per test session and shared by files.

Each maker writes into ``<pytest basetemp>/synth/`` and reuses the file when another test file
asks for the same slide, so the whole suite pays for every slide once (a few seconds each).
Test modules wrap these in session-scoped fixtures (pytest fixtures cannot be imported across
modules without a conftest, which this module does not own).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from wsi_seg.tools.synth import (
    Layout,
    SynthResult,
    SynthSpec,
    make_layout,
    truth_path_for,
    write_synthetic_slide,
)

#: name -> (size, seed, level_factor); format from the suffix.
SLIDES: dict[str, tuple[tuple[int, int], int, int]] = {
    # 2x pyramid: levels 1, 2, 4 (3000x2000, 1500x1000, 750x500).
    "p2.svs": ((3000, 2000), 1, 2),
    # 4x pyramid: levels 1, 4 (2400x1600, 600x400).
    "p4.svs": ((2400, 1600), 2, 4),
    # Generic tiled TIFF, 2x pyramid: levels 1, 2 (2000x1200, 1000x600). Its own stem: the
    # truth file is <stem>.tumor.geojson, so p2.tif would overwrite p2.svs's.
    "t2.tif": ((2000, 1200), 3, 2),
    # Determinism: the same seed twice, and another seed.
    "det-a.svs": ((1100, 900), 5, 2),
    "det-b.svs": ((1100, 900), 5, 2),
    "det-c.svs": ((1100, 900), 6, 2),
}


def synth_dir(factory: pytest.TempPathFactory) -> Path:
    d = factory.getbasetemp() / "synth"
    d.mkdir(exist_ok=True)
    return d


def synthetic(factory: pytest.TempPathFactory, name: str) -> Path:
    """Path of the named synthetic slide (see :data:`SLIDES`), written on first use."""
    path = synth_dir(factory) / name
    if not path.exists():
        size, seed, factor = SLIDES[name]
        res: SynthResult = write_synthetic_slide(path, size, seed=seed, level_factor=factor)
        assert res.slide_path == path and res.truth_path == truth_path_for(path)
    return path


def layout_of(name: str) -> Layout:
    """The vector layout (tissue, tumour) the named slide was rendered from."""
    size, seed, factor = SLIDES[name]
    fmt = "svs" if name.endswith(".svs") else "tiff"
    return make_layout(SynthSpec(size[0], size[1], seed, 0.5, fmt, factor))


def blank_slide(factory: pytest.TempPathFactory, size: tuple[int, int] = (2048, 1536)) -> Path:
    """A pyramidal generic TIFF of empty glass (near-white with noise, JPEG tiles), 0.5 µm/px.

    What a scanner gives for a slide with nothing on it: OpenSlide opens it with an MPP, and
    tissue detection must find nothing.
    """
    path = synth_dir(factory) / "blank.tif"
    if path.exists():
        return path
    rng = np.random.default_rng(0)
    w, h = size
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for i, d in enumerate((1, 2, 4)):
            lw, lh = w // d, h // d
            glass = np.array([244, 243, 247], np.float32)
            img = glass + rng.normal(0, 1.5, (lh, lw, 1)).astype(np.float32)
            tif.write(np.clip(img, 0, 255).astype(np.uint8), tile=(256, 256),
                      photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                      subfiletype=0 if i == 0 else 1, metadata=None,
                      resolution=(1e4 / (0.5 * d), 1e4 / (0.5 * d)),
                      resolutionunit="CENTIMETER")
    return path
