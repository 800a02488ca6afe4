"""Overlap scores (IoU, Dice) per slide and over a run, and patch accuracy.

Conventions:

* IoU = TP / (TP + FP + FN), Dice = 2 TP / (2 TP + FP + FN), over pixels of a stated raster
  (``OverlapScore.resolution_um``: µm per scored pixel); Dice = 2 IoU / (1 + IoU).
* **Empty vs empty rule** (the one statement of it; ``run``, ``score``, ``evaluate``, training
  and model cards all follow it through this module): when prediction and truth are both
  empty (TP + FP + FN = 0), IoU and Dice are **undefined**:

  - ``None`` in Python and ``null`` in JSON (never NaN, which is not JSON), ``"n/a"`` in text
    (tables, CSV, console lines): :mod:`wsi_seg.core.scores` (``defined_score``,
    ``UNDEFINED_TEXT``, ``format_score``);
  - ``empty_both`` is True, and a mean leaves the value out and counts it
    (:func:`mean_score`; ``RunScore.n_empty_both``, ``empty_both`` in summaries).

  One side empty and the other not scores 0. A tensor cannot hold None: a Keras metric
  (:mod:`wsi_seg.training.epoch_scores`) gives 0 / 0 = NaN, and NaN read from a file written
  before this rule (a card, ``state.json``) is undefined too; :func:`defined_score` turns both
  into None where they leave Keras or a file. An older card's 1.0 for an empty-vs-empty score
  (what training wrote before) cannot be told from a perfect score and loads as written.
* Micro means pool TP/FP/FN over slides (exact, since counts are kept); macro means average the
  per-slide scores of slides that are not empty-vs-empty.

Rasterising: a pixel is inside a polygon when its **centre** is (half-open on ties, even-odd
over all rings), computed by a numpy scanline per chunk, so a polygon that runs along pixel
edges (as :mod:`wsi_seg.stages.vectorize` writes) rasterises back to exactly its pixels, and nothing
slide-sized is ever allocated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeAlias

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.core.scores import mean_score  # the rule's values: light enough for any client
from wsi_seg.stages.mosaic import Mosaic
from wsi_seg.stages.vectorize import ArrayLike2D, threshold_u8


@dataclass(frozen=True)
class OverlapScore:
    """Pixel counts and scores of one prediction against one truth.

    Attributes:
        tp, fp, fn: true positive, false positive and false negative pixel counts.
        resolution_um: µm per scored pixel (None for bare arrays of unknown resolution).
    """

    tp: int
    fp: int
    fn: int
    resolution_um: float | None = None

    @property
    def empty_both(self) -> bool:
        """Prediction and truth both empty (IoU and Dice undefined)."""
        return self.tp + self.fp + self.fn == 0

    @property
    def iou(self) -> float | None:
        """TP / (TP + FP + FN); None when both are empty."""
        union = self.tp + self.fp + self.fn
        return None if union == 0 else self.tp / union

    @property
    def dice(self) -> float | None:
        """2 TP / (2 TP + FP + FN); None when both are empty."""
        denom = 2 * self.tp + self.fp + self.fn
        return None if denom == 0 else 2 * self.tp / denom

    @property
    def pred_px(self) -> int:
        return self.tp + self.fp

    @property
    def truth_px(self) -> int:
        return self.tp + self.fn

    def as_dict(self) -> dict[str, Any]:
        """Counts, scores and the empty flag, for JSON reports."""
        return {**asdict(self), "iou": self.iou, "dice": self.dice, "empty_both": self.empty_both}


@dataclass(frozen=True)
class RunScore:
    """Scores over many slides.

    Attributes:
        n_slides: slides scored; n_empty_both: of which empty-vs-empty (no IoU/Dice).
        micro_iou, micro_dice: from pooled TP/FP/FN (None if every slide is empty-vs-empty).
        macro_iou, macro_dice: mean of per-slide scores over slides not empty-vs-empty.
        tp, fp, fn: pooled pixel counts.
    """

    n_slides: int
    n_empty_both: int
    micro_iou: float | None
    micro_dice: float | None
    macro_iou: float | None
    macro_dice: float | None
    tp: int
    fp: int
    fn: int


def summarize_scores(scores: Iterable[OverlapScore]) -> RunScore:
    """Micro and macro IoU/Dice over a run (empty-vs-empty rule in the module doc)."""
    items = list(scores)
    pooled = OverlapScore(sum(s.tp for s in items), sum(s.fp for s in items),
                          sum(s.fn for s in items))
    iou = mean_score(s.iou for s in items)  # None exactly for the empty-vs-empty slides
    return RunScore(
        n_slides=len(items),
        n_empty_both=iou.n_undefined,
        micro_iou=pooled.iou,
        micro_dice=pooled.dice,
        macro_iou=iou.mean,
        macro_dice=mean_score(s.dice for s in items).mean,
        tp=pooled.tp, fp=pooled.fp, fn=pooled.fn,
    )


def iou_dice(pred: np.ndarray, truth: np.ndarray) -> OverlapScore:
    """Score two boolean masks of the same shape (small arrays, tests, patches)."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"shapes differ: prediction {pred.shape}, truth {truth.shape}")
    tp = int(np.count_nonzero(pred & truth))
    return OverlapScore(tp, int(np.count_nonzero(pred)) - tp, int(np.count_nonzero(truth)) - tp)


# ----------------------------------------------------------------------------- rasterising

def rasterize_window(geom_px: BaseGeometry, row0: int, col0: int, rows: int,
                     cols: int) -> np.ndarray:
    """Boolean mask of a window of a raster: pixel centre inside ``geom_px``.

    Inside is the nonzero winding rule over rings oriented one way for shells and the other
    for holes, so a geometry whose parts overlap (a truth kept as a coverage of its drawn
    polygons, :class:`~wsi_seg.evaluation.truth.Truth`) rasterises as their union without
    computing it; on a valid geometry (parts disjoint) it is the even-odd rule, pixel for
    pixel.

    Args:
        geom_px: (Multi)Polygon or collection of polygons in the raster's pixel-edge
            coordinates (x = col, y = row; pixel ``(row, col)`` spans ``[col, col+1) x
            [row, row+1)``).
        row0, col0, rows, cols: the window, in raster pixels.
    """
    out = np.zeros((rows, cols), dtype=bool)
    if geom_px is None or geom_px.is_empty:
        return out
    local = shapely.clip_by_rect(geom_px, col0 - 1, row0 - 1, col0 + cols + 1, row0 + rows + 1)
    if local.is_empty:
        return out
    rings = shapely.get_rings(shapely.get_parts(shapely.orient_polygons(local)))
    coords, ring_idx = shapely.get_coordinates(rings, return_index=True)
    same = ring_idx[1:] == ring_idx[:-1]  # consecutive vertices of one ring form a segment
    x1, y1 = coords[:-1][same, 0] - col0, coords[:-1][same, 1] - row0
    x2, y2 = coords[1:][same, 0] - col0, coords[1:][same, 1] - row0
    ylo, yhi = np.minimum(y1, y2), np.maximum(y1, y2)
    # Rows whose centre r + 0.5 lies in [ylo, yhi): half-open, so vertices count once.
    r_start = np.clip(np.ceil(ylo - 0.5), 0, rows).astype(np.int64)
    r_end = np.clip(np.ceil(yhi - 0.5), 0, rows).astype(np.int64)
    n = np.maximum(r_end - r_start, 0)
    if n.sum() == 0:
        return out
    seg = np.repeat(np.arange(n.size), n)
    first = np.repeat(np.cumsum(n) - n, n)
    r = r_start[seg] + (np.arange(seg.size) - first)
    yc = r + 0.5
    x = x1[seg] + (yc - y1[seg]) * (x2[seg] - x1[seg]) / (y2[seg] - y1[seg])
    up = np.where(y2[seg] > y1[seg], 1, -1).astype(np.int32)  # the crossing's direction
    order = np.lexsort((x, r))
    r, x, up = r[order], x[order], up[order]
    # Nonzero winding: after each crossing, the winding number of what lies to its right is
    # the running sum of directions (closed rings sum to zero in every row, so the sum over
    # all earlier rows is zero too); the span to the next crossing of the row is inside
    # when it is not zero.
    winding = np.cumsum(up)
    inside = (winding[:-1] != 0) & (r[1:] == r[:-1])
    ra, xa, xb = r[:-1][inside], x[:-1][inside], x[1:][inside]
    if not ra.size:
        return out
    c_start = np.clip(np.ceil(xa - 0.5), 0, cols).astype(np.int64)
    c_end = np.clip(np.ceil(xb - 0.5), 0, cols).astype(np.int64)
    # Only the rows the spans lie in are summed (a batch of small shapes reaches a few rows
    # of a chunk); span starts +1 and ends -1 by counting (bincount: np.add.at is ~10x slower).
    r_lo = int(ra.min())
    n_rows, width = int(ra.max()) + 1 - r_lo, cols + 1
    at = (ra - r_lo) * width
    diff = (np.bincount(at + c_start, minlength=n_rows * width)
            - np.bincount(at + c_end, minlength=n_rows * width)).reshape(n_rows, width)
    out[r_lo : r_lo + n_rows] = np.cumsum(diff[:, :cols], axis=1) > 0
    return out


class RasterTruth(Protocol):
    """Truth already drawn on a scoring raster
    (:class:`~wsi_seg.evaluation.truth.TruthRaster`)."""

    @property
    def frame(self) -> PixelFrame: ...

    def window(self, row0: int, col0: int, rows: int, cols: int) -> np.ndarray: ...


#: Truth to score against: level-0 px polygons, a raster drawn on the scoring frame, or None
#: (no tumour).
TruthInput: TypeAlias = BaseGeometry | RasterTruth | None

Window: TypeAlias = Callable[[int, int, int, int], np.ndarray]


def _windows(geom_x0: BaseGeometry | RasterTruth | None, frame: PixelFrame) -> Window:
    """The chunk reader of a truth or prediction on ``frame``: its bool pixels of a window
    ``(row0, col0, rows, cols)``, drawn from polygons (level-0 px) or read from a raster
    drawn on this very frame."""
    if geom_x0 is not None and not isinstance(geom_x0, BaseGeometry):
        if geom_x0.frame != frame:
            raise ValueError(f"truth raster lies on {geom_x0.frame}, not on the scored {frame}")
        return geom_x0.window
    if geom_x0 is None or geom_x0.is_empty:
        return lambda row0, col0, rows, cols: np.zeros((rows, cols), dtype=bool)
    geom_px = frame.from_level0(geom_x0)
    return lambda row0, col0, rows, cols: rasterize_window(geom_px, row0, col0, rows, cols)


def _score_windows(pred: Window, truth: Window, frame: PixelFrame) -> OverlapScore:
    """Counts of ``pred`` against ``truth`` over ``frame``'s chunks, at its resolution."""
    tp = fp = fn = 0
    for row0, col0, rows, cols in frame.chunks():
        p, t = pred(row0, col0, rows, cols), truth(row0, col0, rows, cols)
        n_tp = int(np.count_nonzero(p & t))
        tp += n_tp
        fp += int(np.count_nonzero(p)) - n_tp
        fn += int(np.count_nonzero(t)) - n_tp
    return OverlapScore(tp, fp, fn, frame.px_x0 * frame.mpp0)


def score_array(pred: ArrayLike2D, truth: TruthInput, frame: PixelFrame, *,
                fg_min: int = 1) -> OverlapScore:
    """Score a raster prediction (``pred >= fg_min``) against truth, chunk by chunk.

    Args:
        pred: 2-D array-like (numpy or zarr) laid on the slide by ``frame``.
        truth: truth (Multi)Polygon in level-0 px (None or empty: no tumour; truth outside
            the frame is not counted), or a raster drawn on ``frame``
            (:func:`~wsi_seg.evaluation.truth.rasterize_truth`, the same pixels).
        frame: the raster's placement; the score's resolution is ``frame.px_x0 * frame.mpp0``.
    """
    def pred_window(row0: int, col0: int, rows: int, cols: int) -> np.ndarray:
        return np.asarray(pred[row0 : row0 + rows, col0 : col0 + cols]) >= fg_min

    return _score_windows(pred_window, _windows(truth, frame), frame)


def score_geometries(pred_x0: BaseGeometry | None, truth: TruthInput,
                     frame: PixelFrame) -> OverlapScore:
    """Score prediction polygons (level-0 px) against truth (as :func:`score_array` takes
    it), rasterised chunk by chunk on ``frame`` (e.g. ``PixelFrame`` of a slide at
    downsample 2^L)."""
    return _score_windows(_windows(pred_x0, frame), _windows(truth, frame), frame)


def score_slide(mosaic: Mosaic, truth: TruthInput, level: int = 0, *,
                threshold: float = 0.5) -> OverlapScore:
    """IoU/Dice of a probability mosaic (``p >= threshold``) against truth, at pyramid ``level``.

    The score's resolution is that level's (``resolution_um`` = mosaic mpp * 2^level). Memory:
    one chunk of the level plus its rasterised truth (``truth`` as :func:`score_array` takes
    it: a raster must lie on ``mosaic.geom.frame(level)``).
    """
    if not 0 <= level < mosaic.n_levels:
        raise ValueError(f"level {level} not in mosaic (levels 0..{mosaic.n_levels - 1})")
    return score_array(mosaic.level(level), truth, mosaic.geom.frame(level),
                       fg_min=threshold_u8(threshold))


# --------------------------------------------------------------------------- patch accuracy

@dataclass(frozen=True)
class PatchScore:
    """Patch classifier counts: accuracy = (tp + tn) / n."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.fn + self.tn

    @property
    def accuracy(self) -> float:
        """Fraction of patches classified right (NaN with no patches)."""
        return (self.tp + self.tn) / self.n if self.n else math.nan


def patch_accuracy(pred: np.ndarray, truth: np.ndarray, threshold: float = 0.5) -> PatchScore:
    """Accuracy of per-patch predictions (probabilities or booleans) against boolean labels."""
    p = np.asarray(pred)
    p = p >= threshold if p.dtype != bool else p
    t = np.asarray(truth, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"shapes differ: prediction {p.shape}, truth {t.shape}")
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return PatchScore(tp, fp, fn, int(p.size) - tp - fp - fn)
