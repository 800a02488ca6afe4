"""Truth with very many polygons is drawn into the scoring raster in bounded batches
(:func:`wsi_seg.evaluation.truth.rasterize_truth`): its memory is the raster plus a batch,
not the polygons; its pixels are the ones scoring draws of the truth's geometry; and a large
GeoJSON is streamed, giving the polygons and the one-line errors of a whole parse."""

from __future__ import annotations

import gzip
import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import shapely

from wsi_seg.core.errors import AnnotationError
from wsi_seg.core.geometry import PixelFrame
from wsi_seg.evaluation import annotations as annotations_module
from wsi_seg.evaluation import truth, truth_geojson
from wsi_seg.evaluation.annotations import check_truth_fits, read_truth
from wsi_seg.evaluation.metrics import iou_dice, rasterize_window, score_array
from wsi_seg.evaluation.truth import drawn_areas, rasterize_truth


def _feature(cls: str, geometry: dict[str, Any] | None) -> dict[str, Any]:
    return {"type": "Feature", "properties": {"classification": {"name": cls}},
            "geometry": geometry}


def _polygon(*rings: list[list[Any]]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": list(rings)}


def _squares(path: Path, n_side: int) -> Path:
    """A FeatureCollection of ``n_side``² 4 x 4 px squares, one every 8 px (plain json,
    written a Feature at a time)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('{"type": "FeatureCollection", "features": [')
        for r in range(n_side):
            for c in range(n_side):
                x, y = 8 * c + 2, 8 * r + 2
                fh.write("," if r or c else "")
                json.dump(_feature("Tumor", _polygon(
                    [[x, y], [x + 4, y], [x + 4, y + 4], [x, y + 4], [x, y]])), fh)
        fh.write("]}")
    return path


def _scored_raster(geom_x0: Any, frame: PixelFrame) -> np.ndarray:
    """What metrics.score_array draws of a truth geometry, chunk by chunk."""
    out = np.zeros((frame.height_px, frame.width_px), dtype=bool)
    if geom_x0.is_empty:
        return out
    geom_px = frame.from_level0(geom_x0)
    for row0, col0, rows, cols in frame.chunks():
        out[row0 : row0 + rows, col0 : col0 + cols] = rasterize_window(geom_px, row0, col0,
                                                                       rows, cols)
    return out


def _traced_peak(path: Path, frame: PixelFrame, size: tuple[int, int]
                 ) -> tuple[truth.TruthRaster, int]:
    tracemalloc.start()
    try:
        return rasterize_truth(path, frame, size), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _holding(n_side: int) -> int:
    """Traced bytes of holding the squares as shapely polygons (their GEOS side, several
    times more, is not traced: this is a floor)."""
    tracemalloc.start()
    try:
        polys = [shapely.box(8 * c + 2, 8 * r + 2, 8 * c + 6, 8 * r + 6)
                 for r in range(n_side) for c in range(n_side)]
        held = tracemalloc.get_traced_memory()[0]
        del polys
        return held
    finally:
        tracemalloc.stop()


def test_many_squares_score_in_memory_of_the_raster_not_the_polygons(tmp_path: Path) -> None:
    small, big = 224, 448  # 50,176 and 200,704 squares
    big_path = _squares(tmp_path / "big.geojson", big)
    small_path = _squares(tmp_path / "small.geojson", small)
    assert big_path.stat().st_size > truth_geojson.STREAM_MIN_BYTES  # streamed
    size = (8 * big, 8 * big)
    # Level 2 of the slide: pixel centres at 4k + 2, on every square's left and top edge
    # (half-open: inside) and between squares; each square is exactly one pixel.
    frame = PixelFrame(2 * big, 2 * big, 0.0, 0.0, 4.0, 0.5, 256)
    _traced_peak(small_path, frame, size)  # modules imported before anything is traced

    raster_small, peak_small = _traced_peak(small_path, frame, size)
    raster_big, peak_big = _traced_peak(big_path, frame, size)
    holding_small, holding_big = _holding(small), _holding(big)
    assert raster_big.n_polygons == big**2 and raster_small.n_polygons == small**2
    # Four times the polygons, the same memory: growth is a small part of what holding the
    # extra polygons would cost, and the whole is well under holding them.
    assert peak_big - peak_small < 0.1 * (holding_big - holding_small), \
        (peak_small, peak_big, holding_small, holding_big)
    assert peak_big < 0.5 * holding_big, (peak_big, holding_big)

    # The pixels, and the score, against a reference made without polygons.
    want = np.zeros((2 * big, 2 * big), dtype=bool)
    want[::2, ::2] = True
    assert np.array_equal(np.asarray(raster_big.mask), want)
    rng = np.random.default_rng(7)
    pred = rng.random(want.shape) < 0.3
    tp = int(np.count_nonzero(pred & want))
    union = int(np.count_nonzero(pred | want))
    score = iou_dice(pred, np.asarray(raster_big.mask))
    assert score.iou == tp / union and score.tp == tp

    # The same counts as scoring the truth's geometry (the read_truth path) on the small one.
    geometry = check_truth_fits(read_truth(small_path), size).geometry
    by_geometry = score_array(pred.view(np.uint8), geometry, frame)
    by_raster = iou_dice(pred, np.asarray(raster_small.mask))
    assert (by_raster.tp, by_raster.fp, by_raster.fn) == (by_geometry.tp, by_geometry.fp,
                                                          by_geometry.fn)


def _random_truth(path: Path, n: int, size: tuple[int, int], seed: int) -> Path:
    """Overlapping squares, bow ties (repaired into two) and octagons of two classes, some
    across the slide's edges (within the 2 % margin)."""
    rng = np.random.default_rng(seed)
    w, h = size
    feats = []
    for _ in range(n):
        s = float(rng.uniform(0.5, 12))
        x = float(rng.uniform(-0.012 * w + s, w * 1.008 - s))
        y = float(rng.uniform(-0.012 * h + s, h * 1.008 - s))
        kind = rng.random()
        if kind < 0.7:
            ring = [[x, y], [x + s, y], [x + s, y + 0.7 * s], [x, y + s], [x, y]]
        elif kind < 0.85:
            ring = [[x, y], [x + s, y + s], [x + s, y], [x, y + s], [x, y]]
        else:
            t = np.linspace(0, 2 * np.pi, 9)[:-1]
            ring = [[x + s * np.cos(a), y + s * np.sin(a)] for a in t] + [[x + s, y]]
        feats.append(_feature(str(rng.choice(["Tumor", "Tumor", "Stroma"])), _polygon(ring)))
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


@pytest.mark.parametrize("coverage", [True, False], ids=["coverage", "union"])
@pytest.mark.parametrize("frame", [
    PixelFrame(200, 300, 0.0, 0.0, 1.0, 0.5, 64),
    PixelFrame(55, 82, 0.3, 0.3, 3.7, 0.5, 16),
    PixelFrame(50, 75, 0.0, 0.0, 4.0, 0.5, 1024),
], ids=["level0", "odd", "coarse"])
def test_the_raster_is_what_scoring_draws_of_the_geometry(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, coverage: bool,
        frame: PixelFrame) -> None:
    size = (300, 200)
    path = _random_truth(tmp_path / "t.geojson", 600, size, seed=3)
    if coverage:  # both readers decide union or coverage by the same number
        monkeypatch.setattr(truth, "UNION_MAX_PARTS", 50)
        monkeypatch.setattr(annotations_module, "UNION_MAX_PARTS", 50)
        monkeypatch.setattr(truth, "RASTER_BATCH_POLYGONS", 37)
        monkeypatch.setattr(truth_geojson, "BATCH_FEATURES", 23)
    read = read_truth(path)
    assert (read.geometry.geom_type == "GeometryCollection") == coverage
    want = check_truth_fits(read, size)
    got = rasterize_truth(path, frame, size)
    assert np.asarray(got.mask).sum() > 100
    assert np.array_equal(np.asarray(got.mask), _scored_raster(want.geometry, frame))
    assert (got.classes, got.all_classes, got.n_polygons) == (
        want.classes, want.all_classes, len(want.polygons))


def test_raster_errors_are_the_readers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(truth, "UNION_MAX_PARTS", 50)
    monkeypatch.setattr(annotations_module, "UNION_MAX_PARTS", 50)
    frame = PixelFrame(100, 100, 0.0, 0.0, 1.0, 0.5)
    path = _random_truth(tmp_path / "t.geojson", 300, (300, 200), seed=4)
    for call in (lambda: check_truth_fits(read_truth(path), (100, 100)),
                 lambda: rasterize_truth(path, frame, (100, 100))):
        with pytest.raises(AnnotationError, match="outside the slide") as exc:
            call()
        assert str(exc.value).startswith(f"{path}: ")
    messages = []
    for call in (lambda: read_truth(path, ["Necrosis"]),
                 lambda: rasterize_truth(path, frame, (300, 200), ["Necrosis"])):
        with pytest.raises(AnnotationError, match="no tumour area") as exc:
            call()
        messages.append(str(exc.value))
    assert messages[0] == messages[1]
    empty = tmp_path / "empty.geojson"
    empty.write_text('{"type": "FeatureCollection", "features": []}')
    nothing = rasterize_truth(empty, frame, (100, 100))
    assert not np.asarray(nothing.mask).any() and nothing.classes == ()


def _awkward_features() -> list[dict[str, Any]]:
    sq = [[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]
    return [
        _feature("Tumor", _polygon(sq, [[2, 2], [2, 4], [4, 4], [2, 2]])),  # a hole
        _feature("Tumor", {"type": "MultiPolygon", "coordinates": [[sq], [[[20, 20], [30, 20],
                                                                          [30, 30], [20, 20]]]]}),
        _feature("Tumor", _polygon([[50, 50], [60, 60], [60, 50], [50, 60], [50, 50]])),  # bow tie
        _feature("Tumor", _polygon([[0, 0, float("nan")], [9, 0, 1], [9, 9, 1], [0, 0, 1]])),
        _feature("Tumor", _polygon([[0, 0], [9, 0], [9, 9]])),  # not closed
        _feature("Tumor", _polygon([[0, 0], [5, 0], [9, 0], [0, 0]])),  # no area
        _feature("Stroma", _polygon(sq)),
        _feature("", {"type": "Point", "coordinates": [1, 2]}),
        _feature("Tumor", None),
        _feature("Tumor", {"type": "GeometryCollection", "geometries": [_polygon(sq)]}),
        _feature("Tumor", _polygon([[0, 0], [float("inf"), 0], [9, 9], [0, 0]])),
    ]


@pytest.mark.parametrize("gzipped", [False, True], ids=["plain", "gzip"])
def test_streamed_features_are_the_polygons_of_one_feature_at_a_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzipped: bool) -> None:
    feats = _awkward_features()[:-1] * 5
    text = json.dumps({"type": "FeatureCollection", "features": feats}, indent=1).encode()
    path = tmp_path / "t.geojson"
    path.write_bytes(gzip.compress(text) if gzipped else text)
    monkeypatch.setattr(truth_geojson, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(truth_geojson, "BATCH_FEATURES", 4)
    monkeypatch.setattr(truth_geojson, "_READ_BYTES", 7)  # every value crosses reads

    def whole(_: Path) -> None:
        raise AssertionError("parsed whole")

    monkeypatch.setattr(truth_geojson, "_read_json_doc", whole)
    got = truth_geojson.parse_geojson(path)
    # The reference: each Feature on its own, through shapely's shape() and repair.
    want = [(f["properties"]["classification"]["name"], p) for i, f in enumerate(feats)
            if f["geometry"] for p in drawn_areas(truth_geojson._shape(f["geometry"], i, path))]
    assert [(a.class_name, shapely.to_wkb(p)) for a in got for p in a.polygons] == \
        [(c, shapely.to_wkb(p)) for c, p in want]
    assert {a.class_name for a in got} == {"Tumor", "Stroma", ""}
    # A NaN x or y is refused, naming its Feature, as one Feature at a time does.
    bad = _awkward_features()
    path.write_text(json.dumps({"type": "FeatureCollection", "features": bad}))
    with pytest.raises(AnnotationError, match=f"feature {len(bad) - 1}: NaN or infinite"):
        truth_geojson.parse_geojson(path)


@pytest.mark.parametrize("cut", [
    lambda t: t[:-40], lambda t: t + "x", lambda t: t.replace('"Tumor"', '"Tu\\q"', 1),
    lambda t: t.replace("}, {", "} {", 1), lambda t: t.replace('"Tumor"', '"Tumor', 1),
], ids=["truncated", "extra", "escape", "comma", "string"])
def test_streamed_json_fails_as_json_loads_does(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch,
                                                cut: Any) -> None:
    feats = [_feature("Tumor", _polygon([[0, 0], [9, 0], [9, 9], [0, float("nan")], [0, 0]]
                                        if i == 2 else [[0, 0], [9, 0], [9, 9], [0, 0]]))
             for i in range(6)]
    text = cut(json.dumps({"type": "FeatureCollection", "features": feats}, indent=None))
    path = tmp_path / "t.geojson"
    path.write_text(text)
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        want = f"{path}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
    monkeypatch.setattr(truth_geojson, "STREAM_MIN_BYTES", 0)
    monkeypatch.setattr(truth_geojson, "_READ_BYTES", 5)
    with pytest.raises(AnnotationError) as streamed:
        truth_geojson.parse_geojson(path)
    assert str(streamed.value) == want


def test_a_slide_sized_frame_costs_the_drawn_area_not_its_pixels(tmp_path: Path) -> None:
    """A truth scored at full resolution on a 40,000 px slide: one byte per pixel would be
    1.6 GB; the raster is stored compressed by chunk, glass not at all."""
    size = (40_000, 40_000)
    path = tmp_path / "one.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(
        "Tumor", _polygon([[10_000, 10_000], [13_000, 10_000], [13_000, 12_000],
                           [10_000, 12_000], [10_000, 10_000]]))]}))
    frame = PixelFrame(40_000, 40_000, 0.0, 0.0, 1.0, 0.25)
    raster, peak = _traced_peak(path, frame, size)
    assert peak < 64 * 2**20, peak  # a few 1 MiB chunks in flight, not 1.6 GB
    assert raster.window(9_999, 9_999, 3, 3).tolist() == [[False] * 3] + [[False, True,
                                                                            True]] * 2
    # Scored chunk by chunk against a prediction that is the box's left half: exact counts.
    pred = np.zeros(1, dtype=np.uint8)

    class HalfBox:
        """A prediction with the truth's left half (x 10,000-11,500) as tumour."""

        shape = (40_000, 40_000)

        def __getitem__(self, sl: tuple[slice, slice]) -> np.ndarray:
            rows, cols = sl
            r = np.arange(rows.start, rows.stop)[:, None]
            c = np.arange(cols.start, cols.stop)[None, :]
            return ((r >= 10_000) & (r < 12_000) & (c >= 10_000) & (c < 11_500)).astype(
                pred.dtype)

    got = score_array(HalfBox(), raster, frame)
    assert (got.tp, got.fp, got.fn) == (1_500 * 2_000, 0, 1_500 * 2_000)
    with pytest.raises(ValueError, match="truth raster lies on"):
        score_array(HalfBox(), raster, PixelFrame(20_000, 20_000, 0.0, 0.0, 2.0, 0.25))


def test_the_overlay_draws_a_raster_truth_where_its_geometry_lies(tmp_path: Path) -> None:
    """The overlay of a truth given as its scoring raster tints the thumbnail pixels whose
    centres the truth covers, as its geometry does (a raster twice the thumbnail's
    resolution, the truth on its pixel grid)."""
    from wsi_seg.evaluation.overlay import TRUTH_RGB, render_overlay

    size = (2_000, 1_200)
    box = [[400, 200], [1_000, 200], [1_000, 700], [400, 700], [400, 200]]
    path = tmp_path / "t.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection",
                                "features": [_feature("Tumor", _polygon(box))]}))
    raster = rasterize_truth(path, PixelFrame(240, 400, 0.0, 0.0, 5.0, 0.5, 64), size)
    thumb = np.full((120, 200, 3), 255, dtype=np.uint8)
    by_raster = render_overlay(thumb, 10.0, truth=raster)
    by_geometry = render_overlay(thumb, 10.0, truth=shapely.Polygon(box))
    # Inside the truth (its outline aside), both tint alike; outside, both leave glass.
    assert np.array_equal(by_raster[30:60, 50:90], by_geometry[30:60, 50:90])
    assert (by_raster[30:60, 50:90] != 255).any()
    assert np.array_equal(by_raster[90:, 120:], thumb[90:, 120:])
    # The truth's outline is drawn in its colour on its left edge (column 40: x0 400),
    # below the legend (rows 8-52), and not beside it.
    edge = by_raster[56:68, 39:41].astype(int)
    blue = (edge[..., 2] > edge[..., 0] + 100) & (edge[..., 2] > edge[..., 1] + 100)
    assert blue.mean() > 0.4, edge
    assert TRUTH_RGB[2] > TRUTH_RGB[0] + 100
    assert np.array_equal(by_raster[56:68, 30:34], thumb[56:68, 30:34])
