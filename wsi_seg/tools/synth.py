"""Synthetic H&E-like whole-slide images with exact tumour ground truth.

A slide is a vector *layout* (tissue islands, tumour regions with holes, lymphocyte clusters,
all shapely geometry in level-0 pixels) and a *renderer* that paints any level-0 rectangle at
any downsample from that layout and the seed alone. Tiles are rendered on demand and handed to
tifffile as an iterator, so writing a 100,000 x 100,000 px slide keeps memory at a few tiles.

What the pixels look like (the demo models must learn the difference, and it is not only
"darker is tumour"):

* glass: near white, faint noise;
* stroma: pink eosin with fibre-like low-frequency texture, sparse small, elongated nuclei;
* lymphocyte clusters (confounder): dense, small, round, very dark nuclei;
* tumour: crowded, large, pleomorphic nuclei with a dark rim and paler (vesicular) centre.

Nuclei sit on jittered grids whose cells are hashed from ``(seed, population, row, col)``, so a
nucleus crossing a tile border is drawn identically by both tiles. Levels coarser than 2x are
rendered at twice their resolution and box-averaged, so they look like scanner pyramids.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import shapely
import tifffile
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.prepared import prep

from wsi_seg import __version__
from wsi_seg.core.files import atomic_path
from wsi_seg.core.naming import TRUTH_PATTERNS, slide_stem
from wsi_seg.stages.geojson import write_polygons

TILE_PX = 512
#: Nuclei are drawn one by one up to this many µm per output pixel, painted as their mean above.
MAX_DRAWN_UM = 2.0
#: Share of a vesicular nucleus's area taken by its pale centre (axes 3/5 of the nucleus).
CENTRE_AREA = 0.36
_SHIFT = 4  # cv2 fractional bits: draw at 1/16 px precision


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


@dataclass(frozen=True)
class SynthResult:
    """A written synthetic slide."""

    slide_path: Path
    truth_path: Path
    tumour: MultiPolygon
    tissue: MultiPolygon
    seconds: float


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


# -- writing ----------------------------------------------------------------------------------
def _tiles(renderer: Renderer, downsample: int, level_w: int, level_h: int, tile: int,
           threads: int, bar: Any = None) -> Iterator[np.ndarray]:
    """Tiles in TIFF order, rendered by a few threads with a bounded read-ahead.

    OpenCV and NumPy release the GIL, so threads scale; the bounded queue keeps memory at a
    few tiles however large the slide (``Executor.map`` would queue every tile at once).
    """
    origins = ((x * downsample, y * downsample)
               for y in range(0, level_h, tile) for x in range(0, level_w, tile))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: deque[Future[np.ndarray]] = deque()
        for x0, y0 in origins:
            pending.append(pool.submit(renderer.render, x0, y0, tile, tile, downsample))
            if len(pending) >= 4 * threads:
                yield pending.popleft().result()
                if bar is not None:
                    bar.update(1)
        while pending:
            yield pending.popleft().result()
            if bar is not None:
                bar.update(1)


def _aperio_description(spec: SynthSpec, level_w: int, level_h: int, first: bool) -> str:
    w, h = spec.width_px, spec.height_px
    t = spec.tile_px
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({t}x{t})"
    if not first:
        head += f" -> {level_w}x{level_h}"
    mag = round(10.0 / spec.mpp)
    return (f"{head} JPEG/RGB Q={spec.jpeg_quality}|AppMag = {mag}|MPP = {spec.mpp:.4f}"
            f"|Filename = wsi-seg-synth-{spec.seed}|Generator = wsi-seg {__version__}")


#: Longest side of the thumbnail page an Aperio file keeps after level 0, pixels.
APERIO_THUMBNAIL_PX = 768


def _write_aperio_thumbnail(tif: tifffile.TiffWriter, renderer: Renderer, spec: SynthSpec
                            ) -> None:
    """Page 1 of an Aperio file: a small stripped (untiled) thumbnail with its own
    description, as scanners write it; readers (OpenSlide, tifffile, tiffslide) expect the
    pyramid's levels on the tiled pages around it and this page as an associated image."""
    w, h = spec.width_px, spec.height_px
    d = max(1, math.ceil(max(w, h) / APERIO_THUMBNAIL_PX))
    tw, th = math.ceil(w / d), math.ceil(h / d)
    image = renderer.render(0, 0, tw, th, d)
    head = f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {tw}x{th} - "
    mag = round(10.0 / spec.mpp)
    description = (f"{head}|AppMag = {mag}|MPP = {spec.mpp:.4f}"
                   f"|Filename = wsi-seg-synth-{spec.seed}|Generator = wsi-seg {__version__}")
    tif.write(image, photometric="rgb", compression="jpeg",
              compressionargs={"level": spec.jpeg_quality}, description=description,
              subfiletype=0, metadata=None, rowsperstrip=16)


def write_truth_geojson(tumour: MultiPolygon, path: Path, slide_name: str) -> None:
    """Tumour ground truth as a QuPath-importable FeatureCollection (level-0 px)."""
    write_polygons(list(tumour.geoms), path,
                   properties={"metadata": {"source": "wsi-seg synth", "slide": slide_name}})


def truth_path_for(slide_path: str | os.PathLike[str]) -> Path:
    """Where the ground truth of a synthetic slide is written: ``<stem>.tumor.geojson``."""
    p = Path(slide_path)
    return p.with_name(TRUTH_PATTERNS[0].format(stem=slide_stem(p), name=p.name))


def write_synthetic_slide(
    path: str | os.PathLike[str],
    size_px: tuple[int, int] = (8000, 8000),
    seed: int = 0,
    fmt: str | None = None,
    mpp: float = 0.5,
    level_factor: int = 2,
    jpeg_quality: int = 90,
    threads: int | None = None,
    progress: bool = False,
) -> SynthResult:
    """Write a pyramidal synthetic slide and its tumour truth (``<stem>.tumor.geojson``) beside it.

    Args:
        path: output slide file (``.svs`` or ``.tif``/``.tiff``).
        size_px: level-0 ``(width, height)`` in pixels.
        seed: layout and texture seed; the same seed writes the same pixels.
        fmt: ``svs`` or ``tiff``; default from the suffix.
        mpp: level-0 µm/px.
        level_factor: downsample between pyramid levels, 2 or 4.
        jpeg_quality: JPEG quality of the tiles.
        threads: rendering threads (default: the CPUs available to this process).
        progress: show a progress bar over tiles (all pyramid levels) on stderr.
    """
    threads = threads or len(os.sched_getaffinity(0))
    out = Path(path)
    fmt = fmt or ("svs" if out.suffix.lower() == ".svs" else "tiff")
    if fmt not in ("svs", "tiff"):
        raise ValueError(f"unknown format {fmt!r}; use svs or tiff")
    if level_factor not in (2, 4):
        raise ValueError("level_factor must be 2 or 4")
    w, h = size_px
    if w < 64 or h < 64:
        raise ValueError(f"slide too small: {w}x{h} (at least 64x64 px)")
    spec = SynthSpec(w, h, seed, mpp, fmt, level_factor, TILE_PX, jpeg_quality)
    start = time.perf_counter()
    layout = make_layout(spec)
    renderer = Renderer(spec, layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    from tqdm import tqdm

    total = sum(math.ceil(w / d / spec.tile_px) * math.ceil(h / d / spec.tile_px)
                for d in spec.level_downsamples())
    bar = tqdm(total=total, unit="tile", desc=out.name, disable=not progress, leave=False)
    with bar, atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, d in enumerate(spec.level_downsamples()):
            lw, lh = math.ceil(w / d), math.ceil(h / d)
            kwargs: dict[str, object] = dict(
                shape=(lh, lw, 3), dtype=np.uint8, tile=(spec.tile_px, spec.tile_px),
                photometric="rgb", compression="jpeg",
                compressionargs={"level": jpeg_quality}, metadata=None,
            )
            if fmt == "svs":
                kwargs["description"] = _aperio_description(spec, lw, lh, i == 0)
                kwargs["subfiletype"] = 0
            else:
                kwargs["subfiletype"] = 0 if i == 0 else 1
                kwargs["resolution"] = (1e4 / (mpp * d), 1e4 / (mpp * d))
                kwargs["resolutionunit"] = "CENTIMETER"
                kwargs["description"] = f"wsi-seg synthetic slide seed={seed} mpp={mpp}"
            tif.write(_tiles(renderer, d, lw, lh, spec.tile_px, threads, bar), **kwargs)  # type: ignore[arg-type]
            if fmt == "svs" and i == 0:
                _write_aperio_thumbnail(tif, renderer, spec)
    truth = truth_path_for(out)
    write_truth_geojson(layout.tumour, truth, out.name)
    return SynthResult(out, truth, layout.tumour, layout.tissue, time.perf_counter() - start)
