"""Find tissue on a low-resolution view of the slide.

The signal is optical density (OD) against the slide's own glass: ``OD = -log10(I / I_glass)``,
the largest over R, G, B. Stained tissue absorbs light, glass does not, and OD separates pale,
barely stained fragments from glass better than saturation alone (a bluish-grey fragment is
hardly saturated but clearly darker than glass). The threshold is Otsu's on OD with a floor, so a
blank slide (only glass noise and JPEG ringing) yields no tissue at all. Morphological closing
joins nearby tissue, opening drops specks, and components smaller than ``min_area_um2`` (dust,
debris) are discarded. All sizes are in micrometres, so results do not depend on the view's
resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np
from shapely.geometry import Polygon

from wsi_seg.core.geometry import PixelFrame
from wsi_seg.core.params import Limits, Rule, check_params, param
from wsi_seg.stages.slide import Slide
from wsi_seg.stages.tiling import KeepFn


@dataclass(frozen=True)
class TissueConfig:
    """How tissue is found.

    Attributes:
        view_mpp: resolution of the analysis view, µm/px (coarser for huge slides, see
            ``max_view_px``).
        max_view_px: longest side of the analysis view; bounds memory for any slide size.
        od_floor: the lowest OD threshold Otsu may choose (glass noise stays below it).
        close_um, open_um: structuring element diameters, µm.
        min_area_um2: smallest tissue component kept, µm² (scaled down on small slides:
            :func:`scaled_minimum`).
    """

    view_mpp: float = param(8.0, Rule("float", Limits(0, 1000, lo_open=True)))
    max_view_px: int = param(2048, Rule("int", Limits(16, 65536)))
    od_floor: float = param(0.04, Rule("float", Limits(0, 5)))
    close_um: float = param(48.0, Rule("float", Limits(0, 10_000)))
    open_um: float = param(16.0, Rule("float", Limits(0, 10_000)))
    min_area_um2: float = param(10_000.0, Rule("float", Limits(0, 1e12)))

    def __post_init__(self) -> None:
        check_params(self)


@dataclass(frozen=True)
class TissueMask:
    """Tissue on the analysis view and as level-0 polygons.

    ``mask[row, col]`` covers the level-0 rectangle starting at
    ``(origin_x0 + col * level0_px_per_px, origin_y0 + row * level0_px_per_px)``.
    """

    mask: np.ndarray
    level0_px_per_px: float
    origin_x0: float
    origin_y0: float
    slide_mpp: float
    threshold_od: float
    n_regions: int = 0
    n_dropped: int = 0
    dropped_um2: float = 0.0
    min_area_um2: float = 0.0

    @property
    def fraction(self) -> float:
        """Share of the view's area that is tissue (0..1)."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        px_um = self.level0_px_per_px * self.slide_mpp
        return float(self.mask.sum()) * px_um * px_um / 1e6

    @property
    def frame(self) -> PixelFrame:
        """Where the view lies on the slide."""
        rows, cols = self.mask.shape
        return PixelFrame(rows, cols, self.origin_x0, self.origin_y0, self.level0_px_per_px,
                          self.slide_mpp)

    @property
    def empty(self) -> bool:
        return not bool(self.mask.any())

    def note(self) -> str:
        """What was found and what the minimum-area rule dropped, in one sentence."""
        found = (f"tissue: {self.n_regions} region(s), {self.area_mm2:.3f} mm²" if
                 self.n_regions else "no tissue found")
        if self.n_dropped:
            found += (f"; {self.n_dropped} region(s) under the minimum of "
                      f"{self.min_area_um2:,.0f} µm² dropped ({self.dropped_um2 / 1e6:.4f} mm²)")
        return found

    @cached_property
    def integral(self) -> np.ndarray:
        """Summed-area table of the mask, ``(rows + 1, cols + 1)``: tissue pixels in
        ``[r0, r1) x [c0, c1)`` are ``ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]``."""
        return cv2.integral(self.mask.astype(np.uint8))

    def any_in_x0(self, x0: float, y0: float, w0: float, h0: float) -> bool:
        """Whether any tissue lies in the level-0 rectangle (touching counts; conservative)."""
        rows, cols = self.mask.shape
        (x_lo, y_lo), (x_hi, y_hi) = self.frame.points_from_level0(
            np.array([[x0, y0], [x0 + w0, y0 + h0]], dtype=np.float64))
        c0, r0 = max(0, math.floor(x_lo)), max(0, math.floor(y_lo))
        c1, r1 = min(cols, math.ceil(x_hi)), min(rows, math.ceil(y_hi))
        if c1 <= c0 or r1 <= r0:
            return False
        ii = self.integral
        return bool(ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0] > 0)

    def keep_windows(self, level0_px_per_px: float) -> KeepFn:
        """A :data:`wsi_seg.stages.tiling.KeepFn` for windows at a working resolution.

        ``level0_px_per_px`` is the working resolution in level-0 pixels per pixel; a window
        is kept when any tissue pixel of the view touches its footprint.
        """
        r = level0_px_per_px / self.level0_px_per_px  # view pixels per working pixel
        rows, cols = self.mask.shape
        ii = self.integral

        def keep(y_lo: np.ndarray, y_hi: np.ndarray, x_lo: np.ndarray, x_hi: np.ndarray
                 ) -> np.ndarray:
            r0 = np.clip(np.floor(y_lo * r), 0, rows).astype(np.int64)
            r1 = np.clip(np.ceil(y_hi * r), 0, rows).astype(np.int64)
            c0 = np.clip(np.floor(x_lo * r), 0, cols).astype(np.int64)
            c1 = np.clip(np.ceil(x_hi * r), 0, cols).astype(np.int64)
            return (ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]) > 0

        return keep

    @cached_property
    def polygons(self) -> list[Polygon]:
        """Tissue as level-0 polygons with holes (pixel edges, slightly generous)."""
        return mask_to_polygons(self.mask, self.frame)


def mask_to_polygons(mask: np.ndarray, frame: PixelFrame) -> list[Polygon]:
    """Outer contours with their holes from a binary mask, mapped to level-0 pixels.

    OpenCV traces pixel centres; shifting by half a pixel outward-ish (centre -> edge
    midpoint) is within one view pixel of the true edge, ample for a tissue outline.
    """
    m = np.ascontiguousarray(mask.astype(np.uint8))
    contours, hierarchy = cv2.findContours(m, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    if hierarchy is None:
        return []
    hier = hierarchy[0]

    def to_x0(c: np.ndarray) -> np.ndarray:
        return frame.points_to_level0(c.reshape(-1, 2).astype(np.float64) + 0.5)

    polys = []
    for i, c in enumerate(contours):
        if hier[i][3] != -1 or len(c) < 3:
            continue  # holes are collected from their parent
        holes = []
        j = hier[i][2]
        while j != -1:
            if len(contours[j]) >= 3:
                holes.append(to_x0(contours[j]))
            j = hier[j][0]
        poly = Polygon(to_x0(c), holes)
        if not poly.is_valid:
            poly = poly.buffer(0)
        for p in getattr(poly, "geoms", [poly]):
            if isinstance(p, Polygon) and not p.is_empty:
                polys.append(p)
    return polys


def _percentile_u8(channel: np.ndarray, q: float) -> float:
    """``np.percentile(channel, q)`` (linear method) of uint8 values, from a 256-bin histogram.

    Exact, and needs no sorted float copy of the view (which for a 4096 px view is 200 MB).
    """
    counts = np.bincount(channel.ravel(), minlength=256)
    cum = np.cumsum(counts)
    rank = q / 100 * (cum[-1] - 1)
    lo, hi = int(np.floor(rank)), int(np.ceil(rank))
    v_lo = int(np.searchsorted(cum, lo, side="right"))
    v_hi = int(np.searchsorted(cum, hi, side="right"))
    return v_lo + (rank - lo) * (v_hi - v_lo)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Largest per-channel OD of each pixel against the image's own glass colour (float32).

    Glass is the 99th percentile per channel (at least 180, so an all-tissue view is still
    compared with something bright); pixels brighter than glass get OD 0. Each channel goes
    through a 256-entry lookup table, so memory is two float32 planes, whatever the view.
    """
    values = np.arange(256, dtype=np.float64) + 1
    od = np.zeros(rgb.shape[:2], np.float32)
    for c in range(3):
        glass = max(_percentile_u8(rgb[..., c], 99), 180.0)
        lut = (-np.log10(np.clip(values / (glass + 1), 1e-3, 1.0))).astype(np.float32)
        np.maximum(od, lut[rgb[..., c]], out=od)
    return od


#: A minimum area never exceeds this share of the slide's area: a rule meant to drop dust on a
#: 20 mm² slide must not drop everything on a 0.02 mm² crop.
MIN_AREA_SLIDE_FRACTION = 0.01


def scaled_minimum(min_area_um2: float, slide_area_um2: float) -> float:
    """The minimum region area to apply on a slide of ``slide_area_um2``: the configured
    ``min_area_um2``, or :data:`MIN_AREA_SLIDE_FRACTION` of the slide when that is smaller."""
    return min(min_area_um2, MIN_AREA_SLIDE_FRACTION * slide_area_um2)


@dataclass(frozen=True)
class TissueFound:
    """A tissue mask with what its minimum-area rule dropped."""

    mask: np.ndarray
    threshold_od: float
    n_regions: int
    n_dropped: int
    dropped_um2: float


def detect_tissue_rgb(rgb: np.ndarray, um_per_px: float, config: TissueConfig = TissueConfig()
                      ) -> tuple[np.ndarray, float]:
    """Binary tissue mask of an RGB view whose pixels are ``um_per_px`` µm wide.

    Returns the mask (bool) and the OD threshold used.
    """
    found = detect_tissue(rgb, um_per_px, config)
    return found.mask, found.threshold_od


def detect_tissue(rgb: np.ndarray, um_per_px: float, config: TissueConfig = TissueConfig(),
                  min_area_um2: float | None = None) -> TissueFound:
    """Tissue of an RGB view whose pixels are ``um_per_px`` µm wide, keeping components of at
    least ``min_area_um2`` µm² (default: the config's)."""
    od = optical_density(rgb)
    od8 = (np.clip(od, 0, 1) * 255).astype(np.uint8)
    otsu, _ = cv2.threshold(od8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = max(otsu / 255.0, config.od_floor)
    mask = (od > threshold).astype(np.uint8)

    def disk(um: float) -> np.ndarray:
        d = max(1, round(um / um_per_px)) | 1
        return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))

    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, disk(config.close_um))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, disk(config.open_um))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    minimum = config.min_area_um2 if min_area_um2 is None else min_area_um2
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.zeros(n, bool)
    keep[1:] = areas >= minimum / (um_per_px * um_per_px)
    dropped = areas[~keep[1:]]
    return TissueFound(keep[labels], threshold, int(keep.sum()), len(dropped),
                       float(dropped.sum()) * um_per_px * um_per_px)


def find_tissue(slide: Slide, config: TissueConfig = TissueConfig()) -> TissueMask:
    """Tissue of a slide, found on a view of at most ``config.max_view_px`` pixels."""
    _, _, bw, bh = slide.bounds_x0
    view_mpp = max(config.view_mpp, slide.mpp * max(bw, bh) / config.max_view_px, slide.mpp)
    w_px, h_px = slide.size_w(view_mpp)
    rgb, scale = slide.thumbnail(max(w_px, h_px))
    um_per_px = scale * slide.mpp
    minimum = scaled_minimum(config.min_area_um2, bw * bh * slide.mpp * slide.mpp)
    found = detect_tissue(rgb, um_per_px, config, minimum)
    return TissueMask(found.mask, scale, slide.origin_x0, slide.origin_y0, slide.mpp,
                      found.threshold_od, found.n_regions, found.n_dropped, found.dropped_um2,
                      minimum)
