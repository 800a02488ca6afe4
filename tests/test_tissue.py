"""wsi_seg.stages.tissue: tissue on real slides, on synthetic slides, and none on blank glass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from synth_fixtures import blank_slide, layout_of, synthetic

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.stages.slide import open_slide
from wsi_seg.stages.tissue import TissueMask, detect_tissue_rgb, find_tissue, mask_to_polygons


def test_full_section_tcga_cr(real_slides: Path) -> None:
    # No MPP in the file: the user's --mpp; 0.5 µm/px is right for this 20x-class scan.
    with open_slide(real_slides / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5) as s:
        t = find_tissue(s)
    assert 0.45 < t.fraction < 0.85, t.fraction
    assert len(t.polygons) >= 1
    biggest = max(p.area for p in t.polygons)
    assert biggest > 0.8 * sum(p.area for p in t.polygons)  # one section, not confetti


def test_pale_fragments_1065626(real_slides: Path) -> None:
    with open_slide(real_slides / "1065626.svs") as s:
        t = find_tissue(s)
        w0, h0 = s.dimensions
    assert 0.002 < t.fraction < 0.05, t.fraction
    assert 3 <= len(t.polygons) <= 20
    assert 0.05 < t.area_mm2 < 2.0
    for p in t.polygons:
        assert p.is_valid
        minx, miny, maxx, maxy = p.bounds
        assert minx >= -1 and miny >= -1 and maxx <= w0 + 1 and maxy <= h0 + 1


def test_cmu1(real_slides: Path) -> None:
    with open_slide(real_slides / "CMU-1-Small-Region.svs") as s:
        t = find_tissue(s)
    assert 0.2 < t.fraction < 0.6, t.fraction


def test_blank_slide_has_no_tissue(tmp_path_factory: pytest.TempPathFactory) -> None:
    with open_slide(blank_slide(tmp_path_factory)) as s:
        t = find_tissue(s)
    assert t.empty and t.fraction == 0 and t.area_mm2 == 0 and t.polygons == []
    assert not t.any_in_x0(0, 0, 2048, 1536)


def test_glass_noise_and_jpeg_ringing_are_not_tissue() -> None:
    rng = np.random.default_rng(3)
    glass = np.clip(245 + rng.normal(0, 3, (600, 800, 3)), 0, 255).astype(np.uint8)
    mask, threshold = detect_tissue_rgb(glass, 8.0)
    assert not mask.any() and threshold >= 0.04
    # A pale grey-blue fragment, hardly saturated, is found.
    frag = glass.copy()
    frag[200:300, 300:420] = (205, 208, 222)
    mask, _ = detect_tissue_rgb(frag, 8.0)
    assert mask[210:290, 310:410].all() and mask.sum() < 1.3 * 100 * 120


def test_synthetic_tissue_matches_layout(tmp_path_factory: pytest.TempPathFactory) -> None:
    path = synthetic(tmp_path_factory, "p2.svs")
    with open_slide(path) as s:
        t = find_tissue(s)
    found = shapely.unary_union(t.polygons)
    truth = layout_of("p2.svs").tissue
    iou = found.intersection(truth).area / found.union(truth).area
    assert iou > 0.9, iou
    assert t.fraction == pytest.approx(truth.area / (3000 * 2000), abs=0.05)


def test_min_area_drops_specks() -> None:
    rgb = np.full((400, 400, 3), 245, np.uint8)
    rgb[50:60, 50:60] = (150, 80, 150)  # 10 px at 8 µm/px = 80 µm: 6,400 µm² < 10,000
    rgb[200:300, 200:300] = (150, 80, 150)
    mask, _ = detect_tissue_rgb(rgb, 8.0)
    assert not mask[50:60, 50:60].any() and mask[210:290, 210:290].all()


def test_mask_geometry_and_queries() -> None:
    m = np.zeros((40, 60), bool)
    m[10:30, 20:50] = True
    m[15:25, 30:40] = False  # a hole
    t = TissueMask(m, level0_px_per_px=16.0, origin_x0=100.0, origin_y0=200.0, slide_mpp=0.5,
                   threshold_od=0.1)
    assert t.fraction == pytest.approx(m.mean())
    assert t.area_mm2 == pytest.approx(m.sum() * 8.0 * 8.0 / 1e6)
    (poly,) = t.polygons
    assert len(poly.interiors) == 1
    # Level-0 frame: mask column c covers x0 = 100 + 16 c.
    minx, miny, maxx, maxy = poly.bounds
    assert abs(minx - (100 + 20 * 16)) <= 16 and abs(maxx - (100 + 50 * 16)) <= 16
    assert abs(miny - (200 + 10 * 16)) <= 16 and abs(maxy - (200 + 30 * 16)) <= 16
    assert poly.area == pytest.approx(m.sum() * 256, rel=0.25)
    assert t.any_in_x0(100 + 20 * 16, 200 + 10 * 16, 16, 16)
    assert not t.any_in_x0(100, 200, 16 * 20, 16 * 10)  # up to the tissue, not touching
    assert not t.any_in_x0(100 + 31 * 16, 200 + 16 * 16, 16 * 8, 16 * 8)  # inside the hole
    assert not t.any_in_x0(-5000, -5000, 100, 100)
    # keep_windows at a working resolution of 4 level-0 px per px: view pixel = 4 working px,
    # with the working frame starting at the origin.
    keep = t.keep_windows(4.0)
    y_lo = np.array([[40.0], [0.0], [60.0]])
    x_lo = np.array([[80.0, 0.0, 124.0]])
    got = keep(y_lo, y_lo + 8, x_lo, x_lo + 8)
    want = np.array([[t.any_in_x0(100 + x * 4, 200 + y * 4, 32, 32) for x in x_lo[0]]
                     for y in y_lo[:, 0]])
    np.testing.assert_array_equal(got, want)
    assert got[0, 0] and not got[1, 1] and not got[2, 2]


def test_mask_to_polygons_empty() -> None:
    assert mask_to_polygons(np.zeros((10, 10), bool), PixelFrame(10, 10, 0.0, 0.0, 1.0, 1.0)) == []
