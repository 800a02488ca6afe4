"""``wsi-seg synth``: write a synthetic slide with its exact tumour ground truth."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.synth import write_synthetic_slide


def _size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size must look like 8000x6000, got {text!r}")
    return int(m.group(1)), int(m.group(2))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write a synthetic H&E slide (SVS or tiled TIFF) and its tumour GeoJSON",
        description="Write a pyramidal synthetic H&E-like slide that OpenSlide opens, with "
        "tissue islands, lymphocyte clusters and tumour regions (crowded, large, vesicular "
        "nuclei), and its exact tumour ground truth beside it as QuPath GeoJSON "
        "(<stem>.tumor.geojson, level-0 pixels). The same seed writes the same slide. "
        "Memory stays at a few tiles whatever the size.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("out", type=Path, metavar="OUT", help="slide file to write (.svs or .tif)")
    p.add_argument("--size", type=_size, default=(8000, 8000), metavar="WxH",
                   help="level-0 size in pixels")
    p.add_argument("--seed", type=int, default=0, help="layout and texture seed")
    p.add_argument("--format", choices=("svs", "tiff"), help="default: from the suffix")
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 µm/px")
    p.add_argument("--level-factor", type=int, choices=(2, 4), default=2,
                   help="downsample between pyramid levels")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not 0.05 <= args.mpp <= 20:
        raise WsiSegError(f"--mpp {args.mpp:g} is outside 0.05-20 µm/px", args.out)
    try:
        res = write_synthetic_slide(args.out, args.size, args.seed, args.format, args.mpp,
                                    args.level_factor, args.quality, progress=True)
    except ValueError as exc:
        raise WsiSegError(str(exc), args.out) from None
    except OSError as exc:
        raise WsiSegError(f"cannot write ({exc.strerror or exc})", args.out) from None
    mb = res.slide_path.stat().st_size / 1e6
    print(f"wrote {res.slide_path} ({args.size[0]}x{args.size[1]} px, {mb:.1f} MB, "
          f"{res.seconds:.1f} s) and {res.truth_path} ({len(res.tumour.geoms)} tumour regions)")
    return 0
