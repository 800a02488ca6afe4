"""The ``wsi-seg`` command: a thin shell over the library.

Each subcommand lives in its own module exposing ``register(subparsers)``; the module's handler
receives the parsed arguments and returns an exit status. Errors from bad input
(:class:`wsi_seg.core.errors.WsiSegError`) and bad command lines print one line and exit 2, never a
traceback; text from the user (file names, values) is printed with control characters escaped.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError, printable

# Order is the order shown by --help.
_COMMANDS = ("run", "info", "model", "synth", "extract", "train", "evaluate", "score", "bench",
             "demo")

EPILOG = """\
examples:
  wsi-seg demo                                   make a sample slide and run everything on it
  wsi-seg info slides/*.svs                      levels, MPP, tissue and work plan per slide
  wsi-seg synth sample.svs --size 8000x8000 --seed 1
  wsi-seg run slides/ --out results/             tumour mosaic + GeoJSON for every slide
  wsi-seg run slides/ --out results/ --scheduler tcp://10.0.0.5:8786
  wsi-seg score results/x/mask.zarr truth.geojson --slide x.svs

Coordinates are level-0 pixels; resolutions are microns per pixel (mpp).
"""


class OneLineParser(argparse.ArgumentParser):
    """A parser whose errors are one line (the usage block would bury the cause), like every
    other error of the command. Subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {printable(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="wsi-seg",
        description="Find tumour in whole-slide images: OpenSlide reading by microns per pixel, "
        "Dask-scheduled TensorFlow inference over overlapping tiles, seamless OME-Zarr "
        "probability mosaics and QuPath-ready GeoJSON polygons.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsi-seg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"wsi_seg.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"wsi_seg.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except WsiSegError as exc:
        print(f"wsi-seg: error: {printable(exc)}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("wsi-seg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
