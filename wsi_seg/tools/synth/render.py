"""Paints any level-0 rectangle of a synthetic slide at any downsample from its layout and seed.

Nuclei sit on jittered grids whose cells are hashed from ``(seed, population, row, col)``, so a
nucleus crossing a tile border is drawn identically by both tiles. Downsamples above 2 are
rendered at twice their resolution and box-averaged, so coarse levels look like scanner pyramids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.prepared import prep

from wsi_seg.tools.synth.layout import Layout, SynthSpec

#: Nuclei are drawn one by one up to this many µm per output pixel, painted as their mean above.
MAX_DRAWN_UM = 2.0
#: Share of a vesicular nucleus's area taken by its pale centre (axes 3/5 of the nucleus).
CENTRE_AREA = 0.36
_SHIFT = 4  # cv2 fractional bits: draw at 1/16 px precision


# -- texture ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Population:
    """A nucleus population on a jittered grid (all lengths in µm)."""

    ident: int
    cell_um: float
    presence: float
    radius_um: tuple[float, float]
    elongation: tuple[float, float]
    rim_rgb: tuple[int, int, int]
    centre_rgb: tuple[int, int, int] | None  # paler centre (vesicular chromatin) when set


_NORMAL = _Population(1, 13.0, 0.55, (2.0, 3.0), (1.3, 2.2), (120, 78, 160), None)
_TUMOUR = _Population(2, 9.5, 0.9, (3.2, 5.2), (1.0, 1.6), (78, 40, 120), (150, 105, 180))
_LYMPH = _Population(3, 6.5, 0.85, (1.7, 2.3), (1.0, 1.15), (58, 30, 98), None)

_GLASS = np.array([244, 243, 247], np.float32)
_STROMA = np.array([234, 168, 200], np.float32)
_STROMA_DENSE = np.array([214, 124, 172], np.float32)


def _hash_uniform(seed: int, pop: int, rows: np.ndarray, cols: np.ndarray, k: int) -> np.ndarray:
    """Deterministic uniforms in [0, 1) per grid cell (splitmix64 of the cell's identity)."""
    with np.errstate(over="ignore"):
        z = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.uint64(pop) * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.uint64(k) * np.uint64(0x94D049BB133111EB)
             ^ rows.astype(np.uint64) * np.uint64(0xD6E8FEB86659FD93)
             ^ cols.astype(np.uint64) * np.uint64(0xCA5A826395121157))
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _stain(seed: int) -> np.ndarray:
    """Per-slide stain variation: a small colour gain, as between labs and scanners."""
    rng = np.random.default_rng([seed, 31])
    return rng.uniform(0.93, 1.05, size=3).astype(np.float32)


class Renderer:
    """Paints level-0 rectangles of a synthetic slide at any downsample."""

    def __init__(self, spec: SynthSpec, layout: Layout) -> None:
        self.spec = spec
        self.layout = layout
        self._tissue = prep(layout.tissue)
        self._tumour = prep(layout.tumour)
        self._lymph = prep(layout.lymph)
        rng = np.random.default_rng([spec.seed, 101])
        # Fibre texture: a few plane waves with random direction, wavelength 15-80 µm.
        n = 6
        ang = rng.uniform(0, np.pi, n)
        wavelength = rng.uniform(15, 80, n)
        self._kx = np.cos(ang) * 2 * np.pi / wavelength
        self._ky = np.sin(ang) * 2 * np.pi / wavelength
        self._phase = rng.uniform(0, 2 * np.pi, n)
        self._gain = _stain(spec.seed)
        self._noise_table = rng.uniform(-1, 1, (1021, 1021)).astype(np.float32)

    def render(self, x0: int, y0: int, w_px: int, h_px: int, downsample: float) -> np.ndarray:
        """RGB uint8 ``(h_px, w_px, 3)`` of the rectangle starting at level-0 ``(x0, y0)``.

        Output pixel ``(i, j)`` covers level-0 ``[x0 + j*d, x0 + (j+1)*d)``, ``d = downsample``.
        Downsamples above 2 are rendered at ``d / 2`` and box-averaged (antialiasing).
        """
        if downsample > 2:
            fine = self._render(x0, y0, 2 * w_px, 2 * h_px, downsample / 2)
            return cv2.resize(fine, (w_px, h_px), interpolation=cv2.INTER_AREA)
        return self._render(x0, y0, w_px, h_px, downsample)

    def _render(self, x0: int, y0: int, w_px: int, h_px: int, downsample: float) -> np.ndarray:
        d = float(downsample)
        region = box(x0, y0, x0 + w_px * d, y0 + h_px * d)
        noise = self._noise(x0, y0, w_px, h_px, d)
        if not self._tissue.intersects(region):
            return np.clip(_GLASS + noise[..., None] * 1.5, 0, 255).astype(np.uint8)

        # The pixel colour is linear in a handful of per-pixel weights, so one (N, k) @ (k, 3)
        # product composes it instead of a dozen full-size RGB temporaries.
        t = self._mask(self.layout.tissue, x0, y0, w_px, h_px, d)
        t = cv2.GaussianBlur(t, (0, 0), max(0.8, 2.0 / d))  # soft section edge
        fibres = self._fibres(x0, y0, w_px, h_px, d)
        rest = np.ones((h_px, w_px), np.float32)  # tissue not claimed by tumour or lymph
        weights: list[np.ndarray] = []
        colours: list[np.ndarray] = []
        cover = np.zeros((h_px, w_px), np.float32)
        for pop, geom, prepared in (
            (_TUMOUR, self.layout.tumour, self._tumour),
            (_LYMPH, self.layout.lymph, self._lymph),
            (_NORMAL, None, None),
        ):
            if prepared is not None and not prepared.intersects(region):
                continue
            m = rest.copy() if geom is None else self._mask(geom, x0, y0, w_px, h_px, d)
            if geom is not None:
                rest -= m
            c, centre = self._nuclei(pop, x0, y0, w_px, h_px, d)
            c *= m
            cover += c
            weights.append(c)
            colours.append(np.array(pop.rim_rgb, np.float32))
            if centre is not None and pop.centre_rgb is not None:
                weights.append(centre * m)
                colours.append(np.array(pop.centre_rgb, np.float32) - pop.rim_rgb)
        free = np.clip(1 - cover, 0, 1)
        weights += [free, free * fibres]
        colours += [_STROMA, _STROMA_DENSE - _STROMA]
        w = np.stack([wt * t for wt in weights] + [1 - t, noise], axis=-1)
        c = np.stack([col * self._gain for col in colours] + [_GLASS, np.full(3, 3.0, np.float32)])
        rgb = w.reshape(-1, w.shape[-1]) @ c
        return np.clip(rgb, 0, 255).astype(np.uint8).reshape(h_px, w_px, 3)

    # pieces ----------------------------------------------------------------------------------
    def _mask(self, geom: MultiPolygon, x0: float, y0: float, w: int, h: int, d: float
              ) -> np.ndarray:
        """Coverage (0/1 float32) of ``geom`` on the output grid, rings filled even-odd."""
        out = np.zeros((h, w), np.uint8)
        clip = geom.intersection(box(x0 - 4 * d, y0 - 4 * d, x0 + (w + 4) * d, y0 + (h + 4) * d))
        rings = []
        for poly in getattr(clip, "geoms", [clip]):
            if not isinstance(poly, Polygon) or poly.is_empty:
                continue
            for ring in (poly.exterior, *poly.interiors):
                xy = np.asarray(ring.coords)
                # Pixel (i, j) has its centre at level-0 x0 + (j + .5) d: edge-exact mapping.
                pts = ((xy - (x0, y0)) / d - 0.5) * (1 << _SHIFT)
                rings.append(np.round(pts).astype(np.int32))
        if rings:
            cv2.fillPoly(out, rings, 1, lineType=cv2.LINE_8, shift=_SHIFT)
        return out.astype(np.float32)

    def _noise(self, x0: float, y0: float, w: int, h: int, d: float) -> np.ndarray:
        """Pixel-level noise in [-1, 1], a pure function of the level-0 pixel position.

        A 1021-px periodic table (prime, so the period never lines up with tiles) is as
        good as fresh noise to the eye and to a CNN, and costs one gather.
        """
        n = self._noise_table.shape[0]
        cols = np.floor(x0 + (np.arange(w) + 0.5) * d).astype(np.int64) % n
        rows = np.floor(y0 + (np.arange(h) + 0.5) * d).astype(np.int64) % n
        return self._noise_table[np.ix_(rows, cols)]

    def _fibres(self, x0: float, y0: float, w: int, h: int, d: float) -> np.ndarray:
        um = self.spec.mpp
        xs = (x0 + (np.arange(w) + 0.5) * d) * um
        ys = (y0 + (np.arange(h) + 0.5) * d) * um
        acc = np.zeros((h, w), np.float32)
        for kx, ky, ph in zip(self._kx, self._ky, self._phase, strict=True):
            # sin(a + b) = sin a cos b + cos a sin b: two outer products instead of h*w sines.
            a, b = kx * xs + ph, ky * ys
            acc += np.outer(np.cos(b), np.sin(a)).astype(np.float32)
            acc += np.outer(np.sin(b), np.cos(a)).astype(np.float32)
        return np.clip(0.5 + acc / 6, 0, 1) ** 2

    def _nuclei(self, pop: _Population, x0: float, y0: float, w: int, h: int, d: float
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Coverage of one population's nuclei, and of their pale centres (or None).

        Coarser than :data:`MAX_DRAWN_UM` µm per pixel nuclei are sub-pixel: their expected
        coverage is painted instead of drawing each one. Drawing them there would cost time
        and memory in proportion to the slide's area per tile (millions of nuclei in one
        thumbnail-level tile), and a box-averaged view shows only the mean anyway.
        """
        um = self.spec.mpp
        px_um = d * um  # µm per output pixel
        g = pop.cell_um
        if px_um > MAX_DRAWN_UM:
            r0, r1 = pop.radius_um
            mean_r2 = (r1**3 - r0**3) / (3 * (r1 - r0))  # E[r^2], r uniform in [r0, r1]
            cover_mean = min(1.0, pop.presence * math.pi * mean_r2 / (g * g))
            cover_full = np.full((h, w), cover_mean, np.float32)
            if pop.centre_rgb is None:
                return cover_full, None
            return cover_full, np.full((h, w), cover_mean * CENTRE_AREA, np.float32)
        margin = pop.radius_um[1] * pop.elongation[1] + g
        gx0 = math.floor((x0 * um - margin) / g)
        gy0 = math.floor((y0 * um - margin) / g)
        gx1 = math.ceil(((x0 + w * d) * um + margin) / g)
        gy1 = math.ceil(((y0 + h * d) * um + margin) / g)
        grid_r, grid_c = np.meshgrid(np.arange(gy0, gy1), np.arange(gx0, gx1), indexing="ij")
        rows, cols = grid_r.ravel(), grid_c.ravel()
        u = [_hash_uniform(self.spec.seed, pop.ident, rows + (1 << 20), cols + (1 << 20), k)
             for k in range(6)]
        keep = u[0] < pop.presence
        cx_um = (cols + 0.15 + 0.7 * u[1])[keep] * g
        cy_um = (rows + 0.15 + 0.7 * u[2])[keep] * g
        radius = (pop.radius_um[0] + (pop.radius_um[1] - pop.radius_um[0]) * u[3])[keep]
        elong = (pop.elongation[0] + (pop.elongation[1] - pop.elongation[0]) * u[4])[keep]
        angle = (u[5] * 180.0)[keep]
        one = 1 << _SHIFT
        scale = one / px_um
        cxs = np.round(((cx_um - x0 * um) / px_um - 0.5) * one).astype(np.int64).tolist()
        cys = np.round(((cy_um - y0 * um) / px_um - 0.5) * one).astype(np.int64).tolist()
        ax_a = np.maximum(1, np.round(radius * np.sqrt(elong) * scale)).astype(np.int64)
        ax_b = np.maximum(1, np.round(radius / np.sqrt(elong) * scale)).astype(np.int64)
        cover = np.zeros((h, w), np.float32)
        centre = np.zeros((h, w), np.float32) if pop.centre_rgb is not None else None
        for cx, cy, a, b, ang in zip(cxs, cys, ax_a.tolist(), ax_b.tolist(), angle.tolist(),
                                     strict=True):
            cv2.ellipse(cover, (cx, cy), (a, b), ang, 0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
            if centre is not None:
                inner = (max(1, a * 3 // 5), max(1, b * 3 // 5))  # CENTRE_AREA = (3/5)^2
                cv2.ellipse(centre, (cx, cy), inner, ang, 0, 360, 1.0, -1, cv2.LINE_AA, _SHIFT)
        np.clip(cover, 0, 1, out=cover)
        if centre is not None:
            np.clip(centre, 0, 1, out=centre)
        return cover, centre
