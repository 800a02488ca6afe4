"""What per-class outputs cost: a 5-class softmax UNet against the same network with a 2-class
head (the tumour probability only), side by side on the same slides, alternating.

    .venv/bin/python benchmarks/classes_cost.py [--sizes 6000,12000] [--rounds 2]
        [--work /tmp/wsi-seg-classes] [--out benchmarks/results/<date>-classes]

Both models are the bundled UNet's architecture (4 levels, 16-128 filters, 256 px at
1 µm/px) with random weights and a softmax head of 5 or 2 channels whose bias puts ~40 % of
pixels in a tumour-like class, so every class has polygons to trace. Each run is a whole
``wsi-seg run`` in a fresh process:

* ``local``: the default local cluster (as a user runs it); figures from ``report.json``:
  blocks phase, finishing, and the stage thread-seconds (``blend``, ``write``, ``pyramid``,
  ``vectorize``/``vectorize_classes``, ``geojson``/``geojson_classes``);
* ``threads`` (``--scheduler threads``): everything in one process, whose peak RSS
  (``getrusage(RUSAGE_SELF)`` at its end) bounds the worker's memory; run at two slide sizes
  to show it does not grow with the slide.

Writes ``classes_cost.json`` and ``classes_cost.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLASSES5 = ("Background", "Tumor", "Stroma", "Immune cells", "Necrosis")
CLASSES2 = ("Background", "Tumor")


def make_model(path: Path, classes: tuple[str, ...]) -> Path:
    """The bundled UNet's body with a softmax head over ``classes`` (random, seeded)."""
    import keras
    import numpy as np

    from wsi_seg.stages.card import ModelCard, save_model
    from wsi_seg.stages.models import build_unet

    keras.utils.set_random_seed(7)
    body = build_unet(256, 3, depth=4, base_filters=16)
    feats = body.get_layer("dec0_relu2").output
    bias = np.zeros(len(classes), np.float32)
    bias[1] = 0.3  # the tumour class wins a good share of pixels
    logits = keras.layers.Conv2D(len(classes), 1, name="class_logits",
                                 bias_initializer=keras.initializers.Constant(bias))(feats)
    out = keras.layers.Activation("softmax", dtype="float32", name="probs")(logits)
    card = ModelCard("unet", 256, 3, 1.0, output="softmax", classes=classes,
                     tumour_classes=("Tumor",), background_classes=("Background",),
                     name=f"unet-{len(classes)}class", trained_on="random weights (benchmark)")
    save_model(keras.Model(body.input, out), card, path)
    return path


#: ``wsi-seg run`` in a child that writes its own peak RSS (KiB) to the file named last.
_CHILD = ("import resource, sys; from wsi_seg.cli import main; rc = main(sys.argv[1:-1]); "
          "open(sys.argv[-1], 'w').write(str(resource.getrusage(resource.RUSAGE_SELF)"
          ".ru_maxrss)); sys.exit(rc)")


def run_once(slide: Path, model: Path, out: Path, scheduler: str | None,
             extra: list[str]) -> dict[str, object]:
    peak_file = out.with_suffix(".peak")
    cmd = [sys.executable, "-c", _CHILD, "run", str(slide), "--out", str(out), "--model",
           str(model), "--quiet", "--overwrite", *extra]
    if scheduler:
        cmd += ["--scheduler", scheduler]
    t0 = time.perf_counter()
    subprocess.run([*cmd, str(peak_file)], check=True)
    wall = time.perf_counter() - t0
    peak_kib = int(peak_file.read_text())
    report = json.loads(next(out.glob("*/report.json")).read_text())
    return {"command_s": round(wall, 2), "slide_s": report["wall_s"],
            "blocks_s": report["blocks_wall_s"], "finish_s": report["finish_s"],
            "tiles": report["tiles"], "stage_s": report["stage_s"],
            "classes": [(c["name"], c["area_mm2"], c["regions"]) for c in report["classes"]],
            # The client's process: with --scheduler threads it is also the only worker.
            "peak_rss_mib": round(peak_kib / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="6000,12000")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--modes", default="local,threads",
                    help="local (default cluster, stage times) and/or threads (peak memory)")
    ap.add_argument("--block", type=int, default=None,
                    help="--block of the runs (e.g. 2048, so that both sizes keep every "
                    "task thread on a full block and peaks compare like with like)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/wsi-seg-classes"))
    ap.add_argument("--out", type=Path,
                    default=Path("benchmarks/results") / f"{time.strftime('%Y-%m-%d')}-classes")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    models = {}
    for n, classes in ((5, CLASSES5), (2, CLASSES2)):
        path = args.work / f"unet{n}.keras"
        models[n] = path if path.exists() else make_model(path, classes)
    sizes = [int(s) for s in args.sizes.split(",")]
    slides = {}
    for size in sizes:
        slide = args.work / f"synth-{size}.svs"
        if not slide.exists():
            subprocess.run([sys.executable, "-c", "import sys; from wsi_seg.cli import main; "
                            "sys.exit(main(sys.argv[1:]))", "synth", str(slide), "--size",
                            f"{size}x{size}", "--seed", "31"], check=True)
        slides[size] = slide
    runs = []
    extra = [] if args.block is None else ["--block", str(args.block)]
    for mode in args.modes.split(","):
        for size in (sizes if mode == "threads" else sizes[:1]):
            for rnd in range(args.rounds):
                order = (5, 2) if rnd % 2 == 0 else (2, 5)
                for n in order:
                    out = args.work / f"out-{mode}-{size}-{n}"
                    r = run_once(slides[size], models[n], out,
                                 "threads" if mode == "threads" else None, extra)
                    r.update(mode=mode, size=size, n_classes=n, round=rnd, block=args.block,
                             load=os.getloadavg()[0])
                    runs.append(r)
                    print(json.dumps({k: r[k] for k in ("mode", "size", "n_classes", "round",
                                                        "slide_s", "blocks_s", "finish_s",
                                                        "peak_rss_mib")}), flush=True)
    record = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()},
              "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "runs": runs}
    (args.out / "classes_cost.json").write_text(json.dumps(record, indent=1) + "\n")
    (args.out / "classes_cost.md").write_text(summary(runs, sizes) + "\n")
    print(summary(runs, sizes))


def _med(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def summary(runs: list[dict[str, object]], sizes: list[int]) -> str:
    local = [r for r in runs if r["mode"] == "local"]
    lines = []
    if local:
        lines = [f"Local cluster, {sizes[0]} px slide (median of rounds; seconds; stage rows "
                 "are thread-seconds)", "", "| figure | 2-class head | 5-class (4 class maps) |",
                 "|---|---:|---:|"]
    keys = ["slide_s", "blocks_s", "finish_s"]
    stages = ["predict", "blend", "write", "pyramid", "vectorize", "vectorize_classes",
              "geojson", "geojson_classes", "overlay"]
    for key in keys if local else []:
        row = [_med([r[key] for r in local if r["n_classes"] == n]) for n in (2, 5)]
        lines.append(f"| {key} | {row[0]} | {row[1]} |")
    for st in stages if local else []:
        row = [_med([r["stage_s"].get(st, 0.0) for r in local if r["n_classes"] == n])
               for n in (2, 5)]
        lines.append(f"| stage {st} | {row[0]} | {row[1]} |")
    block = next((r["block"] for r in runs if r["mode"] == "threads"), None)
    lines += ["", f"Peak RSS of the one process (`--scheduler threads`, block "
              f"{block or 'default'}), MiB (the larger of the rounds)", "",
              "| slide px | 2-class | 5-class |", "|---:|---:|---:|"]
    for size in sizes:
        row = []
        for n in (2, 5):
            peaks = [r["peak_rss_mib"] for r in runs if r["mode"] == "threads"
                     and r["size"] == size and r["n_classes"] == n]
            row.append(max(peaks) if peaks else "-")
        lines.append(f"| {size} | {row[0]} | {row[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
