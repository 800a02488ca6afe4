"""``wsi-seg info``: what a slide holds and what a run would do with it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from wsi_seg.core.errors import WsiSegError
from wsi_seg.orchestration.describe import PlanSettings, describe_path
from wsi_seg.orchestration.describe import describe as describe  # importable here, as before
from wsi_seg.stages.slide import find_slides


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
    p.add_argument("--config", type=Path, metavar="TOML",
                   help="a run's TOML file: its [storage] section says how s3:// slides are "
                   "reached (endpoint, region, profile); the other sections are not used here")
    p.add_argument("--thumbnail", type=Path, metavar="PNG",
                   help="write the thumbnail with the tissue outline (green) to this PNG "
                   "(with several slides: a directory, one <stem>.png each)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.cli.run import storage_of
    from wsi_seg.stages.object_store import use_storage

    with use_storage(storage_of(args.config)):
        return _describe(args)


def _describe(args: argparse.Namespace) -> int:
    slides = find_slides(args.slides)
    plan = PlanSettings(args.target_mpp, args.tile, args.overlap, args.block, args.chunk)
    failed = 0
    for path in slides:
        try:
            info = describe_path(path, plan, args.mpp, args.thumbnail, len(slides) > 1)
        except WsiSegError as exc:
            failed += 1
            print(f"wsi-seg: error: {exc}", file=sys.stderr)
            continue
        print(json.dumps(info.description) if args.json else info.text(), flush=True)
        if info.error is not None:
            failed += 1
            print(f"wsi-seg: error: {info.error}", file=sys.stderr)
    return 1 if failed else 0
