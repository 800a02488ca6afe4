"""``wsi-seg info``: what a slide holds and what a run would do with it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from wsi_seg.core.errors import NoTissueError, WsiSegError
from wsi_seg.stages.slide import MissingMppError, Slide, describe_file, find_slides, open_slide
from wsi_seg.stages.tiling import plan_blocks, step_for
from wsi_seg.stages.tissue import TissueMask, find_tissue


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info",
        help="describe slides: levels, MPP, tissue, and the blocks and tiles of a run",
        description="Describe slides: vendor, level-0 size, pyramid levels and downsamples, "
        "microns per pixel, objective power, associated images, tissue fraction, and how many "
        "blocks and tiles a run at --target-mpp with --tile/--overlap would process. "
        "Writes nothing unless --thumbnail is given.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files or directories")
    p.add_argument("--mpp", type=float, help="level-0 µm/px, overriding the slide's metadata")
    p.add_argument("--target-mpp", type=float, default=1.0,
                   help="working resolution of the planned run, µm/px (the model's MPP)")
    p.add_argument("--tile", type=int, default=256, help="window edge at --target-mpp, px")
    p.add_argument("--overlap", type=float, default=0.25, help="window overlap fraction")
    p.add_argument("--block", type=int, default=4096, help="block edge at --target-mpp, px")
    p.add_argument("--chunk", type=int, default=1024, help="mosaic chunk edge, px")
    p.add_argument("--json", action="store_true", help="print one JSON object per slide")
    p.add_argument("--thumbnail", type=Path, metavar="PNG",
                   help="write the thumbnail with the tissue outline (green) to this PNG "
                   "(with several slides: a directory, one <stem>.png each)")
    p.set_defaults(handler=run)


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


def run(args: argparse.Namespace) -> int:
    slides = find_slides(args.slides)
    failed = 0
    for path in slides:
        try:
            with open_slide(path, mpp=args.mpp) as slide:
                tissue = find_tissue(slide)
                d = describe(slide, tissue, args.target_mpp, args.tile, args.overlap,
                             args.block, args.chunk)
                if args.thumbnail:
                    out = args.thumbnail
                    if len(slides) > 1:
                        out.mkdir(parents=True, exist_ok=True)
                        out = out / f"{slide.stem}.png"
                    if not cv2.imwrite(str(out), draw_tissue_thumbnail(slide, tissue)):
                        raise WsiSegError("cannot write thumbnail", out)
                    d["thumbnail"] = str(out)
        except MissingMppError as exc:
            # Describe what the file holds anyway; only tissue and the plan need the MPP.
            failed += 1
            print(format_without_mpp(describe_file(path)) if not args.json
                  else json.dumps(describe_file(path)), flush=True)
            print(f"wsi-seg: error: {exc} (tissue and the run plan need it)", file=sys.stderr)
            continue
        except WsiSegError as exc:
            failed += 1
            print(f"wsi-seg: error: {exc}", file=sys.stderr)
            continue
        print(json.dumps(d) if args.json else format_text(d), flush=True)
        if tissue.empty:
            # Bad input for a run (nothing to segment): say so and exit non-zero, after the
            # description so the user still sees what the slide holds.
            failed += 1
            err = NoTissueError("no tissue found (only glass at "
                                f"{tissue.level0_px_per_px * slide.mpp:.3g} µm/px, "
                                f"OD threshold {tissue.threshold_od:.3f})", path)
            print(f"wsi-seg: error: {err}", file=sys.stderr)
    return 1 if failed else 0
