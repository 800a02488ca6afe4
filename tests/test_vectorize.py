"""Vectorize: exact pixel-edge polygons, chunk-border merging, holes, units, QuPath grid."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.evaluation.metrics import rasterize_window
from wsi_seg.stages.geojson import write_geojson
from wsi_seg.stages.mosaic import MosaicGeometry, build_pyramid, create_mosaic, open_mosaic
from wsi_seg.stages.vectorize import (
    QUPATH_GRID_PX,
    PixelFrame,
    densify_on_grid_lines,
    resolve_saddles,
    threshold_u8,
    vectorize_array,
    vectorize_mosaic,
)

# Mosaic at 1 µm/px over a 0.5 µm/px slide whose bounds start at (100, 60): the origin and the
# scale must both show up in the level-0 coordinates.
GEOM = MosaicGeometry(height_px=700, width_px=900, mpp=1.0, origin_x0=100.0, origin_y0=60.0,
                      level0_px_per_px=2.0, chunk_px=128)


def _blob(cx: float, cy: float, r: float, seed: int) -> Polygon:
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    rr = r * (1 + 0.15 * np.sin(3 * t + rng.uniform(0, 6)) + 0.08 * rng.uniform(-1, 1, t.size))
    return Polygon(np.c_[cx + rr * np.cos(t), cy + rr * np.sin(t)])


def _truth_level0() -> shapely.MultiPolygon:
    """Blobs in level-0 px: one with a hole, one across many chunk borders, small ones."""
    ring = _blob(700, 600, 280, 1).difference(_blob(700, 600, 110, 2))  # has a hole
    big = _blob(1450, 800, 330, 3)  # spans several 128-px chunks of the mosaic (256 px level 0)
    small = [_blob(200 + 150 * i, 1300, 30 + 10 * i, 10 + i) for i in range(5)]
    truth = shapely.MultiPolygon([ring, big, *small])
    assert truth.is_valid  # parts apart: the test counts them
    return truth


def _mosaic_of(truth_x0: shapely.Geometry, path: Path, value: int = 230) -> object:
    create_mosaic(path, GEOM)
    mosaic = open_mosaic(path, mode="r+")
    frame = mosaic.geom.frame(0)
    truth_px = frame.from_level0(truth_x0)
    arr = mosaic.level(0)
    for row0, col0, rows, cols in mosaic.chunks(0):
        mask = rasterize_window(truth_px, row0, col0, rows, cols)
        arr[row0 : row0 + rows, col0 : col0 + cols] = np.where(mask, value, 0).astype(np.uint8)
    build_pyramid(mosaic)
    return open_mosaic(path)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> tuple[shapely.Geometry, object]:
    truth = _truth_level0()
    return truth, _mosaic_of(truth, tmp_path_factory.mktemp("v") / "mask.zarr")


def test_oracle_round_trip_iou(oracle: tuple[shapely.Geometry, object]) -> None:
    truth, mosaic = oracle
    regions = vectorize_mosaic(mosaic, 0)  # type: ignore[arg-type]
    pred = shapely.union_all([r.polygon for r in regions])
    iou = pred.intersection(truth).area / pred.union(truth).area
    assert iou >= 0.99, iou


def test_hole_and_chunk_crossing_region_survive(oracle: tuple[shapely.Geometry, object]) -> None:
    truth, mosaic = oracle
    regions = vectorize_mosaic(mosaic, 0)  # type: ignore[arg-type]
    assert len(regions) == len(truth.geoms)  # the big blob is one region, not one per chunk
    with_hole = [r for r in regions if r.polygon.interiors]
    assert len(with_hole) == 1
    hole = Polygon(with_hole[0].polygon.interiors[0])
    assert hole.area == pytest.approx(Polygon(truth.geoms[0].interiors[0]).area, rel=0.03)
    big = max(regions, key=lambda r: r.polygon.area)
    minx, miny, maxx, maxy = big.polygon.bounds
    step = GEOM.chunk_px * GEOM.level_scale(0)  # chunk edge in level-0 px
    borders_x = [x for x in np.arange(100, 1900, step) if minx < x < maxx]
    borders_y = [y for y in np.arange(60, 1460, step) if miny < y < maxy]
    assert len(borders_x) >= 2 and len(borders_y) >= 2  # one region across 4+ chunks
    assert big.polygon.area == pytest.approx(truth.geoms[1].area, rel=0.01)


def test_level0_mapping_uses_pixel_edges_origin_and_scale(tmp_path: Path) -> None:
    create_mosaic(tmp_path / "m.zarr", GEOM)
    mosaic = open_mosaic(tmp_path / "m.zarr", mode="r+")
    arr = mosaic.level(0)
    arr[10:13, 127:131] = 200  # 3 x 4 px block across the chunk border at col 128
    regions = vectorize_mosaic(open_mosaic(tmp_path / "m.zarr"), 0)
    assert len(regions) == 1
    s = GEOM.level_scale(0)
    expected = shapely.box(100 + 127 * s, 60 + 10 * s, 100 + 131 * s, 60 + 13 * s)
    assert regions[0].polygon.equals(expected)
    assert regions[0].mean_prob == pytest.approx(200 / 255)
    assert regions[0].area_um2 == pytest.approx(12 * GEOM.mpp**2)  # 12 mosaic px of 1 µm²
    assert regions[0].perimeter_um == pytest.approx(14 * GEOM.mpp)


def test_coarser_level_maps_with_its_scale(oracle: tuple[shapely.Geometry, object]) -> None:
    truth, mosaic = oracle
    regions = vectorize_mosaic(mosaic, 1)  # type: ignore[arg-type]
    pred = shapely.union_all([r.polygon for r in regions])
    assert pred.intersection(truth).area / pred.union(truth).area > 0.97
    coords = shapely.get_coordinates(pred)
    s = GEOM.level_scale(1)
    assert np.allclose(((coords - [100, 60]) / s) % 1, 0)  # corners on level-1 pixel edges


def test_exact_pixels_random_masks_many_chunk_sizes() -> None:
    rng = np.random.default_rng(0)
    for trial in range(12):
        h, w = (int(v) for v in rng.integers(5, 90, 2))
        values = rng.integers(0, 256, (h, w)).astype(np.uint8)  # speckle: many saddles
        # vectorize decides saddles chunk by chunk; decided for the whole mask beforehand,
        # none is left, and the polygons must then give back exactly these pixels
        mask = resolve_saddles(values >= 128, values, 128)
        frame = PixelFrame(h, w, 3.0, 5.0, 2.0, 0.25, chunk_px=int(rng.integers(3, 40)))
        regions = vectorize_array(mask.astype(np.uint8) * 255, frame, fg_min=1)
        # area equals the pixel count and every polygon is valid: no pinches, no overlaps
        assert sum(r.polygon.area for r in regions) == pytest.approx(mask.sum() * 4), trial
        assert all(r.polygon.is_valid for r in regions)
        union = shapely.union_all([r.polygon for r in regions])
        back = rasterize_window(frame.from_level0(union), 0, 0, h, w)
        assert np.array_equal(back, mask), trial


def test_valid_on_qupath_grid_after_simplify(oracle: tuple[shapely.Geometry, object]) -> None:
    _, mosaic = oracle
    regions = vectorize_mosaic(mosaic, 0, simplify_um=2.0)  # type: ignore[arg-type]
    for r in regions:
        assert r.polygon.is_valid
        coords = shapely.get_coordinates(r.polygon)
        assert np.allclose(np.round(coords, 2), coords, atol=1e-9)
        snapped = shapely.set_precision(r.polygon, QUPATH_GRID_PX, mode="pointwise")
        assert snapped.is_valid


def test_off_grid_scale_is_snapped_and_stays_valid() -> None:
    rng = np.random.default_rng(2)
    mask = rng.random((120, 120)) < 0.5
    frame = PixelFrame(120, 120, 0.333, 7.777, 1.98765, 0.2516, chunk_px=48)
    assert not frame.on_qupath_grid()
    regions = vectorize_array(mask.astype(np.uint8), frame, fg_min=1, simplify_um=0.3)
    assert regions
    for r in regions:
        coords = shapely.get_coordinates(r.polygon)
        assert np.allclose(np.round(coords, 2), coords, atol=1e-6)
        assert r.polygon.is_valid
        assert shapely.set_precision(r.polygon, QUPATH_GRID_PX, mode="pointwise").is_valid


def test_min_area_drops_small_regions_and_fills_small_holes(
        oracle: tuple[shapely.Geometry, object]) -> None:
    truth, mosaic = oracle
    all_regions = vectorize_mosaic(mosaic, 0)  # type: ignore[arg-type]
    hole_um2 = Polygon(truth.geoms[0].interiors[0]).area * 0.25  # level-0 px are 0.5 µm
    smallest_um2 = min(r.area_um2 for r in all_regions)
    kept = vectorize_mosaic(mosaic, 0, min_area_um2=smallest_um2 + 1)  # type: ignore[arg-type]
    assert len(kept) == len(all_regions) - 1
    filled = vectorize_mosaic(mosaic, 0, min_area_um2=hole_um2 * 1.1)  # type: ignore[arg-type]
    assert not any(r.polygon.interiors for r in filled)


def _saddles_by_rounds(fg: np.ndarray, v: np.ndarray, fg_min: int,
                       max_rounds: int = 4) -> np.ndarray:
    """The saddle rule written plainly (every window, every round): the reference."""
    fg = fg.copy()
    rounds = 0
    while True:
        a, b, c, d = fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:]
        main, anti = a & d & ~b & ~c, b & c & ~a & ~d
        r, q = np.nonzero(main | anti)
        if not r.size:
            return fg
        m = main[r, q]
        f1, f2 = (r, np.where(m, q, q + 1)), (r + 1, np.where(m, q + 1, q))
        b1, b2 = (r, np.where(m, q + 1, q)), (r + 1, np.where(m, q, q + 1))
        vf1, vf2, vb1, vb2 = (v[p].astype(int) for p in (f1, f2, b1, b2))
        connect = (vf1 + vf2 + vb1 + vb2 >= 4 * fg_min) | (rounds >= max_rounds)
        fg[tuple(np.where(vb1 >= vb2, b1[k], b2[k])[connect] for k in (0, 1))] = True
        fg[tuple(np.where(vf1 <= vf2, f1[k], f2[k])[~connect] for k in (0, 1))] = False
        rounds += 1


def test_saddles_decided_as_by_plain_rounds_dense_or_sparse() -> None:
    # resolve_saddles decides a round with whole-array operations when saddles are many and
    # looks only near the last changes otherwise; both must give the plain rule's pixels.
    rng = np.random.default_rng(5)
    for trial in range(60):
        shape = (int(rng.integers(1, 80)), int(rng.integers(1, 80)))
        values = rng.integers(0, 256, shape).astype(np.uint8)
        if trial % 3 == 1:  # sparse: a smooth field with few saddles
            values = cv2.GaussianBlur(values, (0, 0), 3)
        for fg_min in (1, 120, 128, 255):
            for max_rounds in (0, 1, 4):
                got = resolve_saddles(values >= fg_min, values, fg_min, max_rounds)
                want = _saddles_by_rounds(values >= fg_min, values, fg_min, max_rounds)
                assert np.array_equal(got, want), (trial, fg_min, max_rounds)


def test_saddle_decided_by_mean_of_four_values() -> None:
    values = np.array([[200, 100], [90, 180]], np.uint8)  # mean 142.5 >= 128: connected
    assert resolve_saddles(values >= 128, values, 128).tolist() == [[1, 1], [0, 1]]
    values = np.array([[200, 10], [20, 140]], np.uint8)  # mean 92.5 < 128: separated
    assert resolve_saddles(values >= 128, values, 128).tolist() == [[1, 0], [0, 0]]
    binary = np.array([[255, 0], [0, 255]], np.uint8)  # a 0/255 mask: 8-connected, bridged
    assert resolve_saddles(binary >= 1, binary, 1).sum() == 3


def test_diagonal_touch_inside_a_chunk_is_one_valid_polygon() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 0:2] = 255
    mask[2:4, 2:4] = 100  # touch at one corner only: one 8-connected region
    regions = vectorize_array(mask, PixelFrame(4, 4, 0, 0, 1.0, 1.0, chunk_px=4), fg_min=1)
    assert len(regions) == 1 and regions[0].polygon.is_valid
    assert regions[0].polygon.area == 9  # bridged by one pixel (mean of the saddle >= 1)


def test_diagonal_touch_across_chunk_corner_is_decided_as_inside_a_chunk() -> None:
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 0:2] = mask[2:4, 2:4] = 255  # the corner is the corner of four chunks
    for fg_min in (1, 200):  # mean 127.5 of the saddle: connected, then not
        chunked = vectorize_array(mask, PixelFrame(4, 4, 0, 0, 1.0, 1.0, chunk_px=2),
                                  fg_min=fg_min)
        whole = vectorize_array(mask, PixelFrame(4, 4, 0, 0, 1.0, 1.0, chunk_px=4),
                                fg_min=fg_min)
        assert all(r.polygon.is_valid for r in chunked)
        assert len(chunked) == len(whole)
        assert all(a.polygon.equals(b.polygon) for a, b in zip(chunked, whole, strict=True))
        assert len(chunked) == (1 if fg_min == 1 else 2)


def test_noisy_map_with_many_holes_is_valid_without_repair(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Valid by construction: no polygon of a speckled map needs GEOS's repair (the
    ``make_valid`` path once took 300 s on such a map; its speed is benchmarks/' business)."""
    repairs: list[int] = []
    make_valid = shapely.make_valid
    monkeypatch.setattr(shapely, "make_valid",
                        lambda *a, **k: repairs.append(1) or make_valid(*a, **k))
    rng = np.random.default_rng(5)
    # 30 % speckle around a big blob at 90 %: thousands of holes and saddles
    p = np.full((512, 512), 0.3)
    p[60:450, 60:450] = 0.9
    values = np.where(rng.random(p.shape) < p, rng.integers(128, 256, p.shape),
                      rng.integers(0, 128, p.shape)).astype(np.uint8)
    frame = PixelFrame(512, 512, 0, 0, 2.0, 0.5, chunk_px=128)
    regions = vectorize_array(values, frame, fg_min=128)
    assert not repairs
    assert all(r.polygon.is_valid for r in regions)
    assert max(len(r.polygon.interiors) for r in regions) > 1000
    # saddles are decided both ways by the data, so the area stays close to the pixel count
    area_px = sum(r.polygon.area for r in regions) / 4
    assert area_px == pytest.approx(np.count_nonzero(values >= 128), rel=0.02)


def test_empty_mosaic_and_threshold(tmp_path: Path) -> None:
    create_mosaic(tmp_path / "e.zarr", GEOM)
    assert vectorize_mosaic(open_mosaic(tmp_path / "e.zarr"), 0) == []
    assert threshold_u8(0.5) == 128 and threshold_u8(1.0) == 255
    with pytest.raises(ValueError):
        threshold_u8(0.0)


def test_region_covering_whole_chunks_is_one_exact_polygon() -> None:
    mask = np.zeros((40, 50), np.uint8)
    mask[3:37, 2:47] = 200  # covers the middle chunks completely
    mask[20:22, 30:33] = 0  # a hole inside a partial chunk
    frame = PixelFrame(40, 50, 0, 0, 1.0, 1.0, chunk_px=10)
    regions = vectorize_array(mask, frame, fg_min=1)
    assert len(regions) == 1 and regions[0].polygon.is_valid
    assert regions[0].polygon.area == np.count_nonzero(mask)
    assert len(regions[0].polygon.interiors) == 1
    assert regions[0].mean_prob == pytest.approx(200 / 255)
    full = np.full((20, 20), 255, np.uint8)  # one chunk, all tumour, no neighbours
    only = vectorize_array(full, PixelFrame(20, 20, 0, 0, 1.0, 1.0, chunk_px=20), fg_min=1)
    assert len(only) == 1 and only[0].polygon.area == 400


def test_densify_on_grid_lines() -> None:
    ring = np.array([[0, 0], [4, 0], [4, 3], [0, 3]])  # open ring, as OpenCV gives it
    dense = densify_on_grid_lines(ring, 2)
    assert np.array_equal(dense[0], dense[-1])  # closed
    # x = 0, x = 4 and y = 0 are grid lines (spacing 2): unit vertices; y = 3 is not
    assert [2, 0] in dense.tolist() and [4, 1] in dense.tolist() and [0, 2] in dense.tolist()
    assert [2, 3] not in dense.tolist()
    assert Polygon(dense).equals(Polygon(ring))


# --- noise masks: speed, exactness and independence of chunking and threads -----------------


def _saddle_free(values: np.ndarray) -> np.ndarray:
    """``values >= 128`` with every 2x2 saddle decided beforehand for the whole mask.

    Chunks decide saddles only inside themselves; with none left, the polygons must give
    back exactly these pixels whatever the chunking.
    """
    return resolve_saddles(values >= 128, values, 128)


def _noise_masks(seed: int, count: int) -> list[np.ndarray]:
    """Seeded random masks: independent speckle of several densities, and clumpy speckle."""
    rng = np.random.default_rng(seed)
    masks = []
    for k in range(count):
        h, w = (int(v) for v in rng.integers(8, 70, 2))
        if k % 2:
            coarse = rng.integers(0, 256, (h // 3 + 2, w // 3 + 2)).astype(np.uint8)
            values = np.kron(coarse, np.ones((3, 3), np.uint8))[:h, :w]
            values = np.where(rng.random((h, w)) < 0.2, 255 - values, values).astype(np.uint8)
        else:
            density = float(rng.uniform(0.3, 0.8))
            values = np.where(rng.random((h, w)) < density, rng.integers(128, 256, (h, w)),
                              rng.integers(0, 128, (h, w))).astype(np.uint8)
        masks.append(_saddle_free(values).astype(np.uint8) * 255)
    return masks


def _wkb(regions: list) -> list[bytes]:
    return [shapely.to_wkb(r.polygon) for r in regions]


def test_noise_round_trip_for_every_chunk_size_and_thread_count() -> None:
    for trial, mask in enumerate(_noise_masks(7, 10)):
        h, w = mask.shape
        for chunk in (3, 5, 8, 13, 32, max(h, w)):
            frame = PixelFrame(h, w, 3.0, 5.0, 2.0, 0.25, chunk_px=chunk)
            regions = vectorize_array(mask, frame, fg_min=1, workers=1)
            polys = [r.polygon for r in regions]
            assert all(p.is_valid for p in polys), (trial, chunk)
            # areas add up to the pixel count: no overlaps, holes exact
            assert sum(p.area for p in polys) == pytest.approx(np.count_nonzero(mask) * 4)
            back = rasterize_window(frame.from_level0(shapely.union_all(polys)), 0, 0, h, w)
            assert np.array_equal(back, mask > 0), (trial, chunk)
            threaded = vectorize_array(mask, frame, fg_min=1, workers=3)
            assert _wkb(threaded) == _wkb(regions), (trial, chunk)


def test_hole_of_a_corner_joined_part_stays_in_that_part() -> None:
    # A ring of tumour across chunk borders and, in its hole, an island with a hole of its
    # own that touches the ring only at the corner of four chunks: one region of two parts.
    # The island's hole once went to the ring (nested in the ring's hole: invalid).
    mask = np.zeros((24, 24), np.uint8)
    mask[1:23, 1:23] = 255
    mask[7:17, 7:17] = 0
    mask[7, 7] = 255  # a notch of the ring, diagonal to the island's corner at (8, 8)
    mask[8:11, 8:11] = 255
    mask[9, 9] = 0
    regions = vectorize_array(mask, PixelFrame(24, 24, 0, 0, 1.0, 1.0, chunk_px=8), fg_min=1)
    whole = vectorize_array(mask, PixelFrame(24, 24, 0, 0, 1.0, 1.0, chunk_px=24), fg_min=1)
    assert all(r.polygon.is_valid for r in regions)
    assert [(r.polygon.area, len(r.polygon.interiors)) for r in regions] == \
        [(r.polygon.area, len(r.polygon.interiors)) for r in whole]


def test_noise_polygons_are_valid_without_deciding_saddles_first() -> None:
    # Saddles on chunk borders stay undecided: parts touching at corners, holes to place.
    rng = np.random.default_rng(11)
    for seed in range(20):
        values = np.random.default_rng(seed).integers(0, 256, (32, 32)).astype(np.uint8)
        for chunk in (5, 8, 11):
            frame = PixelFrame(32, 32, 0, 0, 1.0, 1.0, chunk_px=chunk)
            regions = vectorize_array(values, frame, fg_min=128, workers=int(rng.integers(1, 3)))
            assert all(r.polygon.is_valid for r in regions), (seed, chunk)
            assert sum(r.polygon.area for r in regions) == pytest.approx(
                shapely.union_all([r.polygon for r in regions]).area)


def test_min_area_counts_filled_holes_whatever_the_chunking() -> None:
    # 5x5 with a 3x3 hole: 16 pixels, 25 with the hole filled. With min area 20 px the hole
    # is filled and the region kept, whether a chunk border cuts it or not (it was dropped
    # by its pixel count when it lay inside one chunk).
    mask = np.zeros((20, 20), np.uint8)
    mask[2:7, 2:7] = 255
    mask[3:6, 3:6] = 0
    for chunk in (4, 10, 20):
        frame = PixelFrame(20, 20, 0, 0, 1.0, 1.0, chunk_px=chunk)
        regions = vectorize_array(mask, frame, fg_min=1, min_area_um2=20.0)
        assert [(r.polygon.area, len(r.polygon.interiors)) for r in regions] == [(25, 0)], chunk
        assert vectorize_array(mask, frame, fg_min=1, min_area_um2=26.0) == []
        assert [r.polygon.area for r in vectorize_array(mask, frame, fg_min=1,
                                                          min_area_um2=9.0)] == [16]


def test_min_area_results_do_not_depend_on_chunk_size() -> None:
    for trial, mask in enumerate(_noise_masks(3, 8)):
        h, w = mask.shape
        for min_area in (3.0, 10.0, 40.0):
            seen = []
            for chunk in (4, 9, 16, max(h, w)):
                frame = PixelFrame(h, w, 0, 0, 1.0, 1.0, chunk_px=chunk)
                regions = vectorize_array(mask, frame, fg_min=1, min_area_um2=min_area)
                assert all(r.polygon.is_valid and r.area_um2 >= min_area for r in regions)
                # holes below the minimum are filled: none is left
                assert all(Polygon(ring).area >= min_area
                           for r in regions for ring in r.polygon.interiors)
                seen.append(shapely.union_all([r.polygon for r in regions]).normalize())
            assert all(g.equals(seen[0]) for g in seen), (trial, min_area)


def test_canonical_polygons_write_one_shape_one_way() -> None:
    from wsi_seg.stages.vectorize.simplify import canonical_polygons

    shell = [(0, 0), (10, 0), (10, 8), (0, 8)]
    holes = [[(1, 1), (1, 3), (3, 3), (3, 1)], [(5, 2), (5, 6), (8, 6), (8, 2)]]
    plain = Polygon(shell, holes)
    # the same shape: shell reversed, started elsewhere, with vertices on straight runs and a
    # repeated one (as chunk borders leave them), holes the other way round and swapped
    other = Polygon([(10, 4), (10, 0), (4, 0), (4, 0), (0, 0), (0, 8), (7, 8), (10, 8)],
                    [[(8, 6), (8, 2), (5, 2), (5, 4), (5, 6)], [(3, 1), (1, 1), (1, 3), (3, 3)]])
    a, b, box = canonical_polygons(np.array([plain, other, Polygon()], dtype=object))
    assert a.equals(plain) and shapely.to_wkb(a) == shapely.to_wkb(b) and box.is_empty
    assert list(a.exterior.coords) == [(0, 0), (10, 0), (10, 8), (0, 8), (0, 0)]
    assert a.exterior.is_ccw and not any(ring.is_ccw for ring in a.interiors)
    assert [ring.coords[0] for ring in a.interiors] == [(1, 1), (5, 2)]


def _smooth_probabilities(h: int, w: int, seed: int) -> np.ndarray:
    """Smoothed white noise as stored probabilities (uint8, mean 128): at 0.5 it thresholds
    into blobs of many sizes and shapes, some with holes, many across chunk borders."""
    noise = np.random.default_rng(seed).random((h, w)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), 10)
    smooth = (smooth - smooth.mean()) / smooth.std()
    return np.clip(128 + 60 * smooth, 0, 255).astype(np.uint8)


def test_simplified_geojson_does_not_depend_on_chunk_size(tmp_path: Path) -> None:
    # One probability map stored as mosaics of 256, 512 and 1024 px chunks, traced with the
    # run's defaults (simplify_um 1, min_area_um2 1000): tumor.geojson must be the same bytes,
    # features and ids alike. Simplification sees a region written one way whatever chunk
    # borders cut it (before: 15 of 41 polygons, and so all 41 ids, differed at 256 px).
    h_px, w_px = 1280, 1536
    values = _smooth_probabilities(h_px, w_px, seed=11)
    written: dict[int, bytes] = {}
    exact_vertices = 0
    for chunk_px in (256, 512, 1024):
        geom = MosaicGeometry(height_px=h_px, width_px=w_px, mpp=1.0, origin_x0=100.0,
                              origin_y0=60.0, level0_px_per_px=2.0, chunk_px=chunk_px)
        store = tmp_path / f"chunk{chunk_px}" / "mask.zarr"
        create_mosaic(store, geom)
        open_mosaic(store, mode="r+").level(0)[:] = values
        mosaic = open_mosaic(store)
        regions = vectorize_mosaic(mosaic, 0, min_area_um2=1000.0, simplify_um=1.0)
        assert all(r.polygon.is_valid for r in regions)
        # same folder and file name in every run: the ids' seed is the same
        folder = tmp_path / f"chunk{chunk_px}" / "slide"
        folder.mkdir()
        written[chunk_px] = write_geojson(regions, folder / "tumor.geojson").read_bytes()
        if chunk_px == 256:
            polys = np.array([r.polygon for r in regions], dtype=object)
            # the map is what the test needs: many regions, holes, regions across seams
            assert len(regions) >= 30 and sum(len(p.interiors) for p in polys) >= 10
            seams = shapely.MultiLineString(
                [[(x0, 0), (x0, 3000)] for x0 in range(100 + 512, 100 + 2 * w_px, 512)]
                + [[(0, y0), (4000, y0)] for y0 in range(60 + 512, 60 + 2 * h_px, 512)])
            assert shapely.intersects(polys, seams).sum() >= 15
            exact = vectorize_mosaic(mosaic, 0, min_area_um2=1000.0, simplify_um=0.0)
            exact_vertices = sum(len(shapely.get_coordinates(r.polygon)) for r in exact)
            # simplification was on and did something
            assert shapely.get_num_coordinates(polys).sum() < 0.7 * exact_vertices
    shapes = {c: [json.dumps(f["geometry"]) for f in json.loads(b)["features"]]
              for c, b in written.items()}
    for chunk_px in (256, 512):
        differ = len(set(shapes[1024]) - set(shapes[chunk_px]))
        assert written[chunk_px] == written[1024], (
            f"chunk {chunk_px} px against 1024 px: {differ} of {len(shapes[1024])} polygons "
            f"differ ({len(shapes[chunk_px])} features), so do the ids")


def test_pinhole_riddled_region_is_traced_in_linear_time(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 261,121 single-pixel holes in one region: RETR_CCOMP links each hole to its parent in
    # time quadratic in their number (30 s in findContours alone); RETR_LIST is linear, and
    # the only mode used.
    modes: list[int] = []
    find = cv2.findContours
    monkeypatch.setattr(cv2, "findContours",
                        lambda img, mode, method: modes.append(mode) or find(img, mode, method))
    n = 1024
    mask = np.full((n, n), 255, np.uint8)
    mask[1:-1:2, 1:-1:2] = 0
    regions = vectorize_array(mask, PixelFrame(n, n, 0, 0, 1.0, 1.0, chunk_px=512), fg_min=1,
                              workers=1)
    assert modes and set(modes) == {cv2.RETR_LIST}
    assert len(regions) == 1 and len(regions[0].polygon.interiors) == 511 * 511
    assert regions[0].polygon.area == n * n - 511 * 511


def test_many_hole_polygon_is_simplified_ring_by_ring_and_stays_valid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_seg.stages.vectorize.simplify as vec

    values = np.random.default_rng(4).integers(0, 256, (200, 200)).astype(np.uint8)
    frame = PixelFrame(200, 200, 0, 0, 1.0, 1.0, chunk_px=64)
    exact = vectorize_array(values, frame, fg_min=128, min_area_um2=30.0)
    geoms = np.array([r.polygon for r in exact], dtype=object)
    assert max(len(p.interiors) for p in geoms) > 10
    found: list[int] = []  # conflicting ring pairs found, per round
    monkeypatch.setattr(vec, "_RINGWISE_WORK", 1000)  # every polygon ring by ring
    real = vec._ring_conflicts

    def conflicts(rings: np.ndarray, moved: np.ndarray | None) -> np.ndarray:
        pairs = real(rings, moved)
        found.append(len(pairs))
        return pairs

    monkeypatch.setattr(vec, "_ring_conflicts", conflicts)
    for tolerance in (0.7, 1.5, 3.0):
        simple = vec.simplify_polygons(geoms, tolerance, workers=2)
        assert all(shapely.is_valid(simple))
        assert all(shapely.get_num_coordinates(simple) <= shapely.get_num_coordinates(geoms))
        vertices = shapely.get_num_coordinates(simple).sum()
        assert vertices < 0.8 * shapely.get_num_coordinates(geoms).sum()
        for before, after in zip(geoms[:40], simple[:40], strict=True):  # quadratic: small ones
            # GEOS itself strays up to ~1.55 x the tolerance (ring start points move)
            assert shapely.hausdorff_distance(before, after) <= tolerance * 2
    # some rings conflicted once simplified apart, and were given back their exact vertices
    assert max(found) > 0


def test_pieces_dissolve_into_the_coverage_union(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pieces of a region are joined by dropping the chunk-border edges they share; the result
    # must be GEOS's coverage union of them, and the fast way must be the one taken.
    import wsi_seg.stages.vectorize.driver as drv
    from wsi_seg.stages.vectorize.join import _dissolved, _merge_group, _Piece

    groups: list[tuple[list[BaseGeometry], int]] = []

    def merge(live: list[_Piece], min_hole_px: float, spacing: int) -> object:
        if len(live) > 1:
            groups.append(([p.shell for p in live], spacing))
        return _merge_group(live, min_hole_px, spacing)

    monkeypatch.setattr(drv, "_merge_group", merge)
    rng = np.random.default_rng(7)
    for trial in range(6):
        values = rng.integers(0, 256, (150, 150)).astype(np.uint8)
        if trial % 2:
            values = cv2.GaussianBlur(values, (0, 0), 1.5)
        frame = PixelFrame(150, 150, 0, 0, 1.0, 1.0, chunk_px=16 + 8 * trial)
        vectorize_array(values, frame, fg_min=int(np.median(values)), workers=1)
    assert len(groups) > 20
    fast = 0
    for shells, spacing in groups:
        got = _dissolved(shells, spacing)
        if got is not None:
            fast += 1
            assert got.is_valid and got.equals(shapely.coverage_union_all(shells))
    assert fast >= 0.9 * len(groups)


def test_a_pixel_edge_ring_pinches_only_where_it_turns_at_a_corner_twice() -> None:
    from wsi_seg.stages.vectorize.chunk import _pinched

    def _pinches(ring: np.ndarray) -> bool:
        return bool(_pinched(ring, np.zeros(len(ring), dtype=np.int64), 1)[0])

    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2]])
    assert not _pinches(square) and not _pinches(np.vstack([square, square[:1]]))
    assert not _pinches(np.array([[0, 0], [1, 0], [1, 0], [1, 1], [0, 1]]))  # doubled corner
    eight = np.array([[0, 0], [1, 0], [1, 1], [2, 1], [2, 2], [1, 2], [1, 1], [0, 1]])
    assert _pinches(eight)  # two squares touching at (1, 1)
    # Many rings at once give each ring's own answer, packed into one key or not.
    rings = [square, eight, np.vstack([eight, eight[:1]]), square + 5]
    points, ring_of = np.concatenate(rings), np.repeat(np.arange(4), [len(r) for r in rings])
    assert _pinched(points, ring_of, 4).tolist() == [False, True, True, False]
    far = points.copy()
    far[ring_of == 3] += 1 << 40  # coordinates too far apart for one int64 key
    assert _pinched(far, ring_of, 4).tolist() == [False, True, True, False]


@pytest.mark.parametrize("n_wanted", [40, 20_000])  # one histogram row per label / sorting
def test_component_statistics_of_wanted_labels_only(n_wanted: int) -> None:
    from wsi_seg.stages.vectorize.trace import _component_stats

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 30_000, (300, 300)).astype(np.int32)  # 0: background
    values = rng.integers(0, 256, (300, 300)).astype(np.uint8)
    wanted = np.zeros(30_000, dtype=bool)
    wanted[rng.choice(np.arange(1, 30_000), n_wanted, replace=False)] = True
    got, kept = _component_stats(labels, values, wanted)
    assert np.array_equal(kept, wanted[labels])
    for label in [*np.nonzero(wanted)[0][:50], *np.nonzero(~wanted)[0][:50]]:
        own = values[labels == label].astype(np.int64)
        expected = [own.size, own.sum(), own.max(initial=0)] if wanted[label] else [0, 0, 0]
        assert got[label].tolist() == expected


def test_holes_are_the_same_labelled_8_or_4_connected_without_checkerboards() -> None:
    # _fill_small_holes labels the background 8-connected (faster); with the saddles decided
    # no two background pixels touch only at a corner, so the holes are the 4-connected ones.
    from wsi_seg.stages.vectorize.trace import _fill_small_holes

    rng = np.random.default_rng(5)
    for _ in range(10):
        values = (rng.random((120, 150)) * 255).astype(np.uint8)
        fg = resolve_saddles(values >= 128, values, 128)
        _, labels, cc, _ = cv2.connectedComponentsWithStats((~fg).view(np.uint8),
                                                            connectivity=4)
        x, y, w, h = (cc[:, k] for k in range(4))
        inside = (x > 0) & (y > 0) & (x + w < 150) & (y + h < 120)
        small = inside & (w * h < 12)
        small[0] = False
        assert np.array_equal(_fill_small_holes(fg, 12), fg | small[labels])


def test_a_vertex_exactly_at_the_tolerance_is_kept() -> None:
    # A 1 px bump on a pixel-edge outline lies exactly 1 px (the tolerance) from the shortcut
    # that would cut it off; ties are kept, so 1 px inlets and spurs are not folded flat.
    from wsi_seg.stages.vectorize import simplify_polygons

    bump = Polygon([(0, 0), (10, 0), (10, 10), (6, 10), (6, 11), (5, 11), (5, 10), (0, 10)])
    [kept] = simplify_polygons(np.array([bump], dtype=object), 1.0)
    assert kept.bounds[3] == 11  # the bump's tip stays
    [cut] = simplify_polygons(np.array([bump], dtype=object), 1.01)
    assert cut.bounds[3] == 10
