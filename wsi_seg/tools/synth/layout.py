"""The vector layout of a synthetic slide: what it is (:class:`SynthSpec`) and where its tissue,
tumour and lymphocyte clusters lie (:func:`make_layout`), shapely geometry in level-0 pixels,
a pure function of the seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

TILE_PX = 512


@dataclass(frozen=True)
class SynthSpec:
    """What to write.

    Attributes:
        width_px, height_px: level-0 size in pixels.
        seed: determines layout and texture completely.
        mpp: level-0 resolution, µm/px.
        fmt: ``svs`` (Aperio BigTIFF, JPEG) or ``tiff`` (generic tiled TIFF, JPEG).
        level_factor: downsample between pyramid levels (2 or 4).
        tile_px: TIFF tile edge.
        jpeg_quality: 1..100.
    """

    width_px: int
    height_px: int
    seed: int = 0
    mpp: float = 0.5
    fmt: str = "svs"
    level_factor: int = 2
    tile_px: int = TILE_PX
    jpeg_quality: int = 90

    def level_downsamples(self) -> list[int]:
        """Downsamples of the pyramid: halve (or quarter) until the longer side is <= 1024."""
        out = [1]
        while max(self.width_px, self.height_px) / out[-1] > 1024:
            out.append(out[-1] * self.level_factor)
        return out


@dataclass(frozen=True)
class Layout:
    """Vector description of a synthetic slide, level-0 pixels."""

    tissue: MultiPolygon
    tumour: MultiPolygon
    lymph: MultiPolygon


# -- layout -----------------------------------------------------------------------------------
def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 96,
          wobble: float = 0.25) -> Polygon:
    """A smooth random star-shaped polygon around (cx, cy) with mean radius r."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    radius = np.ones(n)
    for k in range(2, 7):
        radius += wobble / k * rng.uniform(0.3, 1.0) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    ax = rng.uniform(0.75, 1.25)
    pts = np.stack([cx + r * ax * radius * np.cos(theta), cy + r / ax * radius * np.sin(theta)], 1)
    return shapely.make_valid(Polygon(pts)).buffer(0)


def _as_multi(geom: shapely.Geometry) -> MultiPolygon:
    polys = [g for g in getattr(geom, "geoms", [geom]) if isinstance(g, Polygon) and not g.is_empty]
    return MultiPolygon(polys)


def make_layout(spec: SynthSpec) -> Layout:
    """Tissue islands, tumour regions (some with holes) and lymphocyte clusters for a seed."""
    rng = np.random.default_rng([spec.seed, 7919])
    w, h = spec.width_px, spec.height_px
    frame = box(0.03 * w, 0.03 * h, 0.97 * w, 0.97 * h)
    n_islands = int(rng.integers(1, 4))
    islands = []
    for i in range(n_islands):
        # Spread islands along the longer axis so they rarely merge.
        t = (i + 0.5) / n_islands
        cx = w * (t if w >= h else rng.uniform(0.35, 0.65))
        cy = h * (t if h > w else rng.uniform(0.35, 0.65))
        r = min(w, h) * rng.uniform(0.22, 0.34) / max(1, n_islands**0.5)
        islands.append(_blob(rng, cx, cy, r, wobble=0.35))
    tissue = shapely.unary_union(islands).intersection(frame)

    tumours, lymphs = [], []
    for island in islands:
        minx, miny, maxx, maxy = island.bounds
        size = min(maxx - minx, maxy - miny)
        for _ in range(int(rng.integers(1, 3))):
            for _try in range(20):
                cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
                if island.contains(shapely.Point(cx, cy)):
                    break
            t = _blob(rng, cx, cy, size * rng.uniform(0.12, 0.22), wobble=0.4)
            if rng.random() < 0.6:
                # A stromal hole inside the tumour: polygons with holes in the truth.
                c = t.representative_point()
                t = t.difference(_blob(rng, c.x, c.y, size * 0.04, wobble=0.2))
            tumours.append(t)
        for _ in range(int(rng.integers(2, 5))):
            cx, cy = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            lymphs.append(_blob(rng, cx, cy, size * rng.uniform(0.025, 0.05), wobble=0.3))
    tumour = shapely.unary_union(tumours).intersection(tissue) if tumours else Polygon()
    lymph = shapely.unary_union(lymphs).intersection(tissue).difference(tumour)
    return Layout(_as_multi(tissue), _as_multi(tumour), _as_multi(lymph))
