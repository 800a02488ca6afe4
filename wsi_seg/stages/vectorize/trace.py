"""Tracing one chunk, part 1: from pixels to labelled pixel-edge rings.

The chunk is thresholded (``value >= threshold_u8(threshold)``), each ambiguous 2x2 saddle
(two pixels touching only at a corner) is decided by the mean of its four values, as marching
squares does (:func:`resolve_saddles`: one pixel changes per saddle), and the 8-connected
components are labelled (OpenCV): each component's pixel count, probability sum and maximum
come from one ``bincount`` (:func:`_component_stats`). Holes whose bounding box is too small
to ever reach ``min_area_um2`` are filled before tracing (:func:`_fill_small_holes`: a noisy
map has tens of thousands of pinholes).

All rings are traced with ``cv2.findContours(RETR_LIST)`` on the mask **upsampled 2x** (and
padded by one zero pixel) (:func:`_trace`). In the 2x mask every boundary sub-pixel sits in the
corner of its original pixel that faces the outside, so ``point // 2`` is exactly a pixel
*corner*: the rings run along pixel edges, a polygon's area equals its pixel count, and
rasterising it again gives back the same pixels (checked in ``tests/test_vectorize.py``).
Shells and holes are told apart by their sense (signed area), and each ring finds its component
by the label of a pixel it runs along; ``RETR_CCOMP`` would do this bookkeeping in time
quadratic in the holes of one component. With the saddles resolved no ring pinches, so
polygons are valid by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import shapely

#: Pixels read around a chunk to decide the saddles near its border. A decision reaches one
#: pixel further per round of :func:`resolve_saddles`; four deciding rounds and the filling
#: rounds after them end within a few pixels on real and noise maps, so 16 px gives every
#: chunk the whole-raster decisions (a pathological staircase of saddles longer than the halo
#: could still be decided differently).
SADDLE_HALO_PX = 16


def resolve_saddles(fg: np.ndarray, values: np.ndarray, fg_min: int,
                    max_rounds: int = 4) -> np.ndarray:
    """Decide every 2x2 checkerboard (two pixels touching only at a corner) by the data.

    Such a saddle is ambiguous, and as pixel-edge polygons it would pinch (invalid). As in
    marching squares' asymptotic decider, the corner is connected when the mean of the four
    values is at least the threshold: then the higher-valued background pixel is filled;
    otherwise the lower-valued foreground pixel is cleared. Only saddle pixels change. A change
    can create a new saddle next door, so this repeats; after ``max_rounds`` rounds remaining
    saddles are filled (monotone, so it ends).

    Args:
        fg: 2-D foreground mask (``values >= fg_min``).
        values: the stored values (0..255, same shape) the mask was thresholded from.
        fg_min: the threshold as a stored value (:func:`.frame.threshold_u8`).
        max_rounds: deciding rounds before the remaining saddles are filled.

    Returns a new boolean mask without 2x2 checkerboards.
    """
    fg = fg.astype(bool, copy=True)
    v = values  # read only at saddles, cast there (a full-chunk cast costs more than it saves)
    rounds = 0
    while True:
        a, b, c, d = fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:]
        main = a & d & ~b & ~c  # foreground on the main diagonal
        anti = b & c & ~a & ~d  # foreground on the anti-diagonal
        if not (main.any() or anti.any()):
            return fg
        r, q = np.nonzero(main | anti)  # top-left corner of each saddle
        is_main = main[r, q]
        # (row, col) of the two foreground and the two background pixels of each saddle
        f1 = (r, np.where(is_main, q, q + 1))
        f2 = (r + 1, np.where(is_main, q + 1, q))
        b1 = (r, np.where(is_main, q + 1, q))
        b2 = (r + 1, np.where(is_main, q, q + 1))
        vf1, vf2, vb1, vb2 = (v[p].astype(np.int32) for p in (f1, f2, b1, b2))
        connect = (vf1 + vf2 + vb1 + vb2 >= 4 * fg_min) | (rounds >= max_rounds)
        fill = tuple(np.where(vb1 >= vb2, b1[k], b2[k])[connect] for k in (0, 1))
        clear = tuple(np.where(vf1 <= vf2, f1[k], f2[k])[~connect] for k in (0, 1))
        fg[fill] = True
        fg[clear] = False
        rounds += 1


def _component_stats(labels: np.ndarray, values: np.ndarray, fg: np.ndarray,
                     n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: pixel count, value sum and value max over foreground pixels."""
    lab = labels[fg]  # int32 from OpenCV
    val = values[fg]
    if n * 256 <= 1 << 22:  # one histogram per label: count, sum and max in a single pass
        key = lab * 256  # int32 suffices: n * 256 < 2**31 here
        key += val
        hist = np.bincount(key, minlength=n * 256).reshape(n, 256)
        counts = hist.sum(axis=1)
        sums = hist @ np.arange(256, dtype=np.int64)
        vmax = 255 - np.argmax(hist[:, ::-1] > 0, axis=1)
        return counts, sums, vmax
    lab64 = lab.astype(np.int64)
    counts = np.bincount(lab64, minlength=n)
    sums = np.bincount(lab64, weights=val, minlength=n).astype(np.int64)
    key = np.sort(lab64 * 256 + val)  # many labels (noise): sort instead of a huge histogram
    last = np.r_[np.nonzero(np.diff(key >> 8))[0], key.size - 1]
    vmax = np.zeros(n, dtype=np.int64)
    vmax[key[last] >> 8] = key[last] & 255
    return counts, sums, vmax


def _fill_small_holes(fg: np.ndarray, min_px: float) -> np.ndarray:
    """``fg`` with the holes whose bounding box is below ``min_px`` pixels filled.

    They would be filled anyway (a hole's ring encloses at most its box), islands and all,
    but a noisy map has 10^5 pinholes a chunk, cheaper to fill than to trace. Labels and
    statistics stay those of the unfilled mask: a filled pixel never lies on a remaining ring
    (without 2x2 checkerboards no background pixel touches another hole or the outside).
    """
    _, labels, cc, _ = cv2.connectedComponentsWithStats((~fg).view(np.uint8), connectivity=4)
    h, w = fg.shape
    left, top = cc[:, cv2.CC_STAT_LEFT], cc[:, cv2.CC_STAT_TOP]
    width, height = cc[:, cv2.CC_STAT_WIDTH], cc[:, cv2.CC_STAT_HEIGHT]
    inside = (left > 0) & (top > 0) & (left + width < w) & (top + height < h)
    small = inside & (width.astype(np.int64) * height < min_px)
    small[0] = False  # label 0: the foreground
    return fg | small[labels] if small.any() else fg


@dataclass(frozen=True)
class _Rings:
    """The rings of one traced mask as flat arrays: a noisy chunk has 10^5 of them, too many
    for a Python object (or a shapely call) each.

    Attributes:
        coords: ``(n_points, 2)`` int64 pixel corners ``(x, y)``, ring after ring, each open
            (first point not repeated), in OpenCV's order.
        starts: ``(n_rings + 1,)`` offset of each ring in ``coords``; the last is ``n_points``.
        pixel: ``(n_rings, 2)`` ``(row, col)`` of a foreground pixel the ring runs along: its
            component's label is the shell's, or for a hole the enclosing component's.
        area2: ``(n_rings,)`` twice the signed ring area in px²: negative for shells (outer
            borders), positive for holes (OpenCV traces the two kinds in opposite senses).
    """

    coords: np.ndarray
    starts: np.ndarray
    pixel: np.ndarray
    area2: np.ndarray

    @property
    def is_hole(self) -> np.ndarray:
        return self.area2 > 0

    def linearrings(self, rings: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The given rings (indices, in that order) as shapely LinearRings, shifted by
        ``offset`` ``(x, y)`` (pixels: from the traced crop to the level's coordinates)."""
        lengths = self.starts[rings + 1] - self.starts[rings]
        pos = np.repeat(np.arange(rings.size), lengths)  # per corner, its ring's position
        first = np.repeat(self.starts[rings] - np.cumsum(lengths) + lengths, lengths)
        points = self.coords[first + np.arange(pos.size)]
        return shapely.linearrings((points + offset).astype(np.float64), indices=pos)


def _trace(mask: np.ndarray) -> _Rings:
    """Exact pixel-edge rings (shells and holes) of a binary mask without 2x2 checkerboards.

    ``RETR_LIST`` and not ``RETR_CCOMP``: the latter links every hole to its parent in time
    quadratic in the holes of one component (a pinhole-riddled 1024 px chunk: 30 s against
    0.4 s); shells and holes are told apart by their sense instead, and a hole finds its
    component by the label of a pixel it runs along.
    """
    h, w = mask.shape
    up = cv2.resize(mask, (2 * w, 2 * h), interpolation=cv2.INTER_NEAREST)
    up = cv2.copyMakeBorder(up, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, _ = cv2.findContours(up, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        empty = np.empty((0, 2), dtype=np.int64)
        return _Rings(empty, np.zeros(1, dtype=np.int64), empty, np.empty(0, dtype=np.int64))
    sizes = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    starts = np.zeros(sizes.size + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    up_points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    # With the 1-px padding, sub-pixel p lies in original pixel (p - 1) // 2 and maps to the
    # original corner p // 2 (module docstring).
    first = up_points[starts[:-1]]
    pixel = np.c_[(first[:, 1] - 1) // 2, (first[:, 0] - 1) // 2]
    coords = up_points // 2
    nxt = np.arange(1, coords.shape[0] + 1)
    nxt[starts[1:] - 1] = starts[:-1]  # each ring closes on its own first corner
    cross = coords[:, 0] * coords[nxt, 1] - coords[nxt, 0] * coords[:, 1]
    return _Rings(coords, starts, pixel, np.add.reduceat(cross, starts[:-1]))
