"""Writes a synthetic slide: pyramid levels as tiled JPEG TIFF pages (Aperio SVS or generic
TIFF), rendered tile by tile on a few threads, and its tumour truth as GeoJSON beside it.
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

import numpy as np
import tifffile
from shapely.geometry import MultiPolygon

from wsi_seg import __version__
from wsi_seg.core.files import atomic_path
from wsi_seg.core.naming import TRUTH_PATTERNS, slide_stem
from wsi_seg.stages.geojson import write_polygons
from wsi_seg.tools.synth.layout import TILE_PX, SynthSpec, make_layout
from wsi_seg.tools.synth.render import Renderer


@dataclass(frozen=True)
class SynthResult:
    """A written synthetic slide."""

    slide_path: Path
    truth_path: Path
    tumour: MultiPolygon
    tissue: MultiPolygon
    seconds: float


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
    spec = _checked_spec(out, size_px, seed, fmt, mpp, level_factor, jpeg_quality)
    start = time.perf_counter()
    layout = make_layout(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_pyramid(out, spec, Renderer(spec, layout), threads, progress)
    truth = truth_path_for(out)
    write_truth_geojson(layout.tumour, truth, out.name)
    return SynthResult(out, truth, layout.tumour, layout.tissue, time.perf_counter() - start)


def _checked_spec(out: Path, size_px: tuple[int, int], seed: int, fmt: str | None, mpp: float,
                  level_factor: int, jpeg_quality: int) -> SynthSpec:
    """The spec of :func:`write_synthetic_slide`'s arguments; ValueError for bad ones."""
    fmt = fmt or ("svs" if out.suffix.lower() == ".svs" else "tiff")
    if fmt not in ("svs", "tiff"):
        raise ValueError(f"unknown format {fmt!r}; use svs or tiff")
    if level_factor not in (2, 4):
        raise ValueError("level_factor must be 2 or 4")
    w, h = size_px
    if w < 64 or h < 64:
        raise ValueError(f"slide too small: {w}x{h} (at least 64x64 px)")
    return SynthSpec(w, h, seed, mpp, fmt, level_factor, TILE_PX, jpeg_quality)


def _write_pyramid(out: Path, spec: SynthSpec, renderer: Renderer, threads: int,
                   progress: bool) -> None:
    """Every pyramid level (and an Aperio file's thumbnail after level 0), atomically."""
    from tqdm import tqdm

    w, h, t = spec.width_px, spec.height_px, spec.tile_px
    total = sum(math.ceil(w / d / t) * math.ceil(h / d / t) for d in spec.level_downsamples())
    bar = tqdm(total=total, unit="tile", desc=out.name, disable=not progress, leave=False)
    with bar, atomic_path(out) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for i, d in enumerate(spec.level_downsamples()):
            lw, lh = math.ceil(w / d), math.ceil(h / d)
            tiles = _tiles(renderer, d, lw, lh, t, threads, bar)
            tif.write(tiles, **_page_args(spec, i, d, lw, lh))  # type: ignore[arg-type]
            if spec.fmt == "svs" and i == 0:
                _write_aperio_thumbnail(tif, renderer, spec)


def _page_args(spec: SynthSpec, i: int, d: int, lw: int, lh: int) -> dict[str, object]:
    """``TiffWriter.write`` arguments of pyramid level ``i`` (downsample ``d``, ``lw x lh`` px):
    Aperio pages carry their description; generic TIFF marks levels above 0 as reduced
    images and states the resolution in the TIFF tags."""
    kwargs: dict[str, object] = dict(
        shape=(lh, lw, 3), dtype=np.uint8, tile=(spec.tile_px, spec.tile_px),
        photometric="rgb", compression="jpeg",
        compressionargs={"level": spec.jpeg_quality}, metadata=None,
    )
    if spec.fmt == "svs":
        kwargs["description"] = _aperio_description(spec, lw, lh, i == 0)
        kwargs["subfiletype"] = 0
    else:
        mpp = spec.mpp
        kwargs["subfiletype"] = 0 if i == 0 else 1
        kwargs["resolution"] = (1e4 / (mpp * d), 1e4 / (mpp * d))
        kwargs["resolutionunit"] = "CENTIMETER"
        kwargs["description"] = f"wsi-seg synthetic slide seed={spec.seed} mpp={mpp}"
    return kwargs
