"""Blend overlapping window predictions into one seamless probability map.

Each window's prediction is weighed by an importance map that is smallest at the window's
border, where a CNN sees the least context, and the result is ``sum(pred * w) / sum(w)`` in
float32 (MONAI's convention, FORMATS.md). :func:`sliding_window_inference` is the in-memory
executable specification; the block path (:func:`blend_block`) runs the very same accumulation
over a block's halo, window by window in the same global order, so each pixel sums the same
terms in the same order and the mosaic equals the in-memory result bit for bit.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, MutableMapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from wsi_seg.core.stopwatch import lap
from wsi_seg.stages.slide import BACKGROUND_RGB as PAD_VALUE
from wsi_seg.stages.tiling import Block, step_for, window_starts

#: ``predict(tiles)`` maps ``(n, roi, roi, 3)`` uint8 RGB tiles to ``(n, roi, roi)`` float32
#: probabilities (a patch classifier broadcasts its score over the patch), or to
#: ``(n, roi, roi, M)`` for M maps (the tumour probability, then each class's).
PredictFn = Callable[[np.ndarray], np.ndarray]

BLEND_MODES = ("gaussian", "hann", "constant")


def blend_mode(kind: str, blend: str | None = None) -> str:
    """``blend`` (checked), or the default for a model kind: a UNet's windows weighed by a
    Gaussian (its border pixels see the least context), a patch classifier's score spread as
    a box over its patch (one score says nothing about where in the patch the tumour is)."""
    mode = blend or ("constant" if kind == "patch" else "gaussian")
    if mode not in BLEND_MODES:
        raise ValueError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")
    return mode


def importance_map(roi_px: int, mode: str = "gaussian", sigma_scale: float = 0.125
                   ) -> np.ndarray:
    """Window weights, float32 ``(roi, roi)``.

    * ``gaussian``: MONAI's map: separable ``exp(-x^2 / (2 sigma^2))`` over
      ``x = -(n-1)/2 .. (n-1)/2`` with ``sigma = sigma_scale * n``, not normalised (1 at the
      centre), floored at ``max(min, 1e-3)``.
    * ``hann``: separable Hann window sampled at pixel centres (no zero at the border),
      floored at 1e-3.
    * ``constant``: ones (box window; the patch classifier's footprint).
    """
    n = roi_px
    if mode == "constant":
        return np.ones((n, n), np.float32)
    if mode == "gaussian":
        x = np.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=np.float32)
        sigma = np.float32(sigma_scale * n)
        g = np.exp(x**2 / (-2 * sigma**2)).astype(np.float32)
    elif mode == "hann":
        i = np.arange(n, dtype=np.float64)
        g = (0.5 - 0.5 * np.cos(2 * np.pi * (i + 0.5) / n)).astype(np.float32)
    else:
        raise ValueError(f"unknown blend mode {mode!r}; use one of {', '.join(BLEND_MODES)}")
    w = np.outer(g, g).astype(np.float32)
    floor = max(float(w.min()), 1e-3)
    return np.maximum(w, np.float32(floor))


@dataclass(frozen=True)
class BlendSpec:
    """Everything that decides the blended values (and nothing that does not).

    Attributes:
        roi_px: window edge, working pixels.
        step_px: window step, working pixels.
        mode: ``gaussian``, ``hann`` or ``constant``.
        sigma_scale: Gaussian sigma as a fraction of ``roi_px``.
        batch_size: windows a block hands the predictor at a time (the predictor's own
            batch is fixed and independent of this; it does not change any value).
        n_maps: values per pixel the predictor returns: 1 (tumour probability) or 1 + C
            (then each class's); each is blended on its own, by the same rule.
    """

    roi_px: int
    step_px: int
    mode: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 8
    n_maps: int = 1

    def map_shape(self, h_px: int, w_px: int) -> tuple[int, ...]:
        """Shape of a blended ``h_px x w_px`` region: ``(h, w)``, or ``(h, w, n_maps)``."""
        return (h_px, w_px) if self.n_maps == 1 else (h_px, w_px, self.n_maps)

    def weights(self) -> np.ndarray:
        return importance_map(self.roi_px, self.mode, self.sigma_scale)


class Submitter(Protocol):
    """A predictor that takes tiles now and delivers probabilities later
    (:class:`wsi_seg.stages.infer.Predictor`): many blocks then share the device's batches."""

    def submit(self, tiles: np.ndarray) -> Future[np.ndarray]: ...


def _submitter(predict: PredictFn | Submitter) -> Callable[[np.ndarray], Future[np.ndarray]]:
    if hasattr(predict, "submit"):
        return predict.submit

    def now(tiles: np.ndarray) -> Future[np.ndarray]:
        fut: Future[np.ndarray] = Future()
        fut.set_result(predict(tiles))
        return fut

    return now


#: Chunks of windows one block keeps queued at the predictor: enough to keep the device fed
#: from few blocks, few enough that queued tiles and results stay small. A block also keeps at
#: least one device batch queued (:func:`_queue_depth`).
IN_FLIGHT_CHUNKS = 2


def _queue_depth(predict: PredictFn | Submitter, spec: BlendSpec) -> int:
    """Windows a block keeps queued at the predictor: :data:`IN_FLIGHT_CHUNKS` chunks, and
    no fewer than the device's batch, so that while one block reads or writes, the others
    still hold a full batch between them (a simulated device on two cores, 8-window chunks,
    32-window batches: busy 88-89 % of the blocks phase with two chunks, 92-96 % with one
    batch; on a GPU worker, 17 blocks x 128 queued windows hold ~1 GB of tiles and results)."""
    return max(IN_FLIGHT_CHUNKS * spec.batch_size, int(getattr(predict, "batch_size", 0)))


def accumulate(
    image: np.ndarray,
    origin_xw: int,
    origin_yw: int,
    starts_y: np.ndarray,
    starts_x: np.ndarray,
    keep: np.ndarray,
    predict: PredictFn | Submitter,
    spec: BlendSpec,
    times: MutableMapping[str, float] | None = None,
    ready: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict the kept windows and accumulate ``sum(pred * w)`` and ``sum(w)``.

    ``image`` covers working pixels ``[origin_xw, origin_xw + W) x [origin_yw, origin_yw + H)``
    and must contain every kept window. Windows are visited row-major over the given starts:
    that order is part of the contract (it fixes each pixel's float32 summation order). Windows
    go to the predictor in chunks of ``spec.batch_size``, up to :func:`_queue_depth` windows
    ahead of the one being blended, so a block cuts and blends while the device predicts. With
    ``ready``, ``image`` may still be filling: ``ready(rows_px)`` is called before windows are
    cut and must return once image rows ``[0, rows_px)`` are there (a read streamed in bands,
    so the first windows reach the device before the block is read).

    Returns ``(num, den)``, float32 arrays of the image's height and width (``num`` with a last
    axis of ``spec.n_maps`` when there are several maps: C maps cost C times a block).
    """
    h, w = image.shape[:2]
    roi = spec.roi_px
    weight = spec.weights()
    submit = _submitter(predict)
    num = np.zeros(spec.map_shape(h, w), np.float32)
    den = np.zeros((h, w), np.float32)
    coords = _kept_windows(origin_xw, origin_yw, starts_y, starts_x, keep)
    queued: deque[tuple[list[tuple[int, int]], Future[np.ndarray]]] = deque()
    depth = _queue_depth(predict, spec)
    n_queued = 0
    t = time.perf_counter()

    def blend_oldest(t: float) -> float:
        nonlocal n_queued
        chunk, fut = queued.popleft()
        n_queued -= len(chunk)
        probs = fut.result()
        t = lap(times, "predict", t)
        _blend_into(num, den, chunk, probs, weight, roi)
        return lap(times, "blend", t)

    for b0 in range(0, len(coords), spec.batch_size):
        chunk = coords[b0 : b0 + spec.batch_size]
        if ready is not None:
            ready(chunk[-1][0] + roi)  # row-major: the last window reaches lowest
            t = time.perf_counter()  # reading is timed by the reader, not as cutting
        queued.append((chunk, submit(_cut_windows(image, chunk, roi))))
        n_queued += len(chunk)
        t = lap(times, "cut", t)
        while n_queued - len(queued[0][0]) >= depth:  # the rest still fill the queue
            t = blend_oldest(t)
    while queued:
        t = blend_oldest(t)
    return num, den


def _kept_windows(origin_xw: int, origin_yw: int, starts_y: np.ndarray, starts_x: np.ndarray,
                  keep: np.ndarray) -> list[tuple[int, int]]:
    """Image-relative top-left corners ``(y, x)`` of the kept windows, row-major (the order
    that fixes every pixel's summation order)."""
    return [(int(y) - origin_yw, int(x) - origin_xw)
            for i, y in enumerate(starts_y) for j, x in enumerate(starts_x) if keep[i, j]]


def _cut_windows(image: np.ndarray, chunk: list[tuple[int, int]], roi: int) -> np.ndarray:
    """The ``roi`` px windows at ``chunk``'s corners, stacked into one batch."""
    batch = np.empty((len(chunk), roi, roi, image.shape[2]), image.dtype)
    for k, (y, x) in enumerate(chunk):
        batch[k] = image[y : y + roi, x : x + roi]
    return batch


def _blend_into(num: np.ndarray, den: np.ndarray, chunk: list[tuple[int, int]],
                probs: np.ndarray, weight: np.ndarray, roi: int) -> None:
    """Add each window's weighted prediction and its weight, in ``chunk``'s order (each map
    of a multi-map prediction by the same float32 operations as a single map)."""
    pw = weight if num.ndim == 2 else weight[..., None]
    # One product buffer for the chunk instead of a fresh window-sized temporary per window
    # (a 256 KiB allocation each, above malloc's reuse threshold): the same float32 multiply
    # then add, so the same bits.
    product = np.empty((roi, roi, *num.shape[2:]), np.float32)
    for k, (y, x) in enumerate(chunk):
        np.multiply(probs[k], pw, out=product)
        num[y : y + roi, x : x + roi] += product
        den[y : y + roi, x : x + roi] += weight


def normalise(num: np.ndarray, den: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``num / den`` where any window covered the pixel, 0 elsewhere (float32); ``num`` may
    carry a last axis of maps. ``out``: where to write it (zeros of ``num``'s shape; a view
    into a block's array saves a block-sized copy)."""
    if num.ndim == den.ndim + 1:
        den = den[..., None]
    if out is None:
        out = np.zeros_like(num)
    np.divide(num, den, out=out, where=den > 0)
    return out


def to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probability 0..1 to 0..255, rounding half up (the mosaic's storage).

    ``floor(clip(p, 0, 1) * 255 + 0.5)`` in float32, computed in one temporary (the same
    operations in the same order as one expression, so the same bytes; a block of C maps
    would otherwise hold four float copies of itself).
    """
    p = np.asarray(prob)
    x = np.clip(p, 0.0, 1.0, out=np.empty_like(p))  # an array even for one value
    np.multiply(x, np.float32(255), out=x)
    np.add(x, np.float32(0.5), out=x)
    np.floor(x, out=x)
    return x.astype(np.uint8)[()]  # [()]: a scalar in, a scalar out


def sliding_window_inference(
    image: np.ndarray,
    predict: PredictFn,
    roi_px: int,
    overlap: float = 0.25,
    mode: str = "gaussian",
    sigma_scale: float = 0.125,
    batch_size: int = 8,
    step_px: int | None = None,
    keep: np.ndarray | None = None,
    n_maps: int = 1,
) -> np.ndarray:
    """Blend a model over a whole in-memory working-resolution image (the specification).

    Args:
        image: ``(H, W, 3)`` uint8 RGB at the model's resolution.
        predict: see :data:`PredictFn`.
        roi_px: window edge, pixels.
        overlap: fraction of a window shared with the next (MONAI's step rule).
        mode, sigma_scale: importance map (:func:`importance_map`).
        batch_size: windows per model call.
        step_px: explicit step in pixels (overrides ``overlap``).
        keep: optional bool ``(n_rows, n_cols)`` mask over the window grid; windows left out
            contribute nothing (pixels covered by none are 0).
        n_maps: values per pixel ``predict`` returns (its results then ``(n, roi, roi, n_maps)``).

    Returns:
        ``(H, W)`` float32 probabilities (``(H, W, n_maps)`` for several maps).
    """
    h, w = image.shape[:2]
    step = step_px or step_for(roi_px, overlap)
    sy, sx = window_starts(h, roi_px, step), window_starts(w, roi_px, step)
    if keep is None:
        keep = np.ones((len(sy), len(sx)), bool)
    # Only an axis shorter than the window is padded: with white, as the reader pads.
    pad_y0, pad_x0 = max(0, -int(sy[0])), max(0, -int(sx[0]))
    pad_y1 = max(0, int(sy[-1]) + roi_px - h)
    pad_x1 = max(0, int(sx[-1]) + roi_px - w)
    padded = np.pad(image, ((pad_y0, pad_y1), (pad_x0, pad_x1), (0, 0)),
                    constant_values=PAD_VALUE)
    spec = BlendSpec(roi_px, step, mode, sigma_scale, batch_size, n_maps)
    num, den = accumulate(padded, -pad_x0, -pad_y0, sy, sx, keep, predict, spec)
    return normalise(num, den)[pad_y0 : pad_y0 + h, pad_x0 : pad_x0 + w]


def kept_extent(starts_y: np.ndarray, starts_x: np.ndarray, keep: np.ndarray, roi_px: int
                ) -> tuple[int, int, int, int]:
    """Bounding box ``(xw, yw, w_px, h_px)`` of the kept windows (working pixels).

    Reading only this box instead of the whole halo gives the same blend (pixels are
    position-exact and only kept windows are predicted) for less I/O at tissue borders.
    """
    rows = np.flatnonzero(keep.any(axis=1))
    cols = np.flatnonzero(keep.any(axis=0))
    if not len(rows):
        raise ValueError("no kept window")
    top_yw, left_xw = int(starts_y[rows[0]]), int(starts_x[cols[0]])
    bottom_yw = int(starts_y[rows[-1]]) + roi_px
    right_xw = int(starts_x[cols[-1]]) + roi_px
    return left_xw, top_yw, right_xw - left_xw, bottom_yw - top_yw


def blend_block(
    image: np.ndarray,
    image_xw: int,
    image_yw: int,
    block: Block,
    starts_y: np.ndarray,
    starts_x: np.ndarray,
    keep: np.ndarray,
    predict: PredictFn,
    spec: BlendSpec,
    times: MutableMapping[str, float] | None = None,
    ready: Callable[[int], None] | None = None,
) -> np.ndarray:
    """The mosaic values (uint8, :func:`to_uint8` of the probabilities) of the region a block
    owns.

    ``image`` holds working pixels ``[image_xw, ...) x [image_yw, ...)`` and must contain
    every kept window (the block's halo, or just :func:`kept_extent`); ``starts_y``,
    ``starts_x`` and ``keep`` are the plan's window grid restricted to the block's window
    ranges (:meth:`BlockPlan.windows_of`). Owned pixels outside the image are covered by no
    kept window and are 0. ``ready``: see :func:`accumulate`. Returns uint8
    ``(block.h_px, block.w_px)`` (with a last axis of ``spec.n_maps`` for several maps).

    Normalised and converted in bands of :data:`BAND_ROWS` rows: the same operations on
    each pixel as on the whole block, without two block-sized float32 temporaries (the
    probabilities and their scaled copy) passing through memory.
    """
    num, den = accumulate(image, image_xw, image_yw, starts_y, starts_x, keep, predict, spec,
                          times, ready)
    t = time.perf_counter()
    out = np.zeros(spec.map_shape(block.h_px, block.w_px), np.uint8)
    # Intersection of the owned region with the image, in both frames.
    top_yw, left_xw = max(block.yw, image_yw), max(block.xw, image_xw)
    bottom_yw = min(block.yw + block.h_px, image_yw + image.shape[0])
    right_xw = min(block.xw + block.w_px, image_xw + image.shape[1])
    if bottom_yw > top_yw and right_xw > left_xw:
        iy, ix = top_yw - image_yw, left_xw - image_xw
        oy, ox = top_yw - block.yw, left_xw - block.xw
        w_px = right_xw - left_xw
        for r0 in range(0, bottom_yw - top_yw, BAND_ROWS):
            rows = min(BAND_ROWS, bottom_yw - top_yw - r0)
            den_band = den[iy + r0 : iy + r0 + rows, ix : ix + w_px]
            if not den_band.any():
                continue  # no kept window covers it (glass): it stays 0, as normalised
            band = normalise(num[iy + r0 : iy + r0 + rows, ix : ix + w_px], den_band)
            out[oy + r0 : oy + r0 + rows, ox : ox + w_px] = to_uint8(band)
    lap(times, "blend", t)
    return out


#: Rows normalised and converted at a time by :func:`blend_block` (a band of a 4096 px
#: block is 1 MiB of float32: it stays in cache between the steps).
BAND_ROWS = 64
