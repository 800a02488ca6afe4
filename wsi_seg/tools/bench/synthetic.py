"""Synthetic slides and random-weight models for benchmarks, made once into a cache folder.

Both are made in child processes (``python -c ... _child``): slides in parallel, the cores
shared between them; models on the CPU, so that this process never imports a framework.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench.config import UNetSpec


def _cli(*args: str) -> list[str]:
    """The command line of a child process running :func:`_child` with ``args``."""
    return [sys.executable, "-c", "import sys; from wsi_seg.tools.bench.synthetic import "
            "_child; _child(sys.argv[1], sys.argv[2])", *args]


def _child(what: str, arg: str) -> None:
    """Entry point of the bench's child processes (slide writer, model builder)."""
    a = json.loads(arg)
    if what == "slide":
        from wsi_seg.tools.synth import write_synthetic_slide

        write_synthetic_slide(a["path"], (a["size"], a["size"]), seed=a["seed"], mpp=a["mpp"],
                              threads=a["threads"])
    elif what == "unet":
        _build_unets(a)
    else:  # pragma: no cover - programming error
        raise SystemExit(f"unknown child {what!r}")


def _communicate(proc: subprocess.Popen[str], timeout_s: float | None) -> str | None:
    """Wait for ``proc`` at most ``timeout_s`` s; its stderr, or None when it was killed."""
    try:
        return proc.communicate(timeout=timeout_s)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None


def _tail(err: str | None) -> str:
    return " ".join((err or "").strip().splitlines()[-2:])[:300]


# -- slides -------------------------------------------------------------------------------------
def slide_name(size: int, seed: int) -> str:
    """The cached synthetic slide's name (no suffix)."""
    return f"synth-{size}-seed{seed}"


def _slide_record(path: Path, size: int, seed: int, seconds: float | None) -> dict[str, Any]:
    truth = path.with_name(f"{path.name[: -len(path.suffix)]}.tumor.geojson")
    return {"size_px": size, "seed": seed, "path": str(path),
            "truth": str(truth) if truth.is_file() else None,
            "file_mb": round(path.stat().st_size / 1e6, 1), "written_s": seconds}


def _complete(p: Path) -> bool:
    return p.is_file() and p.with_name(f"{p.stem}.tumor.geojson").is_file()


def _write_slides(todo: dict[tuple[int, int], Path], mpp: float, timeout_s: float | None,
                  say: Callable[[str], None]) -> dict[tuple[int, int], float]:
    """Write the slides ``(size, seed) -> path`` in parallel children; seconds until each was
    written (since they all started)."""
    from wsi_seg.orchestration.cluster import cpu_count

    threads = max(1, cpu_count() // len(todo))
    cache_dir = next(iter(todo.values())).parent
    say(f"bench: writing {len(todo)} synthetic slide(s) in parallel into {cache_dir} "
        f"({threads} thread(s) each); cached for later runs")
    t0 = time.perf_counter()
    procs = {k: subprocess.Popen(
        _cli("slide", json.dumps({"path": str(p), "size": k[0], "seed": k[1], "mpp": mpp,
                                  "threads": threads})),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k, p in todo.items()}
    secs, failed = {}, []
    for k, proc in procs.items():
        left = None if timeout_s is None else max(1.0, timeout_s - (time.perf_counter() - t0))
        err = _communicate(proc, left)
        if err is None:
            failed.append(f"{todo[k].name}: not written within {timeout_s:.0f} s")
            continue
        secs[k] = round(time.perf_counter() - t0, 1)
        if proc.returncode:
            failed.append(f"{todo[k].name}: exit {proc.returncode}: {_tail(err)}")
    if failed:
        raise WsiSegError("; ".join(failed))
    return secs


def ensure_slides(cache_dir: Path, wanted: Sequence[tuple[int, int]], mpp: float,
                  timeout_s: float | None, say: Callable[[str], None] = print
                  ) -> list[dict[str, Any]]:
    """The cached synthetic slides ``(size px, seed)`` at ``mpp`` µm/px with their truth;
    missing ones are written in parallel child processes (the cores shared between them),
    within ``timeout_s`` s (None: no limit)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {(size, seed): cache_dir / f"{slide_name(size, seed)}.svs" for size, seed in wanted}
    todo = {k: p for k, p in paths.items() if not _complete(p)}
    secs = _write_slides(todo, mpp, timeout_s, say) if todo else {}
    return [_slide_record(paths[k], k[0], k[1], secs.get(k)) for k in paths]


def ensure_slide(cache_dir: Path, size: int, seed: int, mpp: float = 0.5,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """The cached synthetic slide of this size (px) and seed (written on first use)."""
    return ensure_slides(cache_dir, [(size, seed)], mpp, None, say)[0]


# -- random-weight models -----------------------------------------------------------------------
def unet_path(cache_dir: Path, spec: UNetSpec, seed: int = 0) -> Path:
    """Where the random-weight UNet ``spec`` is cached."""
    return cache_dir / "models" / f"{spec.name}-seed{seed}.keras"


def start_unets(cache_dir: Path, specs: Sequence[UNetSpec], seed: int = 0
                ) -> tuple[list[Path], subprocess.Popen[str] | None]:
    """Start building the random-weight UNets ``specs`` that the cache lacks, in one child
    process on the CPU (this process never imports a framework; with TensorFlow installed the
    child uses it, whose variable set-up is much faster than JAX's op-by-op dispatch; a
    ``.keras`` file runs on every backend). Returns their paths and the child (None: cached)."""
    paths = [unet_path(cache_dir, spec, seed) for spec in specs]
    todo = [{"path": str(p), "seed": seed, **asdict(spec), "name": spec.name}
            for spec, p in zip(specs, paths, strict=True)
            if not (p.is_file() and p.with_suffix(".json").is_file())]
    if not todo:
        return paths, None
    env = dict(os.environ, JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="-1")
    if importlib.util.find_spec("tensorflow") is not None:
        env["KERAS_BACKEND"] = "tensorflow"
    proc = subprocess.Popen(_cli("unet", json.dumps(todo)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    return paths, proc


def finish_unets(paths: list[Path], proc: subprocess.Popen[str] | None, timeout_s: float
                 ) -> list[Path]:
    """Wait at most ``timeout_s`` s for :func:`start_unets`' child; its paths, or a one-line
    error."""
    if proc is None:
        return paths
    names = ", ".join(p.name for p in paths)
    err = _communicate(proc, timeout_s)
    if err is None:
        raise WsiSegError(f"building {names} took over {timeout_s:.0f} s")
    if proc.returncode or not all(p.is_file() for p in paths):
        raise WsiSegError(f"building {names} failed (exit {proc.returncode}): {_tail(err)}")
    return paths


def _build_unets(todo: list[dict[str, Any]]) -> None:
    from wsi_seg.stages.backends import import_tensorflow_quietly, keras_backend

    if keras_backend() == "tensorflow":
        import_tensorflow_quietly("cpu")
    for a in todo:
        _build_unet(a)


def _build_unet(a: dict[str, Any]) -> None:
    import keras

    from wsi_seg.stages.card import ModelCard, save_model
    from wsi_seg.stages.models import build_unet

    keras.utils.set_random_seed(a["seed"])
    model = build_unet(input_size_px=a["tile_px"], channels=3, depth=a["depth"],
                       base_filters=a["base_filters"], input_downsample=a["input_downsample"])
    card = ModelCard(
        kind="unet", input_size_px=a["tile_px"], channels=3, mpp=a["mpp"], name=a["name"],
        trained_on=f"nothing: random weights (keras seed {a['seed']}), a benchmark model",
        architecture={"builder": "build_unet", "input_size_px": a["tile_px"], "channels": 3,
                      "depth": a["depth"], "base_filters": a["base_filters"],
                      "input_downsample": a["input_downsample"]})
    if a.get("centred"):
        _centre_output(model, card, a["seed"])
    save_model(model, card, a["path"])


def _centre_output(model: Any, card: Any, seed: int) -> None:
    """Shift the "logits" layer's bias by minus the median logit over synthetic tissue tiles
    (four tiles at the card's mpp from the middle of a synthetic slide's tissue)."""
    from wsi_seg.stages.models import preprocess
    from wsi_seg.tools.synth import Renderer, SynthSpec, make_layout

    tile_px, mpp = card.window_px, card.mpp

    spec = SynthSpec(8000, 8000, seed=seed, mpp=0.25)
    layout = make_layout(spec)
    centre = layout.tissue.representative_point()
    d = mpp / spec.mpp
    x0, y0 = int(centre.x - tile_px * d), int(centre.y - tile_px * d)
    image = Renderer(spec, layout).render(x0, y0, 2 * tile_px, 2 * tile_px, d)
    tiles = np.stack([image[r : r + tile_px, c : c + tile_px]
                      for r in (0, tile_px) for c in (0, tile_px)])
    prob = np.asarray(model.predict(preprocess(tiles, card), verbose=0), np.float64)
    prob = np.clip(prob, 1e-6, 1 - 1e-6)
    median_logit = float(np.median(np.log(prob / (1 - prob))))
    layer = model.get_layer("logits")
    layer.bias.assign(np.asarray(layer.bias.numpy(), np.float32) - np.float32(median_logit))


def model_record(path: Path) -> dict[str, Any]:
    """A model's path and what its card says (name, tile px, µm/px, architecture)."""
    from wsi_seg.stages.card import read_card

    card = read_card(path)
    return {"path": str(path), "name": card.name, "tile_px": card.window_px,
            "mpp": card.mpp, "architecture": card.architecture}
