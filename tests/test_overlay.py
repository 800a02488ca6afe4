"""overlay.png and summary.csv / summary.md."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import shapely

from wsi_seg.evaluation.overlay import (
    OVERLAP_RGB,
    PRED_RGB,
    SUMMARY_COLUMNS,
    TINT_ALPHA,
    TRUTH_RGB,
    SummaryRow,
    draw_overlay,
    render_overlay,
    summary_markdown,
    write_summary_csv,
    write_summary_md,
)
from wsi_seg.stages.vectorize import RegionPolygon

WHITE = np.full((200, 300, 3), 255, np.uint8)
SCALE = 10.0  # level-0 px per thumbnail px


def _tint(rgb: tuple[int, int, int]) -> np.ndarray:
    return (255 * (1 - TINT_ALPHA) + np.array(rgb) * TINT_ALPHA).astype(np.uint8)


def test_colours_prediction_truth_and_overlap() -> None:
    pred = shapely.box(1000, 500, 2000, 1500)  # thumbnail x 100..200, y 50..150
    truth = shapely.box(1500, 500, 2500, 1500)  # thumbnail x 150..250
    img = render_overlay(WHITE, SCALE, pred=[RegionPolygon(pred, 0.9, 1.0, 1.0, 1.0)],
                         truth=truth)
    assert img.shape == WHITE.shape and img.dtype == np.uint8
    assert np.array_equal(img[100, 120], _tint(PRED_RGB))  # prediction only: red
    assert np.array_equal(img[100, 230], _tint(TRUTH_RGB))  # truth only: blue
    assert np.array_equal(img[100, 175], _tint(OVERLAP_RGB))  # both: purple
    assert np.array_equal(img[190, 290], [255, 255, 255])  # elsewhere untouched
    r, g, b = (int(v) for v in img[100, 100])  # outline drawn (anti-aliased) on the edge
    assert r > 200 and g < 60 and b < 60


def test_origin_offset_moves_geometry() -> None:
    img = render_overlay(WHITE, SCALE, origin=(1000.0, 0.0), pred=shapely.box(1000, 500, 2000,
                                                                              1500))
    assert np.array_equal(img[100, 50], _tint(PRED_RGB))  # x 0..100 after the offset
    assert np.array_equal(img[100, 150], [255, 255, 255])


def test_legend_drawn_and_truth_entries_only_with_truth() -> None:
    without = render_overlay(WHITE, SCALE, tissue=shapely.box(0, 0, 2900, 1900))
    with_truth = render_overlay(WHITE, SCALE, truth=shapely.box(0, 0, 10, 10))
    corner = (slice(8, 60), slice(8, 120))
    assert (without[corner] != 255).any()  # legend ink
    assert (with_truth[corner] != without[corner]).any()  # two more legend lines


class _FakeSlide:
    origin_x0 = 0
    origin_y0 = 0

    def thumbnail(self, max_px: int = 1024) -> tuple[np.ndarray, float]:
        return WHITE.copy(), SCALE


def test_draw_overlay_writes_png_atomically(tmp_path: Path) -> None:
    out = draw_overlay(_FakeSlide(), [shapely.box(100, 100, 2800, 1800)],
                       shapely.box(1000, 500, 2000, 1500), None, tmp_path / "overlay.png")
    img = cv2.cvtColor(cv2.imread(str(out)), cv2.COLOR_BGR2RGB)
    assert img.shape == WHITE.shape
    assert np.array_equal(img[100, 120], _tint(PRED_RGB))
    assert [p.name for p in tmp_path.iterdir()] == ["overlay.png"]


def test_overlay_of_a_real_slide(shared_data: Path, tmp_path: Path) -> None:
    from wsi_seg.stages.slide import open_slide

    with open_slide(shared_data / "slides" / "CMU-1-Small-Region.svs") as slide:
        out = draw_overlay(slide, None, shapely.box(500, 500, 1500, 1500),
                           shapely.box(1000, 1000, 2000, 2000), tmp_path / "o.png", max_px=512)
    img = cv2.imread(str(out))
    assert max(img.shape[:2]) <= 512


ROWS = [
    SummaryRow("a.svs", 12.3456, 1.5, 0.81234, 0.9, 48.04, "ok"),
    SummaryRow("b.svs", None, None, None, None, None, "failed: b.svs: cannot|open\nslide"),
]


def test_summary_csv(tmp_path: Path) -> None:
    path = write_summary_csv(ROWS, tmp_path / "summary.csv")
    rows = list(csv.reader(path.open()))
    assert tuple(rows[0]) == SUMMARY_COLUMNS == ("slide", "tissue_mm2", "tumour_mm2", "iou",
                                                 "dice", "tiles_per_s", "status")
    assert rows[1] == ["a.svs", "12.346", "1.500", "0.8123", "0.9000", "48.0", "ok"]
    assert rows[2][:6] == ["b.svs", "", "", "", "", ""]
    assert "\n" not in rows[2][6]


def test_summary_md(tmp_path: Path) -> None:
    text = write_summary_md(ROWS, tmp_path / "summary.md", footer=["micro IoU 0.8"]).read_text()
    lines = text.splitlines()
    assert lines[2].startswith("| slide | tissue mm² | tumour mm² | IoU | Dice | tiles/s |")
    assert lines[4].startswith("| a.svs | 12.346 | 1.500 | 0.8123 | 0.9000 | 48.0 | ok |")
    assert lines[5].count(" | ") == 6  # the '|' inside the error is escaped
    assert lines[-1] == "micro IoU 0.8"
    assert summary_markdown([]).count("\n") >= 3


@pytest.mark.parametrize("value", [float("nan"), None])
def test_missing_values_are_blank(value: float | None, tmp_path: Path) -> None:
    path = write_summary_csv([SummaryRow("x", iou=value)], tmp_path / "s.csv")
    assert path.read_text().splitlines()[1].split(",")[3] == ""
