"""Learning curves: a PNG of the losses and scores per epoch, drawn with OpenCV so training
needs no plotting library. (The per-epoch numbers themselves go to ``train_metrics.csv``
through Keras' ``CSVLogger``; see :mod:`wsi_seg.training.fit_loop`.)"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wsi_seg.core.files import write_atomic
from wsi_seg.core.scores import defined_score

#: Panels of the figure: title and the history columns drawn in it.
PANELS = (
    ("loss", ("loss", "val_loss")),
    ("scores", ("dice", "val_dice", "iou", "val_iou", "accuracy", "val_accuracy")),
)
_COLOURS_BGR = [(180, 119, 31), (14, 127, 255), (44, 160, 44), (40, 39, 214), (189, 103, 148)]
_PANEL_W, _PANEL_H, _MARGIN = 560, 380, 50  # px
_LEGEND_H = 30  # px: one row of legend entries under each panel, clear of the curves
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_BLACK = (0, 0, 0)


@dataclass(frozen=True)
class _Axes:
    """Maps (epoch, value) to canvas pixels inside one panel."""

    left: int  # the panel's left edge on the canvas, px
    lo: float
    hi: float
    e0: float
    e1: float

    def point(self, epoch: float, value: float) -> tuple[int, int]:
        m = _MARGIN
        x = self.left + m + (epoch - self.e0) / (self.e1 - self.e0) * (_PANEL_W - 2 * m)
        y = _PANEL_H - m - (value - self.lo) / (self.hi - self.lo) * (_PANEL_H - 2 * m)
        return round(x), round(y)


def draw_learning_curves(history: Sequence[dict[str, float | None]], path: Path) -> None:
    """Write ``path`` (PNG): two panels (losses; Dice/IoU/accuracy) over the epochs of
    ``history`` (rows with ``epoch`` and the logged values), training solid, validation
    dashed. An epoch whose value is undefined (None: empty vs empty) or missing has no point
    on that curve."""
    canvas = np.full((_PANEL_H + _LEGEND_H, len(PANELS) * _PANEL_W, 3), 255, np.uint8)
    epochs = [float(r["epoch"] or 0) for r in history]
    for p, (title, keys) in enumerate(PANELS):
        series = {k: [_plotted(r.get(k)) for r in history] for k in keys}
        series = {k: v for k, v in series.items() if any(math.isfinite(x) for x in v)}
        axes = _axes(p * _PANEL_W, epochs, series, scores=title == "scores")
        _draw_frame(canvas, axes, title)
        for i, (key, values) in enumerate(series.items()):
            _draw_series(canvas, axes, i, key, epochs, values)
    ok, png = cv2.imencode(".png", canvas)
    if ok:
        write_atomic(path, png.tobytes())


def _plotted(value: float | None) -> float:
    """A logged value as drawn: NaN (no point) when undefined or missing."""
    v = defined_score(value)
    return math.nan if v is None else v


def _axes(left: int, epochs: list[float], series: dict[str, list[float]], scores: bool) -> _Axes:
    """The panel's value and epoch ranges; scores always span at least 0..1."""
    vals = [x for v in series.values() for x in v if math.isfinite(x)]
    lo, hi = (min(vals), max(vals)) if vals else (0.0, 1.0)
    if scores:
        lo, hi = min(lo, 0.0), max(hi, 1.0)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    e0, e1 = (min(epochs), max(epochs)) if epochs else (1.0, 2.0)
    if e1 == e0:
        e1 = e0 + 1
    return _Axes(left, lo, hi, e0, e1)


def _draw_frame(canvas: np.ndarray, axes: _Axes, title: str) -> None:
    """Box, title, value range and epoch range of one panel."""
    ox, w, h, m = axes.left, _PANEL_W, _PANEL_H, _MARGIN
    cv2.rectangle(canvas, (ox + m, m), (ox + w - m, h - m), _BLACK, 1)
    cv2.putText(canvas, title, (ox + m, m - 18), _FONT, 0.6, _BLACK, 1)
    for val, y in ((axes.lo, h - m), (axes.hi, m)):
        cv2.putText(canvas, f"{val:.3g}", (ox + 4, y + 4), _FONT, 0.4, _BLACK, 1)
    cv2.putText(canvas, f"epoch {axes.e0:g}..{axes.e1:g}", (ox + w // 2 - 40, h - m + 18),
                _FONT, 0.45, _BLACK, 1)


def _draw_series(canvas: np.ndarray, axes: _Axes, i: int, key: str, epochs: list[float],
                 values: list[float]) -> None:
    """The ``i``-th curve of a panel and its legend entry; a training value and its ``val_``
    twin share a colour."""
    colour = _COLOURS_BGR[(i // 2) % len(_COLOURS_BGR)]
    pts = [axes.point(e, x) for e, x in zip(epochs, values, strict=True) if math.isfinite(x)]
    dashed = key.startswith("val_")
    for a, b in itertools.pairwise(pts):
        _line(canvas, a, b, colour, dashed)
    for q in pts:
        cv2.circle(canvas, q, 3, colour, -1, cv2.LINE_AA)
    lx, ly = axes.left + 8 + 92 * i, _PANEL_H + 12
    _line(canvas, (lx, ly - 4), (lx + 18, ly - 4), colour, dashed, dash=4, antialias=False)
    cv2.putText(canvas, key, (lx + 22, ly), _FONT, 0.38, colour, 1)


def _line(img: np.ndarray, a: tuple[int, int], b: tuple[int, int], colour: tuple[int, int, int],
          dashed: bool, dash: int = 6, antialias: bool = True) -> None:
    """A 2 px line from ``a`` to ``b``, solid or in dashes of about ``dash`` px."""
    if not dashed:
        cv2.line(img, a, b, colour, 2, cv2.LINE_AA if antialias else cv2.LINE_8)
        return
    n = max(1, int(math.hypot(b[0] - a[0], b[1] - a[1]) // dash))
    for i in range(0, n, 2):
        p = (a[0] + (b[0] - a[0]) * i // n, a[1] + (b[1] - a[1]) * i // n)
        q = (a[0] + (b[0] - a[0]) * (i + 1) // n, a[1] + (b[1] - a[1]) * (i + 1) // n)
        cv2.line(img, p, q, colour, 2, cv2.LINE_AA)
