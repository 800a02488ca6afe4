"""What a slide holds and what a run would do with it (``wsi-seg info``, ``wsi-seg demo``).

:func:`describe_path` describes one slide file: vendor, level-0 size, pyramid levels, µm/px,
objective, associated images, tissue, and the blocks and tiles a run at a given µm/px would
process; optionally it writes the thumbnail with the tissue outline. A slide without µm/px is
still described as far as it can be, and a slide without tissue fully, each with the reason a
run could not use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_seg.core.errors import NoTissueError, WsiSegError
from wsi_seg.core.locations import SlideLocation
from wsi_seg.core.naming import slide_stem
from wsi_seg.stages.slide import MissingMppError, Slide, describe_file, open_slide
from wsi_seg.stages.tiling import plan_blocks, step_for
from wsi_seg.stages.tissue import TissueMask, find_tissue


@dataclass(frozen=True)
class PlanSettings:
    """The run a description plans: working µm/px (the model's), window edge, overlap
    fraction, block and mosaic chunk edges (working px). No defaults here: the callers take
    them from the model card and the option table, the one place run's defaults live."""

    target_mpp: float
    tile_px: int
    overlap: float
    block_px: int
    chunk_px: int


@dataclass(frozen=True)
class SlideInfo:
    """A slide's description (JSON-ready) and, when a run could not use the slide, why.

    ``planned`` is false when the slide has no µm/px: then the description holds only what
    the file tells without one (:func:`wsi_seg.stages.slide.describe_file`).
    """

    description: dict[str, Any]
    planned: bool
    error: str | None = None

    def text(self) -> str:
        """The description as ``wsi-seg info`` prints it."""
        return format_text(self.description) if self.planned else \
            format_without_mpp(self.description)


def thumbnail_path(thumbnail: Path, slide_path: SlideLocation, one_of_many: bool) -> Path:
    """Where a slide's thumbnail goes: ``thumbnail`` itself, or ``thumbnail/<stem>.png`` when
    several slides are described (the folder is made)."""
    if not one_of_many:
        return thumbnail
    thumbnail.mkdir(parents=True, exist_ok=True)
    return thumbnail / f"{slide_stem(slide_path)}.png"


def describe_path(path: SlideLocation, plan: PlanSettings, mpp: float | None = None,
                  thumbnail: Path | None = None, one_of_many: bool = False) -> SlideInfo:
    """Describe the slide at ``path`` (``mpp``: level-0 µm/px override) and the run ``plan``;
    write its tissue thumbnail to :func:`thumbnail_path` when ``thumbnail`` is given.

    Raises WsiSegError (one line) for a file that cannot be described at all; a slide without
    µm/px or without tissue is described, with the reason in :attr:`SlideInfo.error`.
    """
    try:
        with open_slide(path, mpp=mpp) as slide:
            tissue = find_tissue(slide)
            d = describe(slide, tissue, plan.target_mpp, plan.tile_px, plan.overlap,
                         plan.block_px, plan.chunk_px)
            if thumbnail is not None:
                out = thumbnail_path(thumbnail, path, one_of_many)
                if not cv2.imwrite(str(out), draw_tissue_thumbnail(slide, tissue)):
                    raise WsiSegError("cannot write thumbnail", out)
                d["thumbnail"] = str(out)
    except MissingMppError as exc:
        # Describe what the file holds anyway; only tissue and the plan need the MPP. A file
        # OpenSlide cannot describe (a plain image) is refused for the missing MPP alone.
        try:
            found = describe_file(path)
        except WsiSegError:
            raise exc from None
        return SlideInfo(found, False, f"{exc} (tissue and the run plan need it)")
    error = None
    if tissue.empty:
        # Bad input for a run (nothing to segment), said after the description so the user
        # still sees what the slide holds.
        error = str(NoTissueError("no tissue found (only glass at "
                                  f"{tissue.level0_px_per_px * slide.mpp:.3g} µm/px, "
                                  f"OD threshold {tissue.threshold_od:.3f})", path))
    return SlideInfo(d, True, error)


def describe(slide: Slide, tissue: TissueMask, target_mpp: float, tile_px: int, overlap: float,
             block_px: int, chunk_px: int) -> dict[str, Any]:
    """A JSON-ready description of a slide and its run plan."""
    w_px, h_px = slide.size_w(target_mpp)
    plan = plan_blocks(w_px, h_px, tile_px, step_for(tile_px, overlap), block_px, chunk_px,
                       tissue.keep_windows(slide.level0_px_per_px(target_mpp)))
    choice = slide.choose_level(target_mpp)
    return {
        "path": str(slide.path),
        "vendor": slide.vendor,
        "dimensions_px": list(slide.dimensions),
        "bounds_x0": list(slide.bounds_x0),
        "levels": [
            {"level": i, "size_px": list(slide.level_dimensions[i]),
             "downsample": round(slide.level_downsamples[i], 4),
             "mpp": round(slide.mpp * slide.level_downsamples[i], 4)}
            for i in range(slide.level_count)
        ],
        "mpp": slide.mpp,
        "objective_power": slide.objective_power,
        "associated_images": list(slide.associated_images),
        "tissue_fraction": round(tissue.fraction, 4),
        "tissue_mm2": round(tissue.area_mm2, 3),
        "tissue_regions": len(tissue.polygons),
        "plan": {
            "target_mpp": target_mpp, "read_level": choice.level,
            "resample": round(choice.scale, 4), "working_size_px": [w_px, h_px],
            "tile_px": tile_px, "overlap": overlap, "block_px": block_px,
            "blocks": len(plan.blocks), "blocks_total": plan.n_blocks_total,
            "tiles": plan.n_tiles, "tiles_total": plan.n_windows_total,
            "tile_predictions": plan.n_tile_predictions,
        },
    }


def format_text(d: dict[str, Any]) -> str:
    pl = d["plan"]
    lines = [
        f"{d['path']}",
        f"  vendor          {d['vendor']}",
        f"  level 0         {d['dimensions_px'][0]} x {d['dimensions_px'][1]} px"
        + (f"  (bounds {d['bounds_x0']})" if d["bounds_x0"][:2] != [0, 0] else ""),
        f"  mpp             {d['mpp']:g} µm/px"
        + (f", objective {d['objective_power']:g}x" if d["objective_power"] else ""),
        "  levels          " + ", ".join(
            f"{lv['level']}: {lv['size_px'][0]}x{lv['size_px'][1]} (x{lv['downsample']:g})"
            for lv in d["levels"]),
        f"  associated      {', '.join(d['associated_images']) or '-'}",
        f"  tissue          {100 * d['tissue_fraction']:.1f} % ({d['tissue_mm2']:.2f} mm², "
        f"{d['tissue_regions']} regions)",
        f"  plan @ {pl['target_mpp']:g} µm/px  level {pl['read_level']} x{pl['resample']:g}, "
        f"{pl['working_size_px'][0]} x {pl['working_size_px'][1]} px, "
        f"{pl['blocks']}/{pl['blocks_total']} blocks of {pl['block_px']} px, "
        f"{pl['tiles']}/{pl['tiles_total']} tiles of {pl['tile_px']} px "
        f"(overlap {pl['overlap']:g})",
    ]
    return "\n".join(lines)


def format_without_mpp(d: dict[str, Any]) -> str:
    """The part of :func:`format_text` that needs no MPP."""
    return "\n".join([
        f"{d['path']}",
        f"  vendor          {d['vendor']}",
        f"  level 0         {d['dimensions_px'][0]} x {d['dimensions_px'][1]} px",
        "  mpp             unknown (no MPP metadata: pass --mpp)",
        "  levels          " + ", ".join(
            f"{lv['level']}: {lv['size_px'][0]}x{lv['size_px'][1]} (x{lv['downsample']:g})"
            for lv in d["levels"]),
        f"  associated      {', '.join(d['associated_images']) or '-'}",
    ])


def draw_tissue_thumbnail(slide: Slide, tissue: TissueMask, max_px: int = 1024) -> np.ndarray:
    """BGR thumbnail with the tissue outline in green (for cv2.imwrite)."""
    rgb, scale = slide.thumbnail(max_px)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    rings = []
    for poly in tissue.polygons:
        for ring in (poly.exterior, *poly.interiors):
            xy = (np.asarray(ring.coords) - (slide.origin_x0, slide.origin_y0)) / scale
            rings.append(np.round(xy).astype(np.int32))
    cv2.polylines(bgr, rings, True, (0, 170, 0), max(1, max_px // 512), cv2.LINE_AA)
    return bgr
