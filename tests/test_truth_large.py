"""Truth with very many polygons (a cell-level annotation: a million outlines) scores in
bounded time: it is kept as a coverage of its polygons, not their union, and rasterised by the
nonzero rule, which is the union pixel for pixel; a large FeatureCollection is parsed one
Feature at a time, never held whole as JSON objects."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import GeometryCollection, Polygon

from wsi_seg.evaluation import truth_geojson
from wsi_seg.evaluation.annotations import check_truth_fits, read_truth
from wsi_seg.evaluation.metrics import rasterize_window, score_geometries
from wsi_seg.evaluation.truth import UNION_MAX_PARTS
from wsi_seg.stages.vectorize import PixelFrame


def test_nonzero_rule_rasterises_overlapping_parts_as_their_union() -> None:
    rng = np.random.default_rng(3)
    parts = []
    for _ in range(60):
        x, y = rng.uniform(0, 90, 2)
        w, h = rng.uniform(2, 25, 2)
        box = shapely.box(x, y, x + w, y + h)
        if rng.random() < 0.3:  # some with holes, some rotated: rings both ways
            box = box.difference(shapely.box(x + w / 4, y + h / 4, x + w / 2, y + h / 2))
        parts.append(shapely.affinity.rotate(box, float(rng.uniform(0, 90))))
    union = shapely.union_all(parts)
    got = rasterize_window(GeometryCollection(parts), 0, 0, 128, 128)
    want = rasterize_window(union, 0, 0, 128, 128)
    assert want.sum() > 1000 and np.array_equal(got, want)
    # A valid geometry: the nonzero rule is the even-odd rule (a hole is out).
    ring = Polygon([(0, 0), (10, 0), (10, 10), (0, 10)], [[(3, 3), (3, 7), (7, 7), (7, 3)]])
    assert rasterize_window(ring, 0, 0, 12, 12).sum() == 100 - 16


def _squares(path: Path, n_side: int) -> Path:
    feats = [{"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
              "geometry": {"type": "Polygon", "coordinates": [[
                  [c * 10 + 3, r * 10 + 3], [c * 10 + 7, r * 10 + 3],
                  [c * 10 + 7, r * 10 + 7], [c * 10 + 3, r * 10 + 7], [c * 10 + 3, r * 10 + 3]]]}}
             for r in range(n_side) for c in range(n_side)]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_many_polygons_are_a_coverage_streamed_and_scored_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    n_side = 110  # 12,100 squares of 4 x 4 px: more than UNION_MAX_PARTS
    assert n_side**2 > UNION_MAX_PARTS
    path = _squares(tmp_path / "cells.geojson", n_side)
    # Streamed: the whole-document parse is never called.
    monkeypatch.setattr(truth_geojson, "STREAM_MIN_BYTES", 0)

    def whole(_: Path) -> None:
        raise AssertionError("parsed whole")

    monkeypatch.setattr(truth_geojson, "_read_json_doc", whole)
    truth = check_truth_fits(read_truth(path), (1200, 1200))
    assert isinstance(read_truth(path).geometry, GeometryCollection)
    assert len(truth.polygons) == n_side**2
    frame = PixelFrame(1200, 1200, 0.0, 0.0, 1.0, 0.5)
    # Half the squares predicted, shifted by 2 px: 8 of each square's 16 px.
    pred = shapely.union_all([shapely.box(c * 10 + 5, r * 10 + 3, c * 10 + 9, r * 10 + 7)
                              for r in range(0, n_side, 2) for c in range(n_side)])
    score = score_geometries(pred, truth.geometry, frame)
    predicted = len(range(0, n_side, 2)) * n_side
    assert (score.tp, score.fn, score.fp) == (8 * predicted, 16 * n_side**2 - 8 * predicted,
                                              8 * predicted)


def test_a_broken_large_file_is_one_line(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_seg.core.errors import AnnotationError

    path = _squares(tmp_path / "cells.geojson", 20)
    path.write_bytes(path.read_bytes()[:-300])  # truncated inside the features
    monkeypatch.setattr(truth_geojson, "STREAM_MIN_BYTES", 0)
    with pytest.raises(AnnotationError, match="malformed JSON") as exc:
        read_truth(path)
    assert str(exc.value).startswith(f"{path}: ") and "\n" not in str(exc.value)
