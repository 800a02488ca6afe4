"""Device profiles of ``wsi-seg bench``: a GPU workstation, and a simulated accelerator.

Both profiles write ``bench.json`` and ``bench.md`` into the output folder after **every** step
(a run that is killed leaves what it measured so far), and every step runs under a time limit
(``step_timeout_s``): a step that overruns is recorded as timed out, its cluster is replaced
(and processes it started itself are ended), and the next step goes on.

``gpu`` (``wsi-seg bench --profile gpu``): a folder of slides on a GPU workstation, in one run.

* slides: the given ones, else four synthetic 20,000 x 20,000 px slides (``wsi-seg synth
  --seed 11..14``), written in parallel child processes and cached;
* ``cold``: ``run_slides`` exactly as ``wsi-seg run`` does it, with a fresh default local
  cluster, so the worker start-up (framework import, model load, compile) is inside the wall:
  tiles/s over the whole wall and after the start-up line of ``run.json``;
* ``bundled`` and ``heavy`` (the bundled UNet; a random-weight UNet of the seeds' size, 4
  levels of 32-256 filters on 512 px tiles, built into the cache at bench time), each on one
  warm cluster sized as ``wsi-seg run`` sizes it, in interleaved rounds:

  - ``e2e``: ``run_slides`` over all slides; tiles/s over the run's wall and over the blocks
    phase (all slides' blocks are submitted at once, so the phase is the longest slide's);
  - ``model``: model-only: full batches of random uint8 tiles submitted to the workers' own
    :class:`~wsi_seg.stages.infer.Predictor` from as many threads per worker as a run has task
    threads; predictions/s over the callers' span, and as distinct tiles of this plan;
  - ``read``: read-only: every block's kept-window box read with
    :meth:`~wsi_seg.stages.slide.Slide.read_w` as block tasks on the same workers and threads;
  - the device's busy share during the blocks phase: ``nvidia-smi`` utilisation sampled every
    ``sample_period_s`` (mean utilisation / 100), plus the predictor's own batch statistics;
  - ratio = e2e tiles/s / min(model-only limit, read-only tiles/s);
  - stage seconds summed over slides and the start-up line of ``run.json``;
* ``noisy``: a random-weight UNet of 4 levels x 16-128 filters (a speckled probability map) on
  a 16,000 px synthetic slide: vectorizing seconds / run seconds (goal < 10 %), and how
  speckled the mosaic was.

They run in that order after the slides and models (bundled, heavy, cold, noisy: the warm
figures first). With ``simulate_batch_s`` set the gpu profile is a dry run: every model runs
on the simulated device (tests; a machine without a GPU or framework).

``simulated`` (``wsi-seg bench --profile simulated``): does the CPU side keep a device busy?
No model runs: :class:`~wsi_seg.stages.backends.SimulatedEngine` holds one device lock for ``S``
seconds per batch. One worker (one "card") with one task thread more than cores, as on a GPU
workstation. First the CPU side is measured (a run with a tiny ``S``: seconds of blocks phase
per batch of windows); then ``S`` is set ``simulate_margin`` times slower than that, so the
device is the limit, and the runs report the device's busy share = device busy seconds /
blocks-phase wall (goal >= 90 %), and the work share = the device time the windows need in
full batches / that wall (the busy share without padded slots). ``benchmarks/simulated_device.py``
measures the design before the predictor rework (commit a051260) the same way.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench import (
    Bench,
    _jsonable,
    _read_only_task,
    machine_info,
    markdown_end,
    plan_of,
    rotate,
    slide_name,
    summary,
)

log = logging.getLogger(__name__)

FORMAT = "wsi-seg-bench-device/1"
PROFILES = ("gpu", "simulated")
#: Steps of the gpu profile (the slides and models they need are made first, each a step too).
GPU_STEPS = ("cold", "bundled", "heavy", "noisy")
SIM_STEPS = ("simulated",)
#: What one round of a model's entry measures, interleaved (the order rotates every round).
MEASURES = ("e2e", "model", "read")
NOT_SAMPLED = "not sampled: no nvidia-smi"
#: How often the simulated profile samples the worker's device totals, s.
POLL_S = 0.01


@dataclass(frozen=True)
class UNetSpec:
    """A random-weight UNet built at bench time (:func:`wsi_seg.stages.models.build_unet`)."""

    tile_px: int
    depth: int
    base_filters: int
    input_downsample: int = 1
    mpp: float = 1.0
    #: Shift the output bias so that half of the tissue pixels of a synthetic slide score
    #: >= 0.5: the map then speckles at the percolation point, the worst case for polygons
    #: (left alone, a random head's bias puts nearly every pixel on one side).
    centred: bool = False

    @property
    def name(self) -> str:
        ds = f"-ds{self.input_downsample}" if self.input_downsample > 1 else ""
        centred = "-centred" if self.centred else ""
        return f"unet-{self.tile_px}px-d{self.depth}-f{self.base_filters}{ds}-random{centred}"

    @property
    def filters(self) -> str:
        return f"{self.base_filters}-{self.base_filters * 2 ** (self.depth - 1)}"

    @classmethod
    def parse(cls, text: str) -> UNetSpec:
        """``TILE,DEPTH,FILTERS`` (e.g. ``512,4,32``)."""
        try:
            tile, depth, base = (int(t) for t in text.split(","))
        except ValueError:
            raise ValueError(f"expected TILE,DEPTH,FILTERS (e.g. 512,4,32), got {text!r}"
                             ) from None
        if tile < 8 or depth < 2 or base < 1 or tile % 2 ** (depth - 1):
            raise ValueError(f"not a UNet: {text!r} (tile divisible by 2^(depth-1))")
        return cls(tile, depth, base)


#: The seeds' size: 4 levels of 32-256 filters on 512 px tiles.
HEAVY = UNetSpec(512, 4, 32)
#: An untrained model's speckled map: 4 levels of 16-128 filters, centred on 0.5.
NOISY = UNetSpec(256, 4, 16, centred=True)


@dataclass(frozen=True)
class DeviceBenchConfig:
    """What a device profile measures and where.

    Attributes:
        out_dir: ``bench.json`` and ``bench.md``.
        cache_dir: synthetic slides and bench models, reused.
        profile: ``gpu`` or ``simulated``.
        slides: slides to run; empty: synthetic ones of ``synth_size`` and ``synth_seeds``.
        synth_size, synth_seeds, slide_mpp: the synthetic slides.
        model_path: the main model (None: the bundled UNet).
        batch_size: predictor batch (None: the device's default; simulated: 32).
        workers, threads_per_worker: local cluster (None: as ``wsi-seg run`` sizes it; the
            simulated profile: one worker with cores + 1 task threads, as a GPU worker).
        repeats: interleaved rounds.
        model_seconds: length of one model-only measurement.
        step_timeout_s: limit on one step or measurement.
        sample_period_s: ``nvidia-smi`` sampling period.
        heavy, noisy: the random-weight UNets of the ``heavy`` and ``noisy`` steps.
        noisy_size, noisy_seed: the noisy step's synthetic slide.
        steps: which of :data:`GPU_STEPS` (or :data:`SIM_STEPS`) to run.
        simulate_batch_s: the simulated device's seconds per batch (None: calibrated).
        simulate_margin: calibrated ``S`` = margin x the CPU side's seconds per batch.
        calibrate_batch_s: ``S`` of the calibration run (a device that is never the limit).
        scratch_dir: the runs' outputs (default ``out_dir/runs``), removed at the end.
        keep_outputs: keep the runs' outputs.
    """

    out_dir: Path
    cache_dir: Path
    profile: str = "gpu"
    slides: tuple[Path, ...] = ()
    synth_size: int = 20000
    synth_seeds: tuple[int, ...] = (11, 12, 13, 14)
    slide_mpp: float = 0.5
    model_path: Path | None = None
    batch_size: int | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    repeats: int = 2
    model_seconds: float = 10.0
    step_timeout_s: float = 300.0
    sample_period_s: float = 0.15
    heavy: UNetSpec = HEAVY
    noisy: UNetSpec = NOISY
    noisy_size: int = 16000
    noisy_seed: int = 21
    steps: tuple[str, ...] = GPU_STEPS
    simulate_batch_s: float | None = None
    simulate_margin: float = 1.5
    calibrate_batch_s: float = 0.001
    scratch_dir: Path | None = None
    keep_outputs: bool = False

    def main_model(self) -> Path:
        if self.model_path is not None:
            return Path(self.model_path)
        from wsi_seg.stages.card import bundled_model_path

        return bundled_model_path("unet")


def simulated_config(out_dir: Path, cache_dir: Path, **changes: Any) -> DeviceBenchConfig:
    """The simulated profile's defaults: four 10,000 px slides (seeds 11-14), batch 32."""
    base = DeviceBenchConfig(out_dir=out_dir, cache_dir=cache_dir, profile="simulated",
                             synth_size=10000, synth_seeds=(11, 12, 13, 14), batch_size=32,
                             steps=SIM_STEPS, repeats=3)
    return replace(base, **changes)


# -- slides and models ------------------------------------------------------------------------
def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "import sys; from wsi_seg.tools.bench_device import _child; "
            "_child(sys.argv[1], sys.argv[2])", *args]


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


def _slide_record(path: Path, size: int, seed: int, seconds: float | None) -> dict[str, Any]:
    truth = path.with_name(f"{path.name[: -len(path.suffix)]}.tumor.geojson")
    return {"size_px": size, "seed": seed, "path": str(path),
            "truth": str(truth) if truth.is_file() else None,
            "file_mb": round(path.stat().st_size / 1e6, 1), "written_s": seconds}


def ensure_slides(cache_dir: Path, wanted: Sequence[tuple[int, int]], mpp: float,
                  timeout_s: float, say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """The cached synthetic slides ``(size, seed)``; missing ones are written in parallel child
    processes (the cores shared between them), each within ``timeout_s``."""
    from wsi_seg.orchestration.cluster import cpu_count

    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {(size, seed): cache_dir / f"{slide_name(size, seed)}.svs" for size, seed in wanted}

    def complete(p: Path) -> bool:
        return p.is_file() and p.with_name(f"{p.stem}.tumor.geojson").is_file()

    todo = [k for k, p in paths.items() if not complete(p)]
    secs: dict[tuple[int, int], float] = {}
    if todo:
        threads = max(1, cpu_count() // len(todo))
        say(f"bench: writing {len(todo)} synthetic slide(s) in parallel into {cache_dir} "
            f"({threads} thread(s) each); cached for later runs")
        t0 = time.perf_counter()
        procs = {k: subprocess.Popen(
            _cli("slide", json.dumps({"path": str(paths[k]), "size": k[0], "seed": k[1],
                                      "mpp": mpp, "threads": threads})),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for k in todo}
        failed = []
        for k, proc in procs.items():
            left = max(1.0, timeout_s - (time.perf_counter() - t0))
            try:
                _, err = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
                failed.append(f"{paths[k].name}: not written within {timeout_s:.0f} s")
                continue
            secs[k] = round(time.perf_counter() - t0, 1)
            if proc.returncode:
                tail = " ".join(err.strip().splitlines()[-2:])[:300]
                failed.append(f"{paths[k].name}: exit {proc.returncode}: {tail}")
        if failed:
            raise WsiSegError("; ".join(failed))
    return [_slide_record(paths[k], k[0], k[1], secs.get(k)) for k in paths]


def unet_path(cache_dir: Path, spec: UNetSpec, seed: int = 0) -> Path:
    return cache_dir / "models" / f"{spec.name}-seed{seed}.keras"


def start_unets(cache_dir: Path, specs: Sequence[UNetSpec], seed: int = 0
                ) -> tuple[list[Path], subprocess.Popen[str] | None]:
    """Start building the random-weight UNets ``specs`` that the cache lacks, in one child
    process on the CPU (this process never imports a framework; with TensorFlow installed the
    child uses it, whose variable set-up is much faster than JAX's op-by-op dispatch; a
    ``.keras`` file runs on every backend). Returns their paths and the child (None: cached)."""
    import importlib.util

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
    """Wait for :func:`start_unets`' child; its paths, or a one-line error."""
    if proc is None:
        return paths
    names = ", ".join(p.name for p in paths)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise WsiSegError(f"building {names} took over {timeout_s:.0f} s") from None
    if proc.returncode or not all(p.is_file() for p in paths):
        tail = " ".join(err.strip().splitlines()[-2:])[:300]
        raise WsiSegError(f"building {names} failed (exit {proc.returncode}): {tail}")
    return paths


def ensure_unets(cache_dir: Path, specs: Sequence[UNetSpec], timeout_s: float = 300.0,
                 seed: int = 0) -> list[Path]:
    """The random-weight UNets ``specs`` with their cards in the cache (built if missing)."""
    paths, proc = start_unets(cache_dir, specs, seed)
    return finish_unets(paths, proc, timeout_s)


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

    tile_px, mpp = card.input_size_px, card.mpp

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


# -- worker-side ------------------------------------------------------------------------------
_POOL: dict[tuple[int, int], np.ndarray] = {}
_POOL_LOCK = threading.Lock()


def _tile_pool(roi: int, batch: int) -> np.ndarray:
    """Two batches of random uint8 tiles, made once per worker process and shared by callers."""
    with _POOL_LOCK:
        tiles = _POOL.get((roi, batch))
        if tiles is None:
            rng = np.random.default_rng(roi * 7919 + batch)
            tiles = rng.integers(0, 256, (2 * batch, roi, roi, 3), dtype=np.uint8)
            _POOL.clear()  # one pool at a time (a 512 px pool of batch 128 is 200 MB)
            _POOL[(roi, batch)] = tiles
        return tiles


def _model_only_timed(model_path: str, infer: Any, seconds: float) -> dict[str, Any]:
    """One caller: full batches of random tiles through the process's predictor for
    ``seconds``; its span in ``time.perf_counter`` (system-wide on Linux)."""
    from wsi_seg.stages.infer import cached_predictor

    pred = cached_predictor(model_path, infer)
    bs = pred.batch_size
    tiles = _tile_pool(pred.roi_px, bs)
    pred(tiles[:bs])  # compiled already when warm; outside the clock either way
    done, i = 0, 0
    t0 = t1 = time.perf_counter()
    while t1 - t0 < seconds:
        pred(tiles[(i % 2) * bs : (i % 2 + 1) * bs])
        done += bs
        i += 1
        t1 = time.perf_counter()
    return {"predictions": done, "t0": t0, "t1": t1, "device": pred.device, "batch_size": bs}


def _predictor_stats() -> list[dict[str, Any]]:
    """This worker's predictors and what each has done so far."""
    from wsi_seg.stages.infer import cached_predictors

    out = []
    for p in cached_predictors():
        s = p.stats()
        out.append({"id": id(p), "model": str(p.model_path), "device": p.device,
                    "batch_size": p.batch_size, "batches": s.batches, "windows": s.windows,
                    "padded_slots": s.padded_slots, "device_busy_s": s.device_busy_s})
    return out


def _warm(model_path: str, infer: Any) -> dict[str, Any]:
    from wsi_seg.orchestration.pipeline import warm_worker

    return asdict(warm_worker(Path(model_path), infer))


_POLLS: dict[str, Any] = {}


def _device_totals() -> tuple[float, float, int, int]:
    """``(time, device busy s, batches, windows)`` over this worker's predictors."""
    from wsi_seg.stages.infer import cached_predictors

    busy, batches, windows = 0.0, 0, 0
    for p in cached_predictors():
        s = p.stats()
        busy += s.device_busy_s or 0.0
        batches += s.batches
        windows += s.windows
    return (time.perf_counter(), busy, batches, windows)


def _poll_start(period_s: float) -> bool:
    """Sample this worker's device totals every ``period_s`` until :func:`_poll_stop`."""
    stop = threading.Event()
    samples = [_device_totals()]

    def loop() -> None:
        while not stop.wait(period_s):
            samples.append(_device_totals())

    th = threading.Thread(target=loop, daemon=True, name="wsi-seg-bench-poll")
    th.start()
    _POLLS["run"] = (stop, th, samples)
    return True


def _poll_stop() -> list[tuple[float, float, int, int]]:
    stop, th, samples = _POLLS.pop("run")
    stop.set()
    th.join()
    samples.append(_device_totals())
    return list(samples)


def stats_delta(before: dict[str, list[dict[str, Any]]],
                after: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the workers' predictors did between two :func:`_predictor_stats` snapshots
    (summed over workers and predictors)."""
    keys = ("batches", "windows", "padded_slots", "device_busy_s")
    tot: dict[str, float] = dict.fromkeys(keys, 0.0)
    busy_known = False
    for worker, preds in after.items():
        old = {p["id"]: p for p in before.get(worker, [])}
        for p in preds:
            o = old.get(p["id"], {})
            for k in keys:
                if p.get(k) is not None:
                    tot[k] += p[k] - (o.get(k) or 0.0)
            busy_known |= p.get("device_busy_s") is not None
    slots = tot["windows"] + tot["padded_slots"]
    return {"batches": int(tot["batches"]), "windows": int(tot["windows"]),
            "padded_slots": int(tot["padded_slots"]),
            "fill": round(tot["windows"] / slots, 4) if slots else None,
            "device_busy_s": round(tot["device_busy_s"], 4) if busy_known else None}


# -- the device's utilisation -----------------------------------------------------------------
class DeviceSampler:
    """``nvidia-smi`` GPU utilisation with timestamps, polled in a thread every ``period_s``.

    ``utilization.gpu`` is the share of the last sample period in which a kernel ran, so the
    mean over a phase estimates the device's busy share in it.
    """

    def __init__(self, period_s: float = 0.15, exe: str | None = None) -> None:
        self.period_s = period_s
        self.exe = exe if exe is not None else shutil.which("nvidia-smi")
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return bool(self.exe)

    def start(self) -> DeviceSampler:
        self.samples = []
        self._stop.clear()
        if self.exe:
            self._thread = threading.Thread(target=self._loop, daemon=True,
                                            name="wsi-seg-bench-sampler")
            self._thread.start()
        return self

    def _loop(self) -> None:
        assert self.exe
        while not self._stop.is_set():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
                out = subprocess.run([self.exe, "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5, check=False)
                vals = [float(v) for v in out.stdout.split()]
                if vals:
                    self.samples.append((time.perf_counter(), statistics.mean(vals)))
            self._stop.wait(self.period_s)

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        return list(self.samples)


def busy_between(samples: Sequence[tuple[float, float]], t0: float, t1: float
                 ) -> dict[str, Any]:
    """The samples taken in ``[t0, t1]``: their count, mean utilisation (%), busy share
    (mean / 100) and the share of samples with any kernel running."""
    vals = [u for t, u in samples if t0 <= t <= t1]
    if not vals:
        return {"samples": 0, "mean_utilisation": None, "busy_share": None,
                "nonidle_share": None}
    mean = statistics.mean(vals)
    return {"samples": len(vals), "mean_utilisation": round(mean, 1),
            "busy_share": round(mean / 100, 4),
            "nonidle_share": round(sum(v > 0 for v in vals) / len(vals), 4)}


# -- clusters ---------------------------------------------------------------------------------
def start_device_cluster(workers: int | None, threads_per_worker: int | None) -> Bench:
    """A local cluster exactly as :func:`wsi_seg.orchestration.cluster.connect` starts one for
    ``wsi-seg run`` (worker processes on localhost, GPU workers pinned to their card)."""
    from distributed import Client, Scheduler, SpecCluster

    from wsi_seg.orchestration.cluster import ClusterConfig, plan_local_workers, worker_specs

    plan = plan_local_workers(ClusterConfig(workers=workers,
                                            threads_per_worker=threads_per_worker))
    silence = logging.DEBUG if os.environ.get("WSI_SEG_DEBUG") else logging.CRITICAL
    cluster = SpecCluster(workers=worker_specs(plan, silence),
                          scheduler={"cls": Scheduler, "options": {
                              "host": "127.0.0.1", "dashboard_address": None}},
                          silence_logs=silence)
    client = Client(cluster)
    client.wait_for_workers(plan.workers)
    return Bench(client, cluster, plan.workers, plan.threads_per_worker, plan.tf_threads,
                 plan.gpus)


# -- one run and what it did ------------------------------------------------------------------
def run_config(out_dir: Path, model: Path, infer: Any) -> Any:
    """``wsi-seg run``'s defaults (no truth: a user's folder has none)."""
    from wsi_seg.orchestration.pipeline import RunConfig

    return RunConfig(out_dir=out_dir, model_path=model, infer=infer, overwrite=True)


def read_run(out_dir: Path) -> dict[str, Any]:
    """``run.json`` of a finished run, summarised: tiles, predictions, the blocks phase
    (the longest slide's: all slides' blocks are submitted at once), stage seconds summed over
    slides, and the start-up line."""
    run = json.loads((out_dir / "run.json").read_text())
    slides = [s for s in run["slides"] if s.get("status") == "ok"]
    preds = 0
    for s in slides:
        rep = json.loads(Path(s["report"]).read_text())
        preds += int(rep["tile_predictions"])
    stages: dict[str, float] = {}
    for s in slides:
        for k, v in (s.get("stage_s") or {}).items():
            stages[k] = round(stages.get(k, 0.0) + v, 4)
    return {"tiles": int(run["tiles"]), "tile_predictions": preds, "slides": len(slides),
            "blocks_wall_s": max((s.get("blocks_wall_s") or s["wall_s"] for s in slides),
                                 default=0.0),
            "stage_s": stages, "startup_s": run.get("startup_s"),
            "startup_workers": run.get("startup_workers") or []}


def run_once(bench: Bench | None, slides: Sequence[Path], run_cfg: Any,
             sampler: DeviceSampler | None = None, poll_s: float | None = None
             ) -> dict[str, Any]:
    """One ``run_slides`` over the slides: on ``bench`` (warm), or with a fresh default local
    cluster when ``bench`` is None (as ``wsi-seg run``, start-up inside the wall). With
    ``poll_s`` the workers' device totals are sampled that often (``rec["timelines"]``)."""
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.runner import run_slides

    out = Path(run_cfg.out_dir)
    if out.exists():
        shutil.rmtree(out)
    before = bench.client.run(_predictor_stats) if bench else None
    if bench and poll_s:
        bench.client.run(_poll_start, poll_s)
    if sampler:
        sampler.start()
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        if bench is None:
            result = run_slides(list(slides), run_cfg, ClusterConfig(dashboard=False),
                                quiet=True)
        else:
            result = run_slides(list(slides), run_cfg, ClusterConfig(scheduler=bench.address),
                                quiet=True, gpu_resource=bool(bench.gpus) or None)
        t1 = time.perf_counter()
    finally:
        samples = sampler.stop() if sampler else []
        timelines = bench.client.run(_poll_stop) if bench and poll_s else None
    after = bench.client.run(_predictor_stats) if bench else None
    if not result.ok:
        err = next((s.get("error") for s in result.slides if s.get("error")), "?")
        raise WsiSegError(f"benchmark run failed: {err}")
    rec = read_run(out)
    wall = t1 - t0
    rec.update(wall_s=round(wall, 3), tiles_per_s=round(rec["tiles"] / wall, 2),
               load_avg=[round(load0, 2), round(os.getloadavg()[0], 2)])
    startup = rec["startup_s"] or 0.0
    blocks = rec["blocks_wall_s"]
    if blocks > 0:
        rec["blocks_tiles_per_s"] = round(rec["tiles"] / blocks, 2)
    if wall > startup:
        rec["tiles_per_s_after_startup"] = round(rec["tiles"] / (wall - startup), 2)
    if before is not None and after is not None:
        rec["predictor"] = stats_delta(before, after)
    if timelines is not None:
        rec["timelines"] = timelines
    if sampler is not None:
        rec["device_samples"] = (busy_between(samples, t0 + startup, t0 + startup + blocks)
                                 if sampler.available else {"note": NOT_SAMPLED})
    return rec


def simulated_busy(rec: dict[str, Any],
                   timelines: dict[str, list[tuple[float, float, int, int]]] | None = None
                   ) -> dict[str, Any]:
    """The simulated device's busy seconds and share in the blocks phase of a run.

    The run's warm-up sends single windows before the blocks start (the runner waits for
    it): ``warm_windows`` = windows the device saw - the plan's predictions. With one worker's
    timeline of ``(time, busy s, batches, windows)`` sampled during the run, the blocks' busy
    time is the busy time after the last sample at which no more than the warm-up windows
    were done (``method: timeline``; a warm-up window that shared a batch with block windows
    counts with the blocks, as that batch ran in the blocks phase). With several workers each
    warm-up window is taken to be a batch of its own (``method: warm batches``; smaller than
    the truth by a batch when two warm-up windows shared one)."""
    p = rec["predictor"]
    busy, batches = p["device_busy_s"], p["batches"]
    warm_windows = max(0, p["windows"] - rec["tile_predictions"])
    block_batches = max(0, batches - warm_windows)
    busy_blocks = busy * block_batches / batches if batches else 0.0
    method = "warm batches"
    if timelines and len(timelines) == 1:
        (tl,) = timelines.values()
        first, last = tl[0], tl[-1]
        warm = [x for x in tl if x[3] - first[3] <= warm_windows]
        if warm and last[3] - first[3] == p["windows"]:
            # Batches and windows are counted together when a batch completes; the device's
            # busy clock ticks a moment earlier, so it is taken per batch, not from the sample.
            block_batches = last[2] - warm[-1][2]
            busy_blocks = busy * block_batches / batches if batches else 0.0
            method = "timeline"
    wall = rec["blocks_wall_s"]
    bs = p.get("batch_size")
    return {"device_busy_s": round(busy_blocks, 3), "block_batches": block_batches,
            "blocks_fill": (round(rec["tile_predictions"] / (block_batches * bs), 4)
                            if bs and block_batches else None),
            "warm_windows": warm_windows, "busy_method": method,
            "busy_share": round(busy_blocks / wall, 4) if wall > 0 else None}


# -- the benchmark ----------------------------------------------------------------------------
class DeviceBenchmark:
    """Runs a device profile (see the module docstring) and assembles its record."""

    def __init__(self, cfg: DeviceBenchConfig, say: Callable[[str], None] | None = None
                 ) -> None:
        if cfg.profile not in PROFILES:
            raise WsiSegError(f"unknown profile {cfg.profile!r}; use {', '.join(PROFILES)}")
        self.cfg = cfg
        self.say = say or (lambda s: print(s, file=sys.stderr, flush=True))
        self.record: dict[str, Any] = {
            "format": FORMAT, "profile": cfg.profile, "machine": machine_info(),
            "config": _jsonable(asdict(cfg)), "steps": {}, "slides": [], "models": {},
            "notes": []}
        self.record["machine"]["backend"] = _backend_versions()
        self.runs_dir = cfg.scratch_dir or cfg.out_dir / "runs"
        self._bench: Bench | None = None
        self._jobs: list[Any] = []  # the plans of the model being measured
        self.t0 = time.perf_counter()

    # -- plumbing ----------------------------------------------------------------------------
    def save(self) -> None:
        from wsi_seg.tools.bench import write_outputs

        self.record["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        write_outputs(self.record, self.cfg.out_dir, markdown_fn=device_markdown)

    def step(self, name: str, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run ``fn`` within the step time limit; record its status and save the record.
        Returns its value, or None when it failed or timed out."""
        limit = timeout_s or self.cfg.step_timeout_s
        self.say(f"bench: {name} (limit {limit:.0f} s)")
        box: dict[str, Any] = {}

        def target() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:  # reported below
                box["error"] = exc

        keep = _child_pids()
        t = time.perf_counter()
        th = threading.Thread(target=target, daemon=True, name=f"wsi-seg-bench-{name}")
        th.start()
        th.join(limit)
        secs = round(time.perf_counter() - t, 2)
        if th.is_alive():
            status: dict[str, Any] = {"status": "timed out", "seconds": secs,
                                      "error": f"still running after {limit:.0f} s"}
            self.record["notes"].append(f"{name}: timed out after {limit:.0f} s")
            self._drop_cluster()  # whatever it was waiting for goes with the cluster
            _end_children(keep)  # and a cluster the step started itself (the cold run's)
        elif "error" in box:
            from wsi_seg.orchestration.runner import one_line

            status = {"status": "failed", "seconds": secs, "error": one_line(box["error"])}
            self.record["notes"].append(f"{name}: {status['error']}")
        else:
            status = {"status": "ok", "seconds": secs}
        self.record["steps"][name] = status
        self.save()
        return box.get("value")

    def bench(self) -> Bench:
        if self._bench is None:
            cfg = self.cfg
            workers, threads = cfg.workers, cfg.threads_per_worker
            if cfg.profile == "simulated":
                from wsi_seg.orchestration.cluster import cpu_count, device_worker_threads

                workers = workers or 1
                threads = threads or device_worker_threads(cpu_count())
            self._bench = start_device_cluster(workers, threads)
            b = self._bench
            self.record["cluster"] = {"workers": b.workers,
                                      "threads_per_worker": b.threads_per_worker,
                                      "tf_threads": b.tf_threads, "gpus": b.gpus}
        return self._bench

    def _drop_cluster(self) -> None:
        if self._bench is not None:
            self._bench.close()
            self._bench = None

    def infer(self, simulate_batch_s: float | None = None, cold: bool = False) -> Any:
        """The runs' InferConfig (the gpu profile with ``simulate_batch_s`` set is a dry run
        on the simulated device)."""
        from wsi_seg.stages.infer import InferConfig

        if simulate_batch_s is None:
            simulate_batch_s = (self.cfg.simulate_batch_s or 0.0) if self.cfg.profile == "gpu" \
                else 0.0
        threads = None if cold else self.bench().tf_threads
        return InferConfig(batch_size=self.cfg.batch_size, threads=threads,
                           simulate_batch_s=simulate_batch_s)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.save()
        try:
            if cfg.profile == "gpu":
                self._gpu()
            else:
                self._simulated()
        finally:
            self._drop_cluster()
            if not cfg.keep_outputs:
                shutil.rmtree(self.runs_dir, ignore_errors=True)
            self.record["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
            self.record["total_s"] = round(time.perf_counter() - self.t0, 1)
            self.save()
        return self.record

    def _slides(self, noisy: bool = False) -> list[dict[str, Any]]:
        """The main slides (given, or synthetic) and, with ``noisy``, the noisy step's."""
        cfg = self.cfg
        wanted = [] if cfg.slides else [(cfg.synth_size, s) for s in cfg.synth_seeds]
        extra = [(cfg.noisy_size, cfg.noisy_seed)] if noisy else []
        made = ensure_slides(cfg.cache_dir, list(dict.fromkeys([*wanted, *extra])),
                             cfg.slide_mpp, cfg.step_timeout_s, self.say)
        out = []
        for p in cfg.slides:
            if not Path(p).is_file():
                raise WsiSegError("slide not found", p)
            out.append({"path": str(p), "size_px": None, "seed": None, "roles": ["main"],
                        "file_mb": round(Path(p).stat().st_size / 1e6, 1)})
        for rec in made:
            key = (rec["size_px"], rec["seed"])
            rec["roles"] = (["main"] if key in wanted else []) + (["noisy"] if key in extra
                                                                  else [])
            out.append(rec)
        return out

    # -- gpu ---------------------------------------------------------------------------------
    def _gpu(self) -> None:
        cfg = self.cfg
        wanted = {k: spec for k, spec in (("heavy", cfg.heavy), ("noisy", cfg.noisy))
                  if k in cfg.steps}

        def prepare() -> tuple[list[dict[str, Any]], dict[str, Path]]:
            # The models build in a child while the slides are written in others.
            t = time.perf_counter()
            paths, proc = start_unets(cfg.cache_dir, list(wanted.values()))
            try:
                slides = self._slides(noisy="noisy" in cfg.steps)
            except BaseException:
                if proc is not None:
                    proc.kill()
                raise
            left = max(1.0, cfg.step_timeout_s - (time.perf_counter() - t))
            return slides, dict(zip(wanted, finish_unets(paths, proc, left), strict=True))

        got = self.step("slides and models", prepare)
        if got is None:
            return
        slides, built = got
        self.record["slides"] = slides
        main = [Path(s["path"]) for s in slides if "main" in s["roles"]]
        noisy_slide = next((Path(s["path"]) for s in slides if "noisy" in s["roles"]), None)
        models: dict[str, Path] = {"bundled": cfg.main_model(), **built}
        self.record["models"] = {k: _model_record(p) for k, p in models.items()}
        self.save()
        # The warm cluster's figures first (what the goals are about), then the cold
        # run, then the noisy map (whose polygons may take long).
        for key in ("bundled", "heavy"):
            if key in cfg.steps and key in models and main:
                self._model_entry(key, models[key], main)
        if "cold" in cfg.steps and main:
            self.step("cold", lambda: self._cold(main, models["bundled"]))
        if "noisy" in models and noisy_slide is not None:
            self.step("noisy", lambda: self._noisy(models["noisy"], noisy_slide))

    def _cold(self, slides: list[Path], model: Path) -> None:
        rc = run_config(self.runs_dir / "cold", model, self.infer(cold=True))
        rec = run_once(None, slides, rc)
        self.record["cold"] = rec

    def _model_entry(self, key: str, model: Path, slides: list[Path]) -> None:
        cfg = self.cfg
        entry: dict[str, Any] = {"model": key, "model_path": str(model),
                                 "card": self.record["models"][key]}
        self.record.setdefault("runs", {})[key] = entry

        def setup() -> bool:
            bench = self.bench()
            infer = self.infer()
            rc = run_config(self.runs_dir / f"{key}-plan", model, infer)
            jobs = [plan_of({"path": str(p)}, rc) for p in slides]
            entry["plan"] = {"slides": len(jobs), "blocks": sum(j.n_blocks for j in jobs),
                             "tiles": sum(j.n_tiles for j in jobs),
                             "tile_predictions": sum(j.n_tile_predictions for j in jobs),
                             "tile_px": jobs[0].card.input_size_px if jobs else None}
            self._jobs = jobs
            t = time.perf_counter()
            futs = [bench.client.submit(_warm, str(model), infer, pure=False, workers=[a],
                                        allow_other_workers=False)
                    for a in bench.worker_addresses()]
            warm = [f.result() for f in futs]
            entry["warm"] = {"seconds": round(time.perf_counter() - t, 2), "workers": warm}
            entry["device"] = sorted({w["device"] for w in warm})
            return True

        self._jobs = []
        if not self.step(f"{key}: plan and warm", setup):
            return
        got: dict[str, list[dict[str, Any]]] = {m: [] for m in MEASURES}
        for r in range(cfg.repeats):
            for what in rotate(MEASURES, r):
                label = f"{key}: {what} (round {r + 1}/{cfg.repeats})"
                value = self.step(label, functools.partial(self._measure, what, model, slides))
                if value is not None:
                    got[what].append(value)
                    entry.update(_entry_figures(entry["plan"], got))
                    self.save()

    def _measure(self, what: str, model: Path, slides: list[Path]) -> dict[str, Any]:
        bench = self.bench()
        infer = self.infer()
        sampler = DeviceSampler(self.cfg.sample_period_s)
        if what == "e2e":
            rc = run_config(self.runs_dir / "e2e", model, infer)
            return run_once(bench, slides, rc, sampler)
        if what == "model":
            return measure_model_only(bench, model, infer, self.cfg.model_seconds, sampler)
        if not self._jobs:
            rc = run_config(self.runs_dir / "plan", model, infer)
            self._jobs = [plan_of({"path": str(p)}, rc) for p in slides]
        return measure_read_only(bench, self._jobs)

    def _noisy(self, model: Path, slide: Path) -> dict[str, Any]:
        bench = self.bench()
        infer = self.infer()
        t = time.perf_counter()
        futs = [bench.client.submit(_warm, str(model), infer, pure=False, workers=[a],
                                    allow_other_workers=False)
                for a in bench.worker_addresses()]
        [f.result() for f in futs]
        warm_s = time.perf_counter() - t
        rc = run_config(self.runs_dir / "noisy", model, infer)
        rec = run_once(bench, [slide], rc)
        report = next(rc.out_dir.glob("*/report.json"))
        rep = json.loads(report.read_text())
        vec = rec["stage_s"].get("vectorize", 0.0)
        out = {"slide": str(slide), "model": model.name, "warm_s": round(warm_s, 2),
               "wall_s": rec["wall_s"], "blocks_wall_s": rec["blocks_wall_s"],
               "tiles": rec["tiles"], "vectorize_s": vec,
               "vectorize_share": round(vec / rec["wall_s"], 4) if rec["wall_s"] else None,
               "tumour_regions": rep.get("tumour_regions"),
               "tumour_mm2": rep.get("tumour_mm2"), "stage_s": rec["stage_s"],
               "speckle": _speckle(report.parent / "mask.zarr", rep.get("threshold", 0.5)),
               "goal": "vectorize_share < 0.10"}
        self.record["noisy"] = out
        return out

    # -- simulated ---------------------------------------------------------------------------
    def _simulated(self) -> None:
        cfg = self.cfg
        slides = self.step("slides", self._slides) or []
        self.record["slides"] = slides
        if not slides:
            return
        paths = [Path(s["path"]) for s in slides]
        model = cfg.main_model()
        self.record["models"] = {"main": _model_record(model)}
        sim: dict[str, Any] = {"batch_size": cfg.batch_size, "margin": cfg.simulate_margin}
        self.record["simulated"] = sim
        s = cfg.simulate_batch_s
        if s is None:
            cal = self.step("simulated: CPU side (calibration)",
                            lambda: self._sim_run(paths, model, cfg.calibrate_batch_s, "cal"))
            if cal is None:
                return
            # Seconds of blocks phase per full batch of windows with a device that never waits.
            cpu_side = cal["blocks_wall_s"] * self._batch() / cal["tile_predictions"]
            s = round(max(0.005, cfg.simulate_margin * cpu_side), 4)
            sim["calibration"] = {**cal, "cpu_side_s_per_batch": round(cpu_side, 4)}
            sim["chosen"] = "calibrated"
        else:
            sim["chosen"] = "given"
        sim["batch_s"] = s
        runs: list[dict[str, Any]] = []
        for r in range(cfg.repeats):
            rec = self.step(f"simulated: S = {s} s (round {r + 1}/{cfg.repeats})",
                            lambda: self._sim_run(paths, model, s, "sim"))
            if rec is not None:
                runs.append(rec)
                sim.update(_sim_figures(runs, s, self._batch()))
                self.save()

    def _batch(self) -> int:
        from wsi_seg.stages.infer import GPU_BATCH

        return self.cfg.batch_size or GPU_BATCH

    def _sim_run(self, slides: list[Path], model: Path, s: float, tag: str) -> dict[str, Any]:
        bench = self.bench()
        rc = run_config(self.runs_dir / tag, model, self.infer(simulate_batch_s=s))
        rec = run_once(bench, slides, rc, poll_s=POLL_S)
        rec["predictor"]["batch_size"] = self._batch()
        rec.update(simulated_busy(rec, rec.pop("timelines")))
        rec["batch_s"] = s
        return rec


def _child_pids() -> set[int]:
    try:
        import psutil
    except ImportError:
        return set()
    with contextlib.suppress(psutil.Error):
        return {k.pid for k in psutil.Process().children(recursive=True)}
    return set()


def _end_children(keep: set[int]) -> None:
    """End the child processes of this process that are not in ``keep`` (those a timed-out
    step started: the cold run's own cluster), by their ids, terminate first. Needs psutil;
    without it they end with this process."""
    try:
        import psutil
    except ImportError:
        return
    with contextlib.suppress(psutil.Error):
        kids = [k for k in psutil.Process().children(recursive=True) if k.pid not in keep]
        for k in kids:
            with contextlib.suppress(psutil.Error):
                k.terminate()
        _, alive = psutil.wait_procs(kids, timeout=5)
        for k in alive:
            with contextlib.suppress(psutil.Error):
                k.kill()


def _speckle(mosaic_path: Path, threshold: float) -> dict[str, Any]:
    """How speckled a mosaic is: the share of predicted pixels at or above the threshold and
    the number of 4-connected foreground components (what polygons are traced from)."""
    import cv2

    from wsi_seg.stages.mosaic import open_mosaic

    arr = np.asarray(open_mosaic(mosaic_path).level(0)[...])
    fg = arr >= np.ceil(threshold * 255)
    predicted = int((arr > 0).sum())
    n, _ = cv2.connectedComponents(fg.astype(np.uint8), connectivity=4)
    return {"foreground_share": round(int(fg.sum()) / predicted, 4) if predicted else None,
            "components": int(n) - 1, "mosaic_px": int(arr.size)}


def measure_model_only(bench: Bench, model: Path, infer: Any, seconds: float,
                       sampler: DeviceSampler | None = None) -> dict[str, Any]:
    """Every worker's predictor fed full batches of random tiles by as many callers as it has
    task threads; predictions / the callers' span."""
    addrs = bench.worker_addresses()
    callers = bench.threads_per_worker
    if sampler:
        sampler.start()
    futs = [bench.client.submit(_model_only_timed, str(model), infer, seconds, pure=False,
                                workers=[a], allow_other_workers=False)
            for a in addrs for _ in range(callers)]
    parts = [f.result() for f in futs]
    samples = sampler.stop() if sampler else []
    t0, t1 = min(p["t0"] for p in parts), max(p["t1"] for p in parts)
    n = sum(p["predictions"] for p in parts)
    rec: dict[str, Any] = {"predictions": n, "span_s": round(t1 - t0, 3),
                           "predictions_per_s": round(n / (t1 - t0), 2),
                           "callers": len(parts), "batch_size": parts[0]["batch_size"],
                           "device": sorted({p["device"] for p in parts})}
    if sampler is not None:
        rec["device_samples"] = (busy_between(samples, t0, t1) if sampler.available
                                 else {"note": NOT_SAMPLED})
    return rec


def measure_read_only(bench: Bench, jobs: Sequence[Any]) -> dict[str, Any]:
    """Every block's kept-window box of every slide, read as block tasks on the workers'
    task threads; distinct tiles / wall."""
    t = time.perf_counter()
    futs = [bench.client.submit(_read_only_task, str(job.slide_path), job.mpp, task,
                                job.spec.roi_px, pure=False)
            for job in jobs for task in job.tasks]
    secs = [f.result() for f in futs]
    wall = time.perf_counter() - t
    tiles = sum(j.n_tiles for j in jobs)
    return {"wall_s": round(wall, 3), "read_task_s": round(sum(secs), 3), "tiles": tiles,
            "tiles_per_s": round(tiles / wall, 2), "threads": bench.threads_per_worker,
            "workers": bench.workers}


def _entry_figures(plan: dict[str, Any], got: dict[str, list[dict[str, Any]]]
                   ) -> dict[str, Any]:
    """Summaries of a model's rounds and the ratio against the slower limit."""
    e2e, model, read = got["e2e"], got["model"], got["read"]
    dup = plan["tile_predictions"] / plan["tiles"] if plan["tiles"] else 1.0
    out: dict[str, Any] = {"halo_factor": round(dup, 4)}
    if e2e:
        out["e2e"] = {
            "tiles_per_s": summary([e["tiles_per_s"] for e in e2e], 2),
            "blocks_tiles_per_s": summary([e.get("blocks_tiles_per_s", 0.0) for e in e2e], 2),
            "wall_s": summary([e["wall_s"] for e in e2e]),
            "blocks_wall_s": summary([e["blocks_wall_s"] for e in e2e]),
            "startup_s": [e["startup_s"] for e in e2e],
            "predictor": e2e[-1].get("predictor"),
            "stage_s": {k: round(statistics.median(e["stage_s"].get(k, 0.0) for e in e2e), 3)
                        for k in e2e[-1]["stage_s"]},
            "load_avg": [e["load_avg"] for e in e2e],
        }
        shares = [e["device_samples"].get("busy_share") for e in e2e
                  if e.get("device_samples")]
        out["device_busy_blocks"] = (summary([v for v in shares if v is not None], 3)
                                     if any(v is not None for v in shares)
                                     else {"note": NOT_SAMPLED})
    if model:
        out["model_only"] = {
            "predictions_per_s": summary([m["predictions_per_s"] for m in model], 2),
            "limit_tiles_per_s": summary([m["predictions_per_s"] / dup for m in model], 2),
            "callers": model[-1]["callers"], "batch_size": model[-1]["batch_size"],
            "device": model[-1]["device"],
            "device_samples": model[-1].get("device_samples"),
        }
    if read:
        out["read_only"] = {"tiles_per_s": summary([r["tiles_per_s"] for r in read], 2),
                            "threads": read[-1]["threads"], "workers": read[-1]["workers"]}
    if e2e and model and read:
        limit_m = statistics.median(m["predictions_per_s"] for m in model) / dup
        limit_r = statistics.median(r["tiles_per_s"] for r in read)
        limit = min(limit_m, limit_r)
        e2e_tps = statistics.median(e["tiles_per_s"] for e in e2e)
        blocks_tps = statistics.median(e.get("blocks_tiles_per_s", 0.0) for e in e2e)
        out.update(limit_tiles_per_s=round(limit, 2),
                   limited_by="model" if limit_m <= limit_r else "read",
                   ratio=round(e2e_tps / limit, 4), ratio_blocks=round(blocks_tps / limit, 4))
    return out


def _sim_figures(runs: list[dict[str, Any]], s: float, batch: int) -> dict[str, Any]:
    r0 = runs[0]
    dup = r0["tile_predictions"] / r0["tiles"] if r0["tiles"] else 1.0
    return {
        "runs": runs,
        "tiles": r0["tiles"], "tile_predictions": r0["tile_predictions"],
        "busy_share": summary([r["busy_share"] for r in runs], 4),
        "tiles_per_s": summary([r["tiles_per_s"] for r in runs], 2),
        "blocks_tiles_per_s": summary([r["blocks_tiles_per_s"] for r in runs], 2),
        "blocks_wall_s": summary([r["blocks_wall_s"] for r in runs]),
        "fill": summary([r["blocks_fill"] or 0.0 for r in runs], 4),
        # A device that is never idle and gets only full batches: the best the CPU side
        # could hope for.
        "device_bound_tiles_per_s": round(batch / s / dup, 2),
        # The device time the windows need in full batches / the blocks phase: the busy share
        # without padded slots (a design that pads more batches looks busier, not faster).
        "work_share": summary([r["tile_predictions"] / batch * s / r["blocks_wall_s"]
                               for r in runs], 4),
        "goal": "busy_share >= 0.90",
    }


def _model_record(path: Path) -> dict[str, Any]:
    from wsi_seg.stages.card import read_card

    card = read_card(path)
    return {"path": str(path), "name": card.name, "tile_px": card.input_size_px,
            "mpp": card.mpp, "architecture": card.architecture}


def _backend_versions() -> dict[str, Any]:
    import importlib.metadata as md

    from wsi_seg.stages.backends import keras_backend

    out: dict[str, Any] = {"keras_backend": keras_backend()}
    for pkg in ("jax", "jaxlib", "torch", "tensorflow", "keras"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


# -- markdown ---------------------------------------------------------------------------------
def _med(x: Any, fmt: str = "{:.1f}") -> str:
    if not isinstance(x, dict) or x.get("median") is None:
        return "n/a"
    med = fmt.format(x["median"])
    if x.get("n", 0) > 1:
        return f"{med} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"
    return med


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f} %"


def device_markdown(record: dict[str, Any]) -> str:
    """A device profile's record as markdown."""
    m = record.get("machine", {})
    be = m.get("backend", {})
    cl = record.get("cluster", {})
    prof = record.get("profile")
    lines = [
        f"# wsi-seg bench --profile {prof}", "",
        f"{m.get('date')} · {m.get('cores')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM"
        f" · {'GPUs: ' + '; '.join(m['gpus']) if m.get('gpus') else 'no GPU'}"
        f" · Keras backend {be.get('keras_backend')}"
        f"{' (jax ' + be['jax'] + ')' if be.get('jax') else ''}"
        f" · wsi-seg {m.get('wsi_seg_version')}"
        f"{' (' + m['git_commit'] + ')' if m.get('git_commit') else ''}"
        f" · load avg {m.get('load_avg')} -> {m.get('load_avg_end')}", "",
    ]
    conf = record.get("config", {})
    if prof == "gpu" and conf.get("simulate_batch_s"):
        lines += [f"**Dry run**: every model ran on the simulated device "
                  f"({conf['simulate_batch_s']} s per batch, zeros out); only the machinery "
                  "is measured.", ""]
    if cl:
        lines += [f"Cluster: {cl.get('workers')} worker(s) x {cl.get('threads_per_worker')} "
                  f"task threads ({cl.get('gpus')} GPU(s)). Figures: median (min–max) of "
                  f"{record.get('config', {}).get('repeats')} interleaved rounds.", ""]
    slides = record.get("slides") or []
    if slides:
        lines.append("Slides: " + ", ".join(Path(s["path"]).name for s in slides) + ".")
        lines.append("")
    cold = record.get("cold")
    if cold:
        lines += ["## As `wsi-seg run` runs it (fresh local cluster, start-up included)", "",
                  "| tiles | wall s | tiles/s | start-up s | tiles/s after start-up | blocks "
                  "phase s | blocks-phase tiles/s |", "|---|---|---|---|---|---|---|",
                  f"| {cold['tiles']} | {cold['wall_s']} | {cold['tiles_per_s']} | "
                  f"{cold.get('startup_s')} | {cold.get('tiles_per_s_after_startup')} | "
                  f"{cold['blocks_wall_s']} | {cold.get('blocks_tiles_per_s')} |", ""]
        for w in cold.get("startup_workers") or []:
            lines.append(f"- start-up worker pid {w.get('pid')}: {w.get('backend')} on "
                         f"{w.get('device')}, model load + compile {w.get('load_s', 0):.1f} s")
        lines.append("")
    runs = record.get("runs") or {}
    if runs:
        lines += ["## End to end against the limits (warm cluster)", "",
                  "e2e = `run_slides` over all slides on a warm cluster sized as `wsi-seg run`; "
                  "model-only = full batches of random tiles through the workers' predictor "
                  "from as many threads as task threads (as distinct tiles: / halo factor); "
                  "read-only = the blocks' kept-window boxes read by block tasks. "
                  "Ratio = e2e / min(model-only limit, read-only).", "",
                  "| model | tiles (predictions) | e2e tiles/s | blocks-phase tiles/s | "
                  "model-only predictions/s | model limit tiles/s | read-only tiles/s | "
                  "limited by | ratio | ratio blocks | device busy in blocks phase |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for key, e in runs.items():
            plan = e.get("plan", {})
            e2e = e.get("e2e", {})
            mo = e.get("model_only", {})
            ro = e.get("read_only", {})
            busy = e.get("device_busy_blocks", {})
            busy_s = busy.get("note") if "note" in busy else _med(busy, "{:.2f}")
            lines.append(
                f"| {key} ({plan.get('tile_px')} px, batch {mo.get('batch_size', '?')}) | "
                f"{plan.get('tiles')} ({plan.get('tile_predictions')}) | "
                f"{_med(e2e.get('tiles_per_s'))} | {_med(e2e.get('blocks_tiles_per_s'))} | "
                f"{_med(mo.get('predictions_per_s'))} | {_med(mo.get('limit_tiles_per_s'))} | "
                f"{_med(ro.get('tiles_per_s'))} | {e.get('limited_by', 'n/a')} | "
                f"{e.get('ratio', 'n/a')} | {e.get('ratio_blocks', 'n/a')} | {busy_s} |")
        lines += ["", "### Stages (median seconds over rounds, summed over slides; block "
                  "stages are task-thread seconds)", ""]
        keys: list[str] = []
        for e in runs.values():
            for k in e.get("e2e", {}).get("stage_s", {}):
                if k not in keys:
                    keys.append(k)
        lines += ["| stage | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs)]
        for k in keys:
            lines.append(f"| {k} | " + " | ".join(
                str(e.get("e2e", {}).get("stage_s", {}).get(k, "–")) for e in runs.values())
                + " |")
        lines.append("| **run wall** | " + " | ".join(
            _med(e.get("e2e", {}).get("wall_s"), "{:.2f}") for e in runs.values()) + " |")
        lines.append("| blocks phase | " + " | ".join(
            _med(e.get("e2e", {}).get("blocks_wall_s"), "{:.2f}") for e in runs.values())
            + " |")
        lines.append("")
        for key, e in runs.items():
            p = e.get("e2e", {}).get("predictor")
            if p:
                lines.append(f"- {key}: last run's predictor: {p['batches']} batches, "
                             f"{p['windows']} windows, fill {_pct(p['fill'])}; warm-up "
                             f"{e.get('warm', {}).get('seconds')} s on "
                             f"{', '.join(e.get('device', []))}")
        lines.append("")
    noisy = record.get("noisy")
    if noisy:
        lines += ["## Polygons of a speckled map (random-weight UNet)", "",
                  "| slide | model | tiles | foreground components (share of predicted px) | "
                  "run wall s | vectorize s | vectorize share (goal < 10 %) | tumour regions "
                  "kept |", "|---|---|---|---|---|---|---|---|",
                  f"| {Path(noisy['slide']).name} | {noisy['model']} | {noisy['tiles']} | "
                  f"{noisy['speckle']['components']} "
                  f"({_pct(noisy['speckle']['foreground_share'])}) | "
                  f"{noisy['wall_s']} | {noisy['vectorize_s']:.2f} | "
                  f"{_pct(noisy['vectorize_share'])} | {noisy['tumour_regions']} |", ""]
    sim = record.get("simulated")
    if sim and sim.get("runs"):
        cal = sim.get("calibration")
        lines += ["## Simulated accelerator: is the device kept busy?", ""]
        if cal:
            lines.append(f"CPU side (a run with S = {cal['batch_s']} s per batch): blocks "
                         f"phase {cal['blocks_wall_s']} s for {cal['tile_predictions']} "
                         f"predictions = {cal['cpu_side_s_per_batch']} s per batch of "
                         f"{sim['batch_size']}; S = {sim['margin']} x that.")
            lines.append("")
        lines += ["| S per batch | batch | tiles (predictions) | blocks phase s | e2e tiles/s | "
                  "blocks-phase tiles/s | device-bound tiles/s | batch fill | "
                  "device busy share (goal >= 90 %) | work share |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {sim['batch_s']} s | {sim['batch_size']} | {sim['tiles']} "
                  f"({sim['tile_predictions']}) | {_med(sim['blocks_wall_s'], '{:.2f}')} | "
                  f"{_med(sim['tiles_per_s'])} | {_med(sim['blocks_tiles_per_s'])} | "
                  f"{sim['device_bound_tiles_per_s']} | {_med(sim['fill'], '{:.3f}')} | "
                  f"{_med(sim['busy_share'], '{:.3f}')} | {_med(sim['work_share'], '{:.3f}')} |",
                  "", "Work share = the device time the windows need in full batches / the "
                  "blocks phase (the busy share without padded slots).", ""]
    steps = record.get("steps") or {}
    if steps:
        lines += ["## Steps", "", "| step | status | seconds |", "|---|---|---|"]
        for name, st in steps.items():
            err = f": {st['error']}" if st.get("error") else ""
            lines.append(f"| {name} | {st['status']}{err} | {st['seconds']} |")
        lines.append("")
    return markdown_end(record, lines)
