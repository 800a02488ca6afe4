"""Tracing one chunk, part 1: from pixels to labelled pixel-edge rings.

The chunk is thresholded (``value >= threshold_u8(threshold)``), each ambiguous 2x2 saddle
(two pixels touching only at a corner) is decided by the mean of its four values, as marching
squares does (:func:`resolve_saddles`: one pixel changes per saddle), and the 8-connected
components are labelled (OpenCV): the pixel count, probability sum and maximum of each
component that may be kept come from one ``bincount`` (:func:`_component_stats`). Holes whose
bounding box is too small to ever reach ``min_area_um2`` are filled before tracing
(:func:`_fill_small_holes`: a noisy map has tens of thousands of pinholes).

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

#: Above one saddle in this many 2x2 windows, a round is decided with whole-array operations.
_DENSE_SADDLE_SHARE = 64


def resolve_saddles(fg: np.ndarray, values: np.ndarray, fg_min: int,
                    max_rounds: int = 4) -> np.ndarray:
    """Decide every 2x2 checkerboard (two pixels touching only at a corner) by the data.

    Such a saddle is ambiguous, and as pixel-edge polygons it would pinch (invalid). As in
    marching squares' asymptotic decider, the corner is connected when the mean of the four
    values is at least the threshold: then the higher-valued background pixel is filled;
    otherwise the lower-valued foreground pixel is cleared. Only saddle pixels change. A change
    can create a new saddle next door, so this repeats, each round deciding all the saddles
    of the mask as it was when the round began; after ``max_rounds`` rounds remaining saddles
    are filled (monotone, so it ends).

    Args:
        fg: 2-D foreground mask (``values >= fg_min``).
        values: the stored values (0..255, same shape) the mask was thresholded from.
        fg_min: the threshold as a stored value (:func:`.frame.threshold_u8`).
        max_rounds: deciding rounds before the remaining saddles are filled.

    Returns a new boolean mask without 2x2 checkerboards.
    """
    fg = fg.astype(bool, copy=True)
    if fg.shape[0] < 2 or fg.shape[1] < 2:
        return fg
    # A noise map has a saddle in a third of its 2x2 windows: such rounds are decided with
    # whole-array operations. Once few pixels change, a round looks only at the windows that
    # hold a pixel the round before touched (any other window is as it was: no saddle).
    touched: tuple[np.ndarray, np.ndarray] | None = None
    windows = (fg.shape[0] - 1) * (fg.shape[1] - 1)
    rounds = 0
    while True:
        fill_all = rounds >= max_rounds
        if touched is None or touched[0].size * _DENSE_SADDLE_SHARE >= windows:
            main, anti = _checkerboards(fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:])
            n = int(np.count_nonzero(main)) + int(np.count_nonzero(anti))
            if n * _DENSE_SADDLE_SHARE >= windows:
                _decide_dense(fg, values, fg_min, main, anti, fill_all)
                touched = None  # so many: the next round looks at every window again
                rounds += 1
                continue
            r, q = np.nonzero(main | anti)
        else:
            r, q = _saddles_near(fg, touched)
        if not r.size:
            return fg
        touched = _decide_sparse(fg, values, fg_min, r, q, fill_all)
        rounds += 1


def _decide_sparse(fg: np.ndarray, values: np.ndarray, fg_min: int, r: np.ndarray,
                   q: np.ndarray, fill_all: bool) -> tuple[np.ndarray, np.ndarray]:
    """Decide the saddles whose top-left pixels are ``(r, q)`` in ``fg`` (in place): fill
    the higher background pixel of each connected one, then clear the lower foreground pixel
    of each other one. Returns the ``(rows, cols)`` of the pixels decided on."""
    is_main = fg[r, q]
    # (row, col) of the two foreground and the two background pixels of each saddle
    f1 = (r, np.where(is_main, q, q + 1))
    f2 = (r + 1, np.where(is_main, q + 1, q))
    b1 = (r, np.where(is_main, q + 1, q))
    b2 = (r + 1, np.where(is_main, q, q + 1))
    vf1, vf2, vb1, vb2 = (values[p].astype(np.int32) for p in (f1, f2, b1, b2))
    connect = (vf1 + vf2 + vb1 + vb2 >= 4 * fg_min) | fill_all
    fill = tuple(np.where(vb1 >= vb2, b1[k], b2[k])[connect] for k in (0, 1))
    clear = tuple(np.where(vf1 <= vf2, f1[k], f2[k])[~connect] for k in (0, 1))
    fg[fill] = True
    fg[clear] = False
    return np.concatenate([fill[0], clear[0]]), np.concatenate([fill[1], clear[1]])


def _decide_dense(fg: np.ndarray, values: np.ndarray, fg_min: int, main: np.ndarray,
                  anti: np.ndarray, fill_all: bool) -> None:
    """:func:`_decide_sparse` of every saddle (``main``/``anti``: per 2x2 window, whether it
    is one, by its diagonal) with whole-array operations; the same pixels change.

    Each saddle changes one pixel, filling it if background and clearing it if foreground:
    the pixels chosen are gathered into one mask and flipped (a pixel chosen by several
    saddles is chosen for the same change by each).
    """
    va, vb, vc, vd = values[:-1, :-1], values[:-1, 1:], values[1:, :-1], values[1:, 1:]
    if fill_all:
        main_fill, anti_fill = main, anti
        main_clear = anti_clear = np.zeros(main.shape, bool)
    else:
        total = va.astype(np.int16)  # stored values are 0..255
        total += vb
        total += vc
        total += vd
        connect = total >= 4 * fg_min
        main_fill = main & connect
        main_clear = main ^ main_fill
        anti_fill = anti & connect
        anti_clear = anti ^ anti_fill
    # main: foreground a and d, background b and c; anti: the other way round.
    a_le_d, a_ge_d = va <= vd, va >= vd
    b_ge_c, b_le_c = vb >= vc, vb <= vc
    flip = np.zeros(fg.shape, bool)
    flip[:-1, :-1] |= (main_clear & a_le_d) | (anti_fill & a_ge_d)
    flip[1:, 1:] |= (main_clear & ~a_le_d) | (anti_fill & ~a_ge_d)
    flip[:-1, 1:] |= (main_fill & b_ge_c) | (anti_clear & b_le_c)
    flip[1:, :-1] |= (main_fill & ~b_ge_c) | (anti_clear & ~b_le_c)
    fg ^= flip


def _saddles_near(fg: np.ndarray, touched: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Top-left ``(rows, cols)`` of the saddles among the 2x2 windows holding a touched
    pixel, in row-major order."""
    h, w = fg.shape
    rows, cols = touched
    r = np.concatenate([rows, rows, rows - 1, rows - 1])
    q = np.concatenate([cols, cols - 1, cols, cols - 1])
    ok = (r >= 0) & (q >= 0) & (r < h - 1) & (q < w - 1)
    flat = np.sort(r[ok] * (w - 1) + q[ok])  # (np.unique hashes: several times slower)
    flat = flat[np.r_[True, flat[1:] != flat[:-1]]]
    r, q = flat // (w - 1), flat % (w - 1)
    main, anti = _checkerboards(fg[r, q], fg[r, q + 1], fg[r + 1, q], fg[r + 1, q + 1])
    saddle = main | anti
    return r[saddle], q[saddle]


def _checkerboards(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Of 2x2 windows given by their pixels (``a b`` over ``c d``), those with foreground
    only on the main diagonal (a, d) and those with it only on the anti-diagonal (b, c)."""
    return a & d & ~b & ~c, b & c & ~a & ~d


def _component_stats(labels: np.ndarray, values: np.ndarray, wanted: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per label, ``(pixel count, value sum, value max)`` over its pixels, as an
    ``(n_labels, 3)`` int64 array whose rows of labels not ``wanted`` (a boolean per label;
    label 0, the background, never is) are 0; and the mask of the wanted labels' pixels.

    Only the wanted labels are counted: a noise map has 10^5 components a chunk, nearly all
    too small to keep. Each pixel's label goes through one lookup table (unwanted labels and
    the background share a last row, dropped) into one histogram row per wanted label, so
    count, sum and maximum come from a single ``bincount`` over the whole crop: cheaper than
    gathering the foreground pixels first, or than sorting every pixel by its label.
    """
    n = wanted.size
    out = np.zeros((n, 3), dtype=np.int64)
    ids = np.nonzero(wanted)[0]
    if not ids.size:
        return out, np.zeros(labels.shape, dtype=bool)
    row = np.full(n, ids.size, dtype=np.int32)
    row[ids] = np.arange(ids.size, dtype=np.int32)
    key = row[labels]
    kept = key < ids.size
    if (ids.size + 1) * 256 <= 1 << 22:  # one histogram row per label
        key <<= 8
        np.bitwise_or(key, values, out=key, casting="unsafe")  # values are 0..255
        hist = np.bincount(key.ravel(), minlength=(ids.size + 1) * 256)
        hist = hist.reshape(ids.size + 1, 256)[:-1]
        count = hist.sum(axis=1)
        out[ids, 0] = count
        out[ids, 1] = hist @ np.arange(256, dtype=np.int64)
        out[ids, 2] = np.where(count > 0, 255 - np.argmax(hist[:, ::-1] > 0, axis=1), 0)
        return out, kept
    inside = kept.ravel()
    key, val = key.ravel()[inside].astype(np.int64), values.ravel()[inside]
    out[ids, 0] = np.bincount(key, minlength=ids.size)
    out[ids, 1] = np.bincount(key, weights=val, minlength=ids.size).astype(np.int64)
    key = np.sort(key * 256 + val)  # many labels: sort instead of a huge histogram
    last = np.r_[np.nonzero(np.diff(key >> 8))[0], key.size - 1]
    vmax = np.zeros(ids.size, dtype=np.int64)
    vmax[key[last] >> 8] = key[last] & 255
    out[ids, 2] = vmax
    return out, kept


def _fill_small_holes(fg: np.ndarray, min_px: float) -> np.ndarray:
    """``fg`` with the holes whose bounding box is below ``min_px`` pixels filled.

    They would be filled anyway (a hole's ring encloses at most its box), islands and all,
    but a noisy map has 10^5 pinholes a chunk, cheaper to fill than to trace. Labels and
    statistics stay those of the unfilled mask: a filled pixel never lies on a remaining ring
    (without 2x2 checkerboards no background pixel touches another hole or the outside).

    Holes are labelled 8-connected, which OpenCV does ~2x faster than 4-connected: ``fg`` has
    no 2x2 checkerboard, so two background pixels that touch at a corner also share an edge
    neighbour in the background, and both give the same holes.
    """
    _, labels, cc, _ = cv2.connectedComponentsWithStats((~fg).view(np.uint8), connectivity=8)
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

    def points(self, rings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The corners of the given rings (indices, in that order), concatenated, and each
        corner's position in ``rings``."""
        lengths = self.starts[rings + 1] - self.starts[rings]
        pos = np.repeat(np.arange(rings.size), lengths)
        first = np.repeat(self.starts[rings] - np.cumsum(lengths) + lengths, lengths)
        return self.coords[first + np.arange(pos.size)], pos

    def linearrings(self, rings: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """The given rings (indices, in that order) as shapely LinearRings, shifted by
        ``offset`` ``(x, y)`` (pixels: from the traced crop to the level's coordinates)."""
        points, pos = self.points(rings)
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
