"""Pictures and tables: ``overlay.png`` per slide, ``summary.csv`` / ``summary.md`` per run.

The overlay is the slide's thumbnail with tissue outlined (green), prediction (red), truth (blue)
and their overlap (purple) tinted and outlined, and a legend in the top-left corner. Geometries
are level-0 px and are mapped with the thumbnail's own scale, so outlines sit where QuPath
would draw them.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, TypeAlias, overload

import cv2
import numpy as np
import shapely
from shapely.geometry import GeometryCollection, Polygon
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.files import write_output
from wsi_seg.core.geometry import PixelFrame
from wsi_seg.core.locations import OutputLocation, SlideURL
from wsi_seg.evaluation.metrics import rasterize_window
from wsi_seg.evaluation.truth import TruthRaster
from wsi_seg.stages.vectorize import RegionPolygon

# RGB colours
TISSUE_RGB = (0, 170, 0)
PRED_RGB = (230, 0, 0)
TRUTH_RGB = (0, 60, 255)
OVERLAP_RGB = (150, 0, 190)
TINT_ALPHA = 0.35  # how strongly areas are tinted; outlines are drawn solid


class ThumbnailSource(Protocol):
    """What the overlay needs from a slide (``wsi_seg.stages.slide.Slide`` has it)."""

    def thumbnail(self, max_px: int = 1024) -> tuple[np.ndarray, float]: ...


GeometryInput: TypeAlias = BaseGeometry | Iterable[BaseGeometry | RegionPolygon] | None


def _sample_raster(raster: TruthRaster, thumb: PixelFrame) -> np.ndarray:
    """The raster's pixels under each thumbnail pixel's centre (nearest; False off the
    raster), read chunk by chunk: a truth too large to hold as polygons drawn from the
    raster it was scored on."""
    f = raster.frame

    def index(n: int, origin: float, thumb_origin: float) -> np.ndarray:
        x0 = thumb_origin + (np.arange(n) + 0.5) * thumb.px_x0  # centres, level-0 px
        return np.floor((x0 - origin) / f.px_x0).astype(np.int64)

    rows = index(thumb.height_px, f.origin_y0, thumb.origin_y0)
    cols = index(thumb.width_px, f.origin_x0, thumb.origin_x0)
    r_in = (rows >= 0) & (rows < f.height_px)
    c_in = (cols >= 0) & (cols < f.width_px)
    out = np.zeros((thumb.height_px, thumb.width_px), dtype=bool)
    if r_in.any() and c_in.any():
        out[np.ix_(r_in, c_in)] = raster.sample(rows[r_in], cols[c_in])
    return out


def _outline_mask(img: np.ndarray, mask: np.ndarray, rgb: tuple[int, int, int],
                  width: int) -> None:
    """Outline a thumbnail-sized mask's areas (their boundary pixels' centres)."""
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    if contours:
        cv2.polylines(img, list(contours), isClosed=True, color=rgb, thickness=width,
                      lineType=cv2.LINE_AA)


def _polygons(geoms: GeometryInput) -> list[Polygon]:
    """Polygon parts of a geometry, or of a list of geometries / RegionPolygons."""
    if geoms is None:
        return []
    items = [geoms] if isinstance(geoms, BaseGeometry) else list(geoms)
    out: list[Polygon] = []
    for item in items:
        geom = item.polygon if isinstance(item, RegionPolygon) else item
        out.extend(p for p in shapely.get_parts(geom) if isinstance(p, Polygon) and
                   not p.is_empty)
    return out


def _to_thumb(polys: list[Polygon], frame: PixelFrame) -> np.ndarray:
    """Level-0 px -> thumbnail pixel-edge coordinates (an array of Polygons, as given: no
    union, which costs seconds for outlines with 10^5 vertices and hundreds of holes)."""
    if not polys:
        return np.empty(0, dtype=object)
    return frame.from_level0(np.array(polys, dtype=object))


def _fill(polys: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Pixels whose centre lies in any of ``polys`` (thumbnail coordinates): one pass of the
    nonzero rule over all of them, which counts overlaps once (their union)."""
    if not len(polys):
        return np.zeros((rows, cols), dtype=bool)
    return rasterize_window(GeometryCollection(list(polys)), 0, 0, rows, cols)


def _outline(img: np.ndarray, polys: np.ndarray, rgb: tuple[int, int, int], width: int) -> None:
    rings = shapely.get_rings(polys)
    pts = [_distinct(np.round(np.asarray(r.coords)[:, :2] - 0.5).astype(np.int32))
           for r in rings]
    if pts:
        cv2.polylines(img, pts, isClosed=True, color=rgb, thickness=width, lineType=cv2.LINE_AA)


def _distinct(pts: np.ndarray) -> np.ndarray:
    """A polyline without repeats of the previous point (a level-0 staircase drawn on a
    thumbnail lands many vertices on one pixel; the line drawn is the same)."""
    keep = np.r_[True, (pts[1:] != pts[:-1]).any(axis=1)]
    return pts[keep]


def _legend(img: np.ndarray, entries: list[tuple[str, tuple[int, int, int]]]) -> None:
    scale = max(0.4, min(img.shape[:2]) / 900)
    line_h = int(22 * scale) + 4
    box_w = int(170 * scale)
    x, y = 8, 8
    h = line_h * len(entries) + 8
    panel = img[y : y + h, x : x + box_w]
    panel[:] = (panel * 0.3 + 255 * 0.7).astype(np.uint8)  # pale backdrop: readable on tissue
    for i, (label, rgb) in enumerate(entries):
        cy = y + 4 + i * line_h + line_h // 2
        cv2.rectangle(img, (x + 6, cy - line_h // 3), (x + 6 + line_h // 1, cy + line_h // 3),
                      rgb, thickness=-1)
        cv2.putText(img, label, (x + 12 + line_h, cy + int(6 * scale)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5 * scale, (0, 0, 0), 1, cv2.LINE_AA)


def render_overlay(thumb: np.ndarray, scale: float, *, origin: tuple[float, float] = (0.0, 0.0),
                   tissue: GeometryInput = None, pred: GeometryInput = None,
                   truth: GeometryInput | TruthRaster = None) -> np.ndarray:
    """Draw the overlay on an RGB thumbnail and return the new RGB image.

    Args:
        thumb: RGB uint8 thumbnail; pixel ``(row, col)`` covers level-0
            ``origin + (col, row) * scale``.
        scale: level-0 px per thumbnail px.
        origin: level-0 position of the thumbnail's top-left corner (slide bounds offset).
        tissue, pred, truth: level-0 geometries (a geometry, or a list of geometries or
            RegionPolygons); None to leave out. ``truth`` may also be a raster it was drawn
            on (:class:`~wsi_seg.evaluation.truth.TruthRaster`), sampled at the thumbnail's
            pixel centres and outlined from the result.
    """
    img = np.ascontiguousarray(thumb[..., :3], dtype=np.uint8).copy()
    rows, cols = img.shape[:2]
    # Only the mapping matters here, not µm: the frame's µm per level-0 px is a placeholder.
    frame = PixelFrame(rows, cols, origin[0], origin[1], scale, mpp0=1.0)
    pred_g = _to_thumb(_polygons(pred), frame)
    truth_raster = truth if isinstance(truth, TruthRaster) else None
    truth_g = _to_thumb(_polygons(None if isinstance(truth, TruthRaster) else truth), frame)
    tissue_g = _to_thumb(_polygons(tissue), frame)
    p = _fill(pred_g, rows, cols)
    t = _fill(truth_g, rows, cols) if truth_raster is None else _sample_raster(truth_raster,
                                                                               frame)
    for mask, rgb in ((p & ~t, PRED_RGB), (t & ~p, TRUTH_RGB), (p & t, OVERLAP_RGB)):
        if mask.any():
            img[mask] = (img[mask] * (1 - TINT_ALPHA) + np.array(rgb) * TINT_ALPHA).astype(np.uint8)
    width = max(1, round(min(rows, cols) / 500))
    _outline(img, tissue_g, TISSUE_RGB, width)
    if truth_raster is None:
        _outline(img, truth_g, TRUTH_RGB, width)
    else:
        _outline_mask(img, t, TRUTH_RGB, width)
    _outline(img, pred_g, PRED_RGB, width)
    entries = [("tissue", TISSUE_RGB)] if tissue is not None else []
    entries.append(("prediction", PRED_RGB))
    if truth is not None:
        entries += [("truth", TRUTH_RGB), ("overlap", OVERLAP_RGB)]
    _legend(img, entries)
    return img


@overload
def write_png(rgb: np.ndarray, path: str | Path) -> Path: ...
@overload
def write_png(rgb: np.ndarray, path: SlideURL) -> SlideURL: ...
def write_png(rgb: np.ndarray, path: str | Path | SlideURL) -> OutputLocation:
    """Write an RGB image as PNG atomically (temporary name, then rename; in a store, one
    object)."""
    loc = path if isinstance(path, SlideURL) else Path(path)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{loc}: PNG encoding failed")
    write_output(loc, buf.tobytes())
    return loc


@overload
def draw_overlay(slide: ThumbnailSource, tissue: GeometryInput, pred: GeometryInput,
                 truth: GeometryInput | TruthRaster, out_png: str | Path, *,
                 max_px: int = ...) -> Path: ...
@overload
def draw_overlay(slide: ThumbnailSource, tissue: GeometryInput, pred: GeometryInput,
                 truth: GeometryInput | TruthRaster, out_png: SlideURL, *,
                 max_px: int = ...) -> SlideURL: ...
def draw_overlay(slide: ThumbnailSource, tissue: GeometryInput, pred: GeometryInput,
                 truth: GeometryInput | TruthRaster, out_png: str | Path | SlideURL, *,
                 max_px: int = 1024) -> OutputLocation:
    """Write ``overlay.png``: the slide's thumbnail (longer side <= ``max_px``) with tissue,
    prediction (red), truth (blue, overlap purple) and a legend. Geometries in level-0 px."""
    thumb, scale = slide.thumbnail(max_px)
    origin = (float(getattr(slide, "origin_x0", 0.0)), float(getattr(slide, "origin_y0", 0.0)))
    img = render_overlay(thumb, scale, origin=origin, tissue=tissue, pred=pred, truth=truth)
    return write_png(img, out_png)


# -------------------------------------------------------------------------------- summaries

@dataclass(frozen=True)
class SummaryRow:
    """One slide's line in ``summary.csv``/``summary.md``.

    Attributes:
        slide: slide file name (or stem).
        tissue_mm2, tumour_mm2: areas in mm² (None when unknown).
        iou, dice: scores against truth (None without truth, or empty-vs-empty).
        tiles_per_s: inference throughput (None when not run).
        status: "ok", "skipped", or the one-line error.
    """

    slide: str
    tissue_mm2: float | None = None
    tumour_mm2: float | None = None
    iou: float | None = None
    dice: float | None = None
    tiles_per_s: float | None = None
    status: str = "ok"


SUMMARY_COLUMNS = tuple(f.name for f in fields(SummaryRow))
_DIGITS = {"tissue_mm2": 3, "tumour_mm2": 3, "iou": 4, "dice": 4, "tiles_per_s": 1,
           "area_mm2": 3}


def _cell(name: str, value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.{_DIGITS.get(name, 4)}f}"
    return " ".join(str(value).split())  # one line per cell, whatever the error text held


def write_summary_csv(rows: Sequence[SummaryRow], path: str | Path | SlideURL) -> OutputLocation:
    """``summary.csv``: a header and one row per slide (blank cells for unknown values)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([_cell(c, getattr(row, c)) for c in SUMMARY_COLUMNS])
    write_output(_location(path), buf.getvalue().encode("utf-8"))
    return _location(path)


@dataclass(frozen=True)
class ClassRow:
    """One class of one slide (a multi-class model's) in ``summary_classes.csv`` and the
    class table of ``summary.md``: area in mm², polygon count, scores (None: not drawn in
    the truth, or no truth)."""

    slide: str
    name: str
    area_mm2: float
    regions: int
    iou: float | None = None
    dice: float | None = None


CLASS_COLUMNS = tuple(f.name for f in fields(ClassRow))
#: The run's per-class table, beside ``summary.csv`` (written only for multi-class models).
CLASS_SUMMARY = "summary_classes.csv"


def write_class_summary_csv(rows: Sequence[ClassRow], path: str | Path | SlideURL
                            ) -> OutputLocation:
    """``summary_classes.csv``: one row per slide and class (long format, for analysis)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CLASS_COLUMNS)
    for row in rows:
        writer.writerow([_cell(c, getattr(row, c)) for c in CLASS_COLUMNS])
    write_output(_location(path), buf.getvalue().encode("utf-8"))
    return _location(path)


def _table(head: Sequence[str], align: str, rows: Sequence[Sequence[str]]) -> list[str]:
    """Markdown table lines; ``align`` one character per column, ``l`` or ``r``."""
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = ["| " + " | ".join(head) + " |", rule]
    for cells in rows:
        lines.append("| " + " | ".join(c.replace("|", "\\|") or "-" for c in cells) + " |")
    return lines


def summary_markdown(rows: Sequence[SummaryRow], footer: Sequence[str] = (),
                     classes: Sequence[ClassRow] = ()) -> str:
    """The ``summary.md`` text: a Markdown table plus free footer lines (e.g. run means),
    then, for a multi-class model, a table of each slide's classes."""
    head = ("slide", "tissue mm²", "tumour mm²", "IoU", "Dice", "tiles/s", "status")
    lines = _table(head, "lrrrrrl", [[_cell(c, getattr(row, c)) for c in SUMMARY_COLUMNS]
                                     for row in rows])
    extra: list[str] = []
    if classes:
        extra = ["", "## Classes", "", *_table(
            ("slide", "class", "area mm²", "regions", "IoU", "Dice"), "llrrrr",
            [[_cell(c, getattr(row, c)) for c in CLASS_COLUMNS] for row in classes])]
    return "\n".join(["# wsi-seg summary", "", *lines, "", *footer, *extra]).rstrip() + "\n"


def write_summary_md(rows: Sequence[SummaryRow], path: str | Path | SlideURL,
                     footer: Sequence[str] = (), classes: Sequence[ClassRow] = ()
                     ) -> OutputLocation:
    """Write ``summary.md`` (see :func:`summary_markdown`)."""
    write_output(_location(path), summary_markdown(rows, footer, classes).encode("utf-8"))
    return _location(path)


def _location(path: str | Path | SlideURL) -> OutputLocation:
    """A summary's path as given (a file, or an object of a store)."""
    return path if isinstance(path, SlideURL) else Path(path)
