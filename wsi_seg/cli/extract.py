"""``wsi-seg extract``: training tiles or IDC patches from a slide and its annotation."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EPILOG = """\
layouts:
  unet  OUT/images/<name>_x<XW>_y<YW>.png + OUT/masks/<same>.png (0/255)
  idc   OUT/<name>/<0|1>/<name>_idx5_x<XW>_y<YW>_class<C>.png
XW, YW: tile corner in pixels at --mpp. Several slides can share one OUT.

examples:
  wsi-seg synth s1.svs --size 6000x6000 --seed 1
  wsi-seg extract s1.svs --truth s1.tumor.geojson --out train/ --mpp 1.0 --layout unet
  wsi-seg extract s1.svs --truth s1.tumor.geojson --out idc/ --mpp 4.0 --layout idc
"""


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "extract", help="cut training tiles (UNet) or IDC patches from a slide",
        description="Cut a slide, read at --mpp, into tiles on tissue and write them with "
        "their tumour masks (unet layout) or as class-labelled patches (idc layout), ready for "
        "wsi-seg train.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("slide", type=Path, help="slide file (anything OpenSlide opens)")
    p.add_argument("--truth", type=Path, required=True, metavar="GEOJSON",
                   help="tumour annotation: QuPath GeoJSON, ASAP or ImageScope XML (level-0 px)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    p.add_argument("--mpp", type=float, required=True,
                   help="resolution to read at, µm/px (the model's; IDC patches: 4.0)")
    p.add_argument("--layout", choices=("unet", "idc"), default="unet",
                   help="unet: images/ + masks/ (default); idc: <patient>/<0|1>/ patches")
    p.add_argument("--tile", type=int, default=None,
                   help="tile side, px at --mpp (default 256 for unet, 50 for idc)")
    p.add_argument("--stride", type=int, default=None,
                   help="grid step, px at --mpp, as run's --stride (default: the tile side; "
                   "the last tile of a row or column is moved back inside the slide)")
    p.add_argument("--min-tissue", type=float, default=0.5,
                   help="keep tiles with at least this tissue fraction, 0..1 (default 0.5)")
    p.add_argument("--tumour-fraction", type=float, default=0.5,
                   help="idc: label a patch 1 when at least this fraction is tumour (0.5)")
    p.add_argument("--max-tiles", type=int, default=None,
                   help="keep at most this many tiles, drawn at random (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed for --max-tiles (default 0)")
    p.add_argument("--name", default=None,
                   help="file-name prefix and IDC patient id (default: the slide's stem)")
    p.add_argument("--slide-mpp", type=float, default=None,
                   help="level-0 µm/px of a slide without MPP metadata")
    p.add_argument("--classes", default=None, metavar="A,B",
                   help="annotation classes that count as tumour (default: tumour-like names)")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from wsi_seg.training.extract import ExtractOptions, extract_training_data

    classes = None
    if args.classes:
        classes = tuple(c.strip() for c in args.classes.split(",") if c.strip())
    opts = ExtractOptions(
        mpp=args.mpp, layout=args.layout, tile_px=args.tile, stride_px=args.stride,
        min_tissue=args.min_tissue, tumour_fraction=args.tumour_fraction,
        max_tiles=args.max_tiles, seed=args.seed, name=args.name, slide_mpp=args.slide_mpp,
        classes=classes,
    )
    r = extract_training_data(args.slide, args.truth, args.out, opts)
    kind = "tumour tiles" if r.layout == "unet" else "class-1 patches"
    print(f"wrote {r.tiles} {r.tile_px} px tiles at {r.mpp:g} µm/px to {r.out} "
          f"({r.tumour_tiles} {kind}, {r.tumour_px_fraction:.1%} tumour pixels) "
          f"in {r.seconds:.1f} s")
    return 0
