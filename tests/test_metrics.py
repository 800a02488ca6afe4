"""IoU/Dice: equal to a direct numpy computation, chunked, empty cases, run means, patches."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from wsi_seg.core.scores import UNDEFINED_TEXT, ScoreMean, defined_score, format_score, mean_score
from wsi_seg.evaluation.metrics import (
    OverlapScore,
    iou_dice,
    patch_accuracy,
    rasterize_window,
    score_array,
    score_geometries,
    score_slide,
    summarize_scores,
)
from wsi_seg.stages.mosaic import MosaicGeometry, build_pyramid, create_mosaic, open_mosaic
from wsi_seg.stages.vectorize import PixelFrame, resolve_saddles, vectorize_mosaic


def _numpy_iou_dice(p: np.ndarray, t: np.ndarray) -> tuple[float, float]:
    inter, union = np.logical_and(p, t).sum(), np.logical_or(p, t).sum()
    return inter / union, 2 * inter / (p.sum() + t.sum())


def test_iou_dice_equal_numpy_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        p, t = rng.random((2, 37, 53)) < rng.uniform(0.05, 0.9, (2, 1, 1))
        score = iou_dice(p, t)
        iou, dice = _numpy_iou_dice(p, t)
        assert score.iou == pytest.approx(iou) and score.dice == pytest.approx(dice)
        assert score.dice == pytest.approx(2 * score.iou / (1 + score.iou))  # type: ignore[operator]


def test_empty_vs_empty_is_undefined_and_flagged() -> None:
    z = np.zeros((8, 8), bool)
    score = iou_dice(z, z)
    assert score.empty_both and score.iou is None and score.dice is None
    assert score.as_dict()["empty_both"] is True


def test_empty_vs_empty_is_null_in_json_never_nan() -> None:
    """The one convention: None in Python, null in (strict) JSON, n/a in text."""
    z = np.zeros((8, 8), bool)
    score = iou_dice(z, z)
    text = json.dumps(score.as_dict(), allow_nan=False)
    assert json.loads(text)["iou"] is None and json.loads(text)["dice"] is None
    assert format_score(score.iou) == format_score(score.dice) == UNDEFINED_TEXT == "n/a"
    run = summarize_scores([score])
    assert run.n_empty_both == 1 and run.macro_iou is None and run.micro_dice is None


def test_mean_skips_undefined_scores_and_counts_them() -> None:
    assert mean_score([0.5, None]) == ScoreMean(0.5, 1)
    # NaN (a Keras metric's 0 / 0, or a file written before the rule) is undefined too
    assert mean_score([0.5, math.nan, 0.25]) == ScoreMean(0.375, 1)
    assert mean_score([None, math.nan]) == ScoreMean(None, 2)
    assert mean_score([]) == ScoreMean(None, 0)
    assert mean_score([np.float32(0.5)]).mean == 0.5


def test_defined_score_and_its_text() -> None:
    assert defined_score(None) is None and defined_score(math.nan) is None
    assert defined_score(np.float64(0.25)) == 0.25 and type(defined_score(1)) is float
    assert defined_score(1.0) == 1.0  # an older card's 1.0 loads as written
    assert format_score(None) == format_score(math.nan) == "n/a"
    assert format_score(0.5) == "0.5000" and format_score(2 / 3, ".3f") == "0.667"


def test_run_means_match_mean_score() -> None:
    """summarize_scores' macro mean is mean_score over the slides' IoU (one rule, one place)."""
    scores = [OverlapScore(1, 1, 0), OverlapScore(0, 0, 0), OverlapScore(3, 0, 1)]
    run = summarize_scores(scores)
    assert (run.macro_iou, run.n_empty_both) == tuple(mean_score(s.iou for s in scores))
    assert run.macro_dice == mean_score(s.dice for s in scores).mean


def test_one_side_empty_scores_zero() -> None:
    z, o = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    o[2:4, 2:4] = True
    for score in (iou_dice(z, o), iou_dice(o, z)):
        assert not score.empty_both and score.iou == 0.0 and score.dice == 0.0
    assert iou_dice(o, o).iou == 1.0


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError):
        iou_dice(np.zeros((2, 2), bool), np.zeros((2, 3), bool))


def test_run_means_micro_macro_and_empty_count() -> None:
    scores = [OverlapScore(8, 2, 0), OverlapScore(1, 0, 9), OverlapScore(0, 0, 0)]
    run = summarize_scores(scores)
    assert run.n_slides == 3 and run.n_empty_both == 1
    assert run.micro_iou == pytest.approx(9 / 20)  # pooled counts
    assert run.micro_dice == pytest.approx(18 / (18 + 2 + 9))
    assert run.macro_iou == pytest.approx((0.8 + 0.1) / 2)  # empty-vs-empty left out
    assert run.macro_dice == pytest.approx((16 / 18 + 2 / 11) / 2)
    only_empty = summarize_scores([OverlapScore(0, 0, 0)])
    assert only_empty.micro_iou is None and only_empty.macro_iou is None


def test_rasterize_uses_pixel_centres_with_holes() -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for _ in range(10):
        shell = Polygon(rng.uniform(0, 64, (10, 2))).convex_hull
        poly = shell.difference(shell.centroid.buffer(rng.uniform(2, 8)))
        expected = shapely.contains_xy(poly, xx, yy)
        got = np.zeros((64, 64), bool)
        for row0 in range(0, 64, 23):  # odd window size: windows must join seamlessly
            for col0 in range(0, 64, 23):
                rows, cols = min(23, 64 - row0), min(23, 64 - col0)
                got[row0 : row0 + rows, col0 : col0 + cols] = rasterize_window(
                    poly, row0, col0, rows, cols)
        assert np.count_nonzero(got != expected) <= 2  # only exact ties on the boundary


GEOM = MosaicGeometry(height_px=300, width_px=400, mpp=1.0, origin_x0=50.0, origin_y0=0.0,
                      level0_px_per_px=2.0, chunk_px=64)


@pytest.fixture(scope="module")
def mosaic_and_array(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:300, 0:400]
    prob = np.clip(1 - np.hypot(xx - 180, yy - 140) / 120 + rng.normal(0, 0.1, xx.shape), 0, 1)
    arr = np.round(prob * 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("m") / "mask.zarr"
    create_mosaic(path, GEOM)
    mosaic = open_mosaic(path, mode="r+")
    mosaic.level(0)[:] = arr
    build_pyramid(mosaic)
    return open_mosaic(path), arr


def test_score_slide_equals_numpy_on_the_whole_array(
        mosaic_and_array: tuple[object, np.ndarray]) -> None:
    mosaic, arr = mosaic_and_array
    truth_x0 = Polygon([(150, 60), (700, 100), (600, 550), (120, 480)])  # level-0 px
    score = score_slide(mosaic, truth_x0, 0)  # type: ignore[arg-type]
    frame = mosaic.geom.frame(0)  # type: ignore[attr-defined]
    truth_mask = rasterize_window(frame.from_level0(truth_x0), 0, 0, 300, 400)
    iou, dice = _numpy_iou_dice(arr >= 128, truth_mask)
    assert score.iou == pytest.approx(iou) and score.dice == pytest.approx(dice)
    assert score.resolution_um == 1.0
    assert score_slide(mosaic, truth_x0, 1).resolution_um == 2.0  # type: ignore[arg-type]


def test_score_vectorized_prediction_is_exact(
        mosaic_and_array: tuple[object, np.ndarray]) -> None:
    mosaic, arr = mosaic_and_array
    regions = vectorize_mosaic(mosaic, 0)  # type: ignore[arg-type]
    pred = shapely.union_all([r.polygon for r in regions])
    frame = mosaic.geom.frame(0)  # type: ignore[attr-defined]
    # vectorize decides 2x2 saddles as one pass over the whole map would (chunks decide them
    # over a halo); apart from those pixels, nothing differs
    expected = resolve_saddles(arr >= 128, arr, 128)
    exact = score_array(expected.view(np.uint8), pred, frame)
    assert exact.fp == 0 and exact.fn == 0
    self_score = score_slide(mosaic, pred, 0)  # type: ignore[arg-type]
    assert self_score.iou > 0.9  # a very noisy map: ~3 % of pixels are saddle pixels
    both = score_geometries(pred, pred, frame)
    assert both.iou == 1.0 and both.tp == exact.tp


def test_empty_mosaic_and_empty_truth(tmp_path: Path) -> None:
    create_mosaic(tmp_path / "e.zarr", GEOM)
    mosaic = open_mosaic(tmp_path / "e.zarr")
    assert score_slide(mosaic, None).empty_both
    score = score_slide(mosaic, shapely.box(60, 10, 80, 30))
    assert score.iou == 0.0 and score.fn == 100 and score.fp == 0


def test_score_array_truth_outside_frame_not_counted() -> None:
    frame = PixelFrame(10, 10, 0, 0, 1.0, 1.0, chunk_px=4)
    arr = np.zeros((10, 10), np.uint8)
    arr[0:5, 0:5] = 1
    score = score_array(arr, shapely.box(0, 0, 5, 5).union(shapely.box(20, 20, 30, 30)), frame)
    assert score.iou == 1.0


def test_patch_accuracy() -> None:
    score = patch_accuracy(np.array([0.9, 0.2, 0.7, 0.1]), np.array([True, False, False, True]))
    assert (score.tp, score.fp, score.fn, score.tn) == (1, 1, 1, 1)
    assert score.accuracy == 0.5 and score.n == 4
    assert math.isnan(patch_accuracy(np.array([]), np.array([], bool)).accuracy)


# ------------------------------------------------ oracle on a synthetic slide, and the CLI


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A synthetic slide, its truth, and a mosaic that is that truth rasterised (the oracle)."""
    from wsi_seg.evaluation.annotations import read_truth
    from wsi_seg.tools.synth import write_synthetic_slide

    root = tmp_path_factory.mktemp("synth")
    result = write_synthetic_slide(root / "s.svs", size_px=(2048, 1536), seed=1, mpp=0.5)
    truth = read_truth(result.truth_path)
    # Seed 1: two tumours, three holes, about 150 µm across. At the slide's 0.5 µm/px the
    # staircase of boundary pixels costs under 1 % IoU; at 1 µm/px it would cost ~1.6 %.
    geom = MosaicGeometry(height_px=1536, width_px=2048, mpp=0.5, origin_x0=0.0, origin_y0=0.0,
                          level0_px_per_px=1.0, chunk_px=512)
    create_mosaic(root / "mask.zarr", geom)
    mosaic = open_mosaic(root / "mask.zarr", mode="r+")
    frame = mosaic.geom.frame(0)
    truth_px = frame.from_level0(truth.geometry)
    for row0, col0, rows, cols in mosaic.chunks(0):
        mask = rasterize_window(truth_px, row0, col0, rows, cols)
        mosaic.level(0)[row0 : row0 + rows, col0 : col0 + cols] = mask.astype(np.uint8) * 255
    build_pyramid(mosaic)
    return {"slide": result.slide_path, "truth_path": result.truth_path, "truth": truth,
            "synth_tumour": result.tumour, "mosaic": open_mosaic(root / "mask.zarr"),
            "root": root}


def test_synthetic_truth_reads_back(synthetic: dict[str, object]) -> None:
    truth, tumour = synthetic["truth"], synthetic["synth_tumour"]
    g = truth.geometry  # type: ignore[attr-defined]
    assert g.symmetric_difference(tumour).area < 1e-3 * tumour.area  # type: ignore[attr-defined]


def test_oracle_round_trip_on_synthetic_slide(synthetic: dict[str, object]) -> None:
    truth = synthetic["truth"].geometry  # type: ignore[attr-defined]
    mosaic = synthetic["mosaic"]
    assert score_slide(mosaic, truth, 0).iou == 1.0  # type: ignore[arg-type]
    regions = vectorize_mosaic(mosaic, 0)  # type: ignore[arg-type]
    pred = shapely.union_all([r.polygon for r in regions])
    iou = pred.intersection(truth).area / pred.union(truth).area
    assert iou >= 0.99, iou


def test_cli_score_mosaic_and_geojson(synthetic: dict[str, object],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli import main
    from wsi_seg.stages.geojson import write_geojson

    root = synthetic["root"]
    args = ["--slide", str(synthetic["slide"])]
    assert main(["score", str(root / "mask.zarr"), str(synthetic["truth_path"]), *args,  # type: ignore[operator]
                 "--level", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("IoU 1.0000  Dice 1.0000") and "level 0" in out
    regions = vectorize_mosaic(synthetic["mosaic"], 0)  # type: ignore[arg-type]
    pred = write_geojson(regions, root / "tumor.geojson")  # type: ignore[operator]
    assert main(["score", str(pred), str(synthetic["truth_path"]), *args, "--json",
                 "--out", str(root / "score.json")]) == 0  # type: ignore[operator]
    result = json.loads(capsys.readouterr().out)
    assert result["iou"] >= 0.99 and result["level"] == 0
    assert json.loads((root / "score.json").read_text()) == result  # type: ignore[operator]


def test_cli_score_empty_prediction_and_wrong_truth(
        synthetic: dict[str, object], shared_data: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from wsi_seg.cli import main
    from wsi_seg.stages.geojson import write_geojson

    slide = str(synthetic["slide"])
    empty = write_geojson([], tmp_path / "tumor.geojson")
    assert main(["score", str(empty), str(synthetic["truth_path"]), "--slide", slide]) == 0
    assert capsys.readouterr().out.startswith("IoU 0.0000  Dice 0.0000")
    other = shared_data / "annotations/asap/tumor_009.xml"  # a CAMELYON slide's truth
    assert main(["score", str(empty), str(other), "--slide", slide]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "another slide" in err and "tumor_009.xml" in err
