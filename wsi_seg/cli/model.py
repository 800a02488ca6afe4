"""``wsi-seg model import`` and ``wsi-seg model show``: bring your own Keras model."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_seg.core.errors import WsiSegError, printable
from wsi_seg.stages.card import NORMALISATIONS, OUTPUTS

IMPORT_EPILOG = """\
examples:
  # a Keras 2 UNet (tf.keras model.save("unet.h5")), one sigmoid channel, trained at 10x
  wsi-seg model import unet.h5 --out my_unet.keras --mpp 1.0 --normalisation divide_255

  # a Keras 2 architecture JSON plus save_weights(), 5-class softmax (BCSS-style), ImageNet
  wsi-seg model import arch.json --weights w.h5 --out bcss.keras --mpp 0.5 \\
      --normalisation imagenet --classes Background,Tumor,Stroma,"Immune cells",Necrosis

  # a fully convolutional model (None x None input) run on 512 px windows
  wsi-seg model import fcn.keras --out fcn_512.keras --mpp 1.0 --normalisation minus1_1 \\
      --tile 512

then: wsi-seg run slides/ --out results/ --model my_unet.keras
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="import a Keras model from elsewhere; show a model card",
                       description="Bring your own model: turn a Keras 2 or 3 file into a "
                       "wsi-seg model (MODEL.keras plus its MODEL.json card), or show what a "
                       "run will do with a model.")
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    _register_import(verbs)
    _register_show(verbs)
    p.set_defaults(handler=lambda args: _no_verb(p))


def _no_verb(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return 2


def _csv(text: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in text.split(",") if s.strip())


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(s) for s in _csv(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got "
                                         f"{text!r}") from None


def _colors(text: str) -> tuple[tuple[int, int, int], ...]:
    """``C80000,96C896,...`` (hex RRGGBB per class)."""
    out = []
    for item in _csv(text):
        h = item.removeprefix("#")
        if len(h) != 6:
            raise argparse.ArgumentTypeError(f"colour {item!r} is not RRGGBB hex")
        try:
            out.append((int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"colour {item!r} is not RRGGBB hex") from None
    return tuple(out)


def _register_import(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser(
        "import", help="make a wsi-seg model from a Keras 2 or 3 file",
        description="Read a Keras 3 .keras file, a Keras 2 full-model .h5, or a Keras 2 "
        "architecture .json with its weights .h5; work out the input size, channels and "
        "output layout from the model; take what only you know (µm per pixel, normalisation, "
        "class names, which classes are tumour); write OUT (.keras) and its card OUT.json; "
        "load them back as a run does, run one forward pass on a synthetic tile, and print "
        "what a run will do. Only standard Keras layers (and keras-hub's, when installed) are "
        "accepted: files with Lambda layers or custom classes are refused, since loading them "
        "runs arbitrary code.",
        epilog=IMPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", type=Path, metavar="SRC", help="M.keras, M.h5 or ARCH.json")
    p.add_argument("--weights", type=Path, metavar="W.h5",
                   help="weights for an architecture .json (Keras 2 save_weights)")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.keras",
                   help="the wsi-seg model to write (its card goes beside it as MODEL.json)")
    p.add_argument("--mpp", type=float, required=True, metavar="UM_PER_PX",
                   help="resolution the model was trained at, µm per pixel (e.g. 0.25 at "
                   "40x, 0.5 at 20x, 1.0 at 10x)")
    p.add_argument("--normalisation", required=True, choices=NORMALISATIONS,
                   help="how the model was fed: divide_255 (0..1), minus1_1 (-1..1), imagenet "
                   "(per-channel ImageNet mean/std of x/255: most pretrained encoders), "
                   "mean_std (give --mean and --std)")
    p.add_argument("--mean", type=_floats, metavar="M,M,M",
                   help="per-channel mean of x/255 (with --normalisation mean_std)")
    p.add_argument("--std", type=_floats, metavar="S,S,S",
                   help="per-channel std of x/255 (with --normalisation mean_std)")
    p.add_argument("--classes", type=_csv, metavar="A,B,...",
                   help="names of the output channels, in order, as QuPath classes (required "
                   "for 2 or more channels; e.g. Background,Tumor)")
    p.add_argument("--tumour-classes", type=_csv, metavar="A,...",
                   help="classes that are tumour; their probabilities add up to the tumour "
                   "probability (default: the names that read as tumour: Tumor, carcinoma, "
                   "...)")
    p.add_argument("--background-classes", type=_csv, metavar="A,...",
                   help="classes that get no polygons (default: those named Background, bg, "
                   "glass or ignore)")
    p.add_argument("--class-colors", type=_colors, metavar="RRGGBB,...",
                   help="one hex colour per class (default: QuPath's own for its class names, "
                   "then a palette)")
    p.add_argument("--output", choices=OUTPUTS,
                   help="what the last layer emits (default: read from the model): sigmoid or "
                   "softmax probabilities, or logits (a sigmoid/softmax is then applied at run "
                   "time)")
    p.add_argument("--kind", choices=("unet", "patch"),
                   help="checked against the output (default: unet for a dense mask, patch "
                   "for one score per tile)")
    p.add_argument("--tile", type=int, metavar="PX",
                   help="window for a model with an undefined (None x None) input, a multiple "
                   "of its downsampling (default 256, rounded up); a run's --tile overrides it")
    p.add_argument("--threshold", type=float, default=0.5,
                   help="probability at or above which a pixel is tumour (default 0.5)")
    p.add_argument("--name", default="", help="short model name (default: the file's stem)")
    p.add_argument("--trained-on", default="", metavar="TEXT",
                   help="which data trained the model (recorded in the card)")
    p.add_argument("--float32-only", action="store_true",
                   help="never run this model in reduced precision (mixed precision is "
                   "ignored for it)")
    p.set_defaults(handler=run_import)


def _register_show(verbs: argparse._SubParsersAction) -> None:
    p = verbs.add_parser("show", help="what a run will do with a model (reads its card)",
                         description="Check a wsi-seg model file and its card (no framework "
                         "is loaded) and print what a run will do with it.")
    p.add_argument("model", type=Path, metavar="MODEL.keras",
                   help="a model file, or bundled:unet / bundled:patch")
    p.add_argument("--json", action="store_true", help="print the card as JSON")
    p.set_defaults(handler=run_show)


def run_import(args: argparse.Namespace) -> int:
    from wsi_seg.tools.model_import import ImportSpec, describe_card, import_model

    spec = ImportSpec(
        mpp=args.mpp, normalisation=args.normalisation, mean=args.mean, std=args.std,
        classes=args.classes, tumour_classes=args.tumour_classes,
        background_classes=args.background_classes, class_colors=args.class_colors,
        output=args.output, kind=args.kind, tile_px=args.tile, threshold=args.threshold,
        name=args.name, trained_on=args.trained_on,
        precision="float32" if args.float32_only else None)
    done = import_model(args.src, args.out, spec, weights=args.weights)
    lo, hi = done.probe_tumour_range
    print(f"wrote {printable(done.path)} and its card {printable(done.path.with_suffix('.json'))}"
          f" (from {printable(done.source)})")
    print(describe_card(done.card))
    print(f"  checked    loaded back safely; one forward pass on a synthetic "
          f"{done.card.window_px} px tile: output {done.probe_shape}, tumour probability "
          f"{lo:.3f}..{hi:.3f}")
    print(f"run it:      wsi-seg run SLIDES --out RESULTS --model {printable(done.path)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from wsi_seg.cli.run import model_path
    from wsi_seg.stages.card import verify_model_file
    from wsi_seg.tools.model_import import describe_card

    path = model_path(str(args.model))
    if path is None:
        raise WsiSegError("no model given")
    card = verify_model_file(path)
    print(card.to_json().rstrip() if args.json else describe_card(card, path))
    return 0
