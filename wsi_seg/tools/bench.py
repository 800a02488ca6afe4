"""Reproducible speed and memory measurements on synthetic slides (``wsi-seg bench``).

Every figure is measured on synthetic slides that this module writes itself (cached by size and
seed in a folder, so a rerun reuses them) and lands in one JSON record with the machine it ran
on (cores, RAM, CPU, device, TensorFlow and wsi-seg versions, date, load average). Shared
machines are noisy, so figures that are compared with each other are measured **in one session,
interleaved and repeated** (the order rotates from round to round) and reported as the median
with the minimum and maximum of the repeats.

What is measured (keys of the record):

``throughput`` (one entry per model and slide size)
    * ``e2e``: a real :func:`wsi_seg.orchestration.runner.run_slides` over the slide (prepare,
      blocks, finish:
      pyramid, polygons, GeoJSON, overlay, score) on a warm local Dask cluster.
      ``tiles_per_s`` = distinct windows (``report["tiles"]``) / the whole call's wall time;
      ``blocks_tiles_per_s`` = the same over the blocks phase only (``report["blocks_wall_s"]``);
      ``predictions_per_s`` = model evaluations, halo duplicates included
      (``report["tile_predictions"]``) / wall time.
    * ``model_only``: the same model, batch size, device and
      :class:`~wsi_seg.stages.infer.Predictor`
      (the workers' cached one) on random tiles already in memory, as many callers per worker
      as task threads, all workers at once: ``predictions_per_s``. ``limit_tiles_per_s``
      converts it to distinct windows of this slide's plan (x tiles / tile_predictions): the
      best e2e rate the model allows.
    * ``read_only``: the same blocks' halos read from the same slide with
      :meth:`wsi_seg.stages.slide.Slide.read_w` on the same workers and task threads, no model:
      ``tiles_per_s`` (distinct windows / wall) and ``predictions_per_s``.
    * ``ratio``: e2e tiles/s / min(model limit, read-only tiles/s), paired round by round
      (goal >= 0.90); ``ratio_blocks`` uses the blocks phase only; ``ratio_literal`` divides by
      min(model-only predictions/s, read-only tiles/s), i.e. counts halo duplicates against us.
    * ``stages``: seconds per stage summed over block tasks (read, cut, predict, blend, write:
      task-thread seconds, which run in parallel and can exceed the wall time) and the finishing
      stages (pyramid, vectorize, geojson, score, overlay: serial), with shares of the wall time.

``seeds_way``: a plain loop (one process) of OpenSlide ``read_region`` + ``model.predict`` per
tile + stitching into one slide-sized numpy array over the same windows, time-capped, against
the e2e tiles/s of the same slide measured in the same rounds (goal: speedup >= 5).

``memory``: peak RSS of every worker and of the client (which also hosts the local scheduler)
for each slide size, each size run in a fresh child process with a fresh cluster (goal: flat,
the largest slide within 1.15x of the smallest).

``scaling``: e2e and model-only with 1 vs 2 worker processes (interleaved), and a batch size
sweep (model-only and e2e). On a GPU also mixed precision on/off and the GPU's idle share during
a run (sampled with ``nvidia-smi``); without one these are recorded as not measured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import write_atomic

log = logging.getLogger(__name__)

FORMAT = "wsi-seg-bench/1"
PARTS = ("throughput", "seeds", "memory", "scaling")
NOT_MEASURED_GPU = "not measured: no GPU"
#: Environment variables that change TensorFlow's or OpenMP's speed, recorded with the machine.
ENV_PREFIXES = ("TF_ENABLE_", "TF_CPP_", "TF_NUM_", "TF_XLA_", "TF_GPU_", "TF_FORCE_",
                "TF_INTRA_", "TF_INTER_", "OMP_", "KMP_", "MKL_", "CUDA_VISIBLE_DEVICES")


# -- configuration ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How a model kind is run: the settings of ``pipelines/unet-10x-gaussian.toml`` and
    ``pipelines/patch-idc-50px.toml``."""

    kind: str
    overlap: float = 0.25
    stride_px: int | None = None
    blend: str = "gaussian"
    block_px: int = 4096
    chunk_px: int = 1024
    batch_size: int = 16
    min_area_um2: float = 1000.0
    simplify_um: float = 1.0


PROFILES = {
    "unet": Profile("unet"),
    "patch": Profile("patch", stride_px=25, blend="constant", block_px=2048, chunk_px=512,
                     batch_size=256, min_area_um2=20000.0, simplify_um=4.0),
}


@dataclass(frozen=True)
class BenchConfig:
    """What to measure and where.

    Attributes:
        out_dir: where ``bench.json``, ``bench.md`` and the runs' outputs go.
        cache_dir: synthetic slides, ``synth-<size>-seed<seed>.svs`` (+ truth), reused.
        sizes: level-0 edges (px, square) of the slides for throughput and stages.
        memory_sizes: slide edges for the memory measurement (default: ``sizes``).
        seeds_size: slide edge for the seeds' way (default: the smallest size).
        scaling_size: slide edge for workers and batch size scaling (default: smallest).
        models: model kinds to measure (``unet``, ``patch``).
        model_paths: ``kind -> MODEL.keras``; missing kinds use the bundled demo models.
        repeats: rounds of every interleaved comparison.
        seed: synthetic slide seed.
        slide_mpp: level-0 µm/px of the synthetic slides.
        workers: local worker processes (None:
        :func:`wsi_seg.orchestration.cluster.plan_local_workers`).
        threads_per_worker: task threads per worker (None: the plan's).
        model_seconds: cap on one model-only measurement.
        seeds_seconds: cap on one seeds'-way measurement.
        batch_sizes: ``kind -> batch sizes`` for the sweep.
        parts: which of :data:`PARTS` to run.
        keep_outputs: keep the runs' mosaics and GeoJSON (else removed at the end).
    """

    out_dir: Path
    cache_dir: Path
    sizes: tuple[int, ...] = (10000, 30000)
    memory_sizes: tuple[int, ...] | None = None
    seeds_size: int | None = None
    scaling_size: int | None = None
    models: tuple[str, ...] = ("unet", "patch")
    model_paths: dict[str, Path] = field(default_factory=dict)
    repeats: int = 3
    seed: int = 100
    slide_mpp: float = 0.5
    workers: int | None = None
    threads_per_worker: int | None = None
    model_seconds: float = 20.0
    seeds_seconds: float = 20.0
    batch_sizes: dict[str, tuple[int, ...]] = field(default_factory=lambda: {
        "unet": (4, 8, 16, 32), "patch": (64, 128, 256, 512)})
    parts: tuple[str, ...] = PARTS
    keep_outputs: bool = False

    def model_path(self, kind: str) -> Path:
        if kind in self.model_paths:
            return Path(self.model_paths[kind])
        from wsi_seg.stages.card import bundled_model_path

        return bundled_model_path(kind)


def quick_config(out_dir: Path, cache_dir: Path, **changes: Any) -> BenchConfig:
    """A run of a minute or two on a small slide: every code path, no meaningful numbers."""
    base = BenchConfig(out_dir=out_dir, cache_dir=cache_dir, sizes=(4000,), repeats=1,
                       model_seconds=3.0, seeds_seconds=3.0,
                       batch_sizes={"unet": (8, 16), "patch": (128, 256)})
    return replace(base, **changes)


# -- statistics ---------------------------------------------------------------------------------
def summary(values: Sequence[float], digits: int = 3) -> dict[str, Any]:
    """Median, min, max and the values of repeated measurements."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": round(statistics.median(vals), digits), "min": round(min(vals), digits),
            "max": round(max(vals), digits), "n": len(vals),
            "values": [round(v, digits) for v in vals]}


def rotate(items: Sequence[Any], k: int) -> list[Any]:
    """``items`` rotated left by ``k`` (interleaving order of round ``k``)."""
    if not items:
        return []
    k %= len(items)
    return list(items[k:]) + list(items[:k])


# -- machine and memory -------------------------------------------------------------------------
def _meminfo_total() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L`` (empty without NVIDIA GPUs)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[2]
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The machine and software a record was measured on."""
    from wsi_seg.orchestration.cluster import cpu_count
    from wsi_seg.orchestration.runner import versions

    total = _meminfo_total()
    return {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "cores_total": os.cpu_count(),
        "ram_gib": round(total / 2**30, 1) if total else None,
        "gpus": nvidia_gpus(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "wsi_seg_version": __version__,
        "git_commit": _git_commit(),
        "versions": versions(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
    }


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (Linux ``clear_refs`` 5); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start (or since the last reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)


def rss_bytes() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return peak_rss_bytes()


def _mib(n: float | int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


# -- slides -------------------------------------------------------------------------------------
def slide_name(size: int, seed: int) -> str:
    return f"synth-{size}-seed{seed}"


def ensure_slide(cache_dir: Path, size: int, seed: int, mpp: float = 0.5,
                 say: Callable[[str], None] = print) -> dict[str, Any]:
    """The cached synthetic slide of this size and seed (written on first use) and its truth."""
    from wsi_seg.tools.synth import write_synthetic_slide

    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{slide_name(size, seed)}.svs"
    truth = cache_dir / f"{slide_name(size, seed)}.tumor.geojson"
    seconds = None
    if not (path.is_file() and truth.is_file()):
        say(f"bench: writing synthetic slide {path} ({size} x {size} px, seed {seed}); "
            "cached for later runs")
        t = time.perf_counter()
        write_synthetic_slide(path, (size, size), seed=seed, mpp=mpp)
        seconds = round(time.perf_counter() - t, 1)
    return {"size_px": size, "seed": seed, "path": str(path), "truth": str(truth),
            "file_mb": round(path.stat().st_size / 1e6, 1), "written_s": seconds}


# -- worker-side tasks --------------------------------------------------------------------------
def _model_only_task(model_path: str, infer: Any, n_predictions: int, max_s: float,
                     seed: int) -> dict[str, Any]:
    """Predict random in-memory tiles through the worker's cached predictor (full batches)."""
    from wsi_seg.stages.infer import cached_predictor

    predictor = cached_predictor(model_path, infer)
    roi, bs = predictor.roi_px, predictor.batch_size
    rng = np.random.default_rng(seed)
    tiles = rng.integers(0, 256, (2 * bs, roi, roi, 3), dtype=np.uint8)
    predictor(tiles[:bs])  # traced already when warm; a no-op cost otherwise
    done, i = 0, 0
    t0 = time.perf_counter()
    while done < n_predictions:
        predictor(tiles[(i % 2) * bs : (i % 2 + 1) * bs])
        done += bs
        i += 1
        if time.perf_counter() - t0 > max_s:
            break
    return {"predictions": done, "seconds": time.perf_counter() - t0,
            "device": predictor.device}


def _read_only_task(slide_path: str, mpp: float, task: Any, roi_px: int) -> float:
    """Read one block's image as :func:`wsi_seg.orchestration.pipeline.run_block` does (the box of
    its
    kept windows); seconds."""
    from wsi_seg.orchestration.pipeline import slide_handles
    from wsi_seg.stages.blend import kept_extent

    yw, xw, h_px, w_px = kept_extent(task.starts_y, task.starts_x, task.keep, roi_px)
    with slide_handles.hold(Path(slide_path), None) as slide:
        t = time.perf_counter()
        slide.read_w(xw, yw, w_px, h_px, mpp)
        return time.perf_counter() - t


def _worker_peak() -> dict[str, int]:
    return {"peak_rss": peak_rss_bytes(), "rss": rss_bytes()}


def _worker_reset() -> bool:
    return reset_peak_rss()


def _worker_device(model_path: str, infer: Any) -> str:
    from wsi_seg.orchestration.pipeline import warm_worker

    return warm_worker(Path(model_path), infer).device


# -- clusters -----------------------------------------------------------------------------------
@dataclass
class Bench:
    """A live local cluster and the facts the measurements share."""

    client: Any
    cluster: Any
    workers: int
    threads_per_worker: int
    tf_threads: int
    gpus: int
    devices: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return str(self.cluster.scheduler_address)

    def worker_addresses(self) -> list[str]:
        return list(self.client.scheduler_info().get("workers", {}))

    def infer(self, batch_size: int, mixed_precision: bool = False) -> Any:
        from wsi_seg.stages.infer import InferConfig

        return InferConfig(batch_size=batch_size, mixed_precision=mixed_precision,
                           threads=self.tf_threads)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        with contextlib.suppress(Exception):
            self.cluster.close()


def start_cluster(workers: int | None = None, threads_per_worker: int | None = None) -> Bench:
    """A local cluster as :func:`wsi_seg.orchestration.cluster.connect` starts one for ``wsi-seg
    run``."""
    from distributed import Client, LocalCluster

    from wsi_seg.orchestration.cluster import ClusterConfig, plan_local_workers

    plan = plan_local_workers(ClusterConfig(workers=workers,
                                            threads_per_worker=threads_per_worker))
    cluster = LocalCluster(n_workers=plan.workers, threads_per_worker=plan.threads_per_worker,
                           processes=True, dashboard_address="127.0.0.1:0", host="127.0.0.1",
                           resources={"GPU": 1} if plan.gpus else None,
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    client.wait_for_workers(plan.workers)
    return Bench(client, cluster, plan.workers, plan.threads_per_worker, plan.tf_threads,
                 plan.gpus)


@contextlib.contextmanager
def cluster_session(workers: int | None = None, threads_per_worker: int | None = None
                    ) -> Iterator[Bench]:
    bench = start_cluster(workers, threads_per_worker)
    try:
        yield bench
    finally:
        bench.close()


def warm(bench: Bench, model_path: Path, infer: Any) -> list[str]:
    """Load and trace the model on every worker; the devices they use."""
    futs = [bench.client.submit(_worker_device, str(model_path), infer, pure=False,
                                workers=[a], allow_other_workers=False)
            for a in bench.worker_addresses()]
    devices = [f.result() for f in futs]
    bench.devices = sorted(set(devices) | set(bench.devices))
    return devices


# -- the measurements ---------------------------------------------------------------------------
def _load() -> float:
    return round(os.getloadavg()[0], 2)


def run_config(cfg: BenchConfig, kind: str, out_dir: Path, infer: Any, truth_dir: Path) -> Any:
    from wsi_seg.orchestration.pipeline import RunConfig

    p = PROFILES[kind]
    return RunConfig(out_dir=out_dir, model_path=cfg.model_path(kind), slide_mpp=None,
                     overlap=p.overlap, stride_px=p.stride_px, blend=p.blend,
                     block_px=p.block_px, chunk_px=p.chunk_px, infer=infer,
                     min_area_um2=p.min_area_um2, simplify_um=p.simplify_um, truth=truth_dir,
                     overwrite=True)


def plan_of(slide: dict[str, Any], run_cfg: Any) -> Any:
    """The slide's block plan exactly as the run makes it (a scratch work directory)."""
    from wsi_seg.orchestration.pipeline import prepare_slide

    scratch = Path(run_cfg.out_dir) / ".plan"
    try:
        return prepare_slide(Path(slide["path"]), replace(run_cfg, out_dir=scratch))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def measure_e2e(bench: Bench, slide: dict[str, Any], run_cfg: Any,
                gpu_sampler: GpuSampler | None = None) -> dict[str, Any]:
    """One real ``run_slides`` of the slide on the bench cluster; its figures."""
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.pipeline import slide_stem
    from wsi_seg.orchestration.runner import run_slides

    out = Path(run_cfg.out_dir)
    if out.exists():
        shutil.rmtree(out)
    load0 = _load()
    if gpu_sampler:
        gpu_sampler.start()
    t = time.perf_counter()
    result = run_slides([Path(slide["path"])], run_cfg, ClusterConfig(scheduler=bench.address),
                        quiet=True, gpu_resource=bool(bench.gpus) or None)
    wall = time.perf_counter() - t
    gpu = gpu_sampler.stop() if gpu_sampler else None
    if not result.ok:
        raise WsiSegError(f"benchmark run failed: {result.slides[0].get('error')}",
                          slide["path"])
    report = json.loads((out / slide_stem(Path(slide["path"])) / "report.json").read_text())
    stages = report["stage_s"]
    finish = sum(stages.get(k, 0.0) for k in FINISH_STAGES)
    rec = {
        "wall_s": wall,
        # The blocks phase (reports before 58300ab called it wall_s).
        "blocks_wall_s": report.get("blocks_wall_s", report["wall_s"]),
        "finish_s": finish,
        "tiles": report["tiles"],
        "tile_predictions": report["tile_predictions"],
        "blocks": report["blocks"],
        "tiles_per_s": report["tiles"] / wall,
        "blocks_tiles_per_s": report.get("blocks_tiles_per_s", report["tiles_per_s"]),
        "predictions_per_s": report["tile_predictions"] / wall,
        "stage_s": stages,
        "score": report.get("score"),
        "load_avg": [load0, _load()],
    }
    if gpu is not None:
        rec["gpu"] = gpu
    return rec


def measure_cold(slide: dict[str, Any], run_cfg: Any, workers: int | None,
                 threads_per_worker: int | None) -> dict[str, Any]:
    """One ``run_slides`` exactly as ``wsi-seg run`` does it: a fresh local cluster, whose
    start, TensorFlow import and model load are part of the wall time."""
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.runner import run_slides

    out = Path(run_cfg.out_dir)
    if out.exists():
        shutil.rmtree(out)
    infer = run_cfg.infer
    cfg = replace(run_cfg, infer=replace(infer, threads=None))
    t = time.perf_counter()
    result = run_slides([Path(slide["path"])], cfg,
                        ClusterConfig(workers=workers, threads_per_worker=threads_per_worker,
                                      dashboard=False), quiet=True)
    wall = time.perf_counter() - t
    if not result.ok:
        raise WsiSegError(f"benchmark run failed: {result.slides[0].get('error')}",
                          slide["path"])
    return {"wall_s": wall, "tiles": result.tiles}


def measure_model_only(bench: Bench, model_path: Path, infer: Any, n_predictions: int,
                       max_s: float, seed: int = 0, callers: int | None = None
                       ) -> dict[str, Any]:
    """Model-only predictions/s: every worker predicts random tiles at once, with as many
    concurrent callers per worker as a run has task threads (``callers``), so the model sees
    the same concurrency as in a run (one caller leaves the cores idle while Python
    prepares a batch, which would understate the limit)."""
    addrs = bench.worker_addresses()
    callers = callers or bench.threads_per_worker
    n_tasks = len(addrs) * callers
    per_task = max(infer.batch_size, -(-n_predictions // n_tasks))
    load0 = _load()
    t = time.perf_counter()
    futs = [bench.client.submit(_model_only_task, str(model_path), infer, per_task, max_s,
                                seed + i, pure=False, workers=[a], allow_other_workers=False)
            for i, a in enumerate(addrs * callers)]
    parts = [f.result() for f in futs]
    wall = time.perf_counter() - t
    n = sum(p["predictions"] for p in parts)
    return {"predictions": n, "wall_s": wall, "predictions_per_s": n / wall,
            "callers_per_worker": callers,
            "device": sorted({p["device"] for p in parts}), "load_avg": [load0, _load()]}


def measure_read_only(bench: Bench, slide: dict[str, Any], job: Any) -> dict[str, Any]:
    """Read-only: the same blocks' images, read on the same workers and threads, no model."""
    load0 = _load()
    t = time.perf_counter()
    futs = [bench.client.submit(_read_only_task, slide["path"], job.mpp, task,
                                job.spec.roi_px, pure=False) for task in job.tasks]
    secs = [f.result() for f in futs]
    wall = time.perf_counter() - t
    return {"wall_s": wall, "read_task_s": sum(secs), "tiles_per_s": job.n_tiles / wall,
            "predictions_per_s": job.n_tile_predictions / wall, "load_avg": [load0, _load()]}


def time_budget(job: Any, batch_size: int, e2e: list[dict[str, Any]],
                model: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the run's wall time goes, against the model's own pace (medians, seconds).

    ``model_distinct_s`` is what the model alone needs for the distinct windows; the other
    terms are what the run adds: re-predicted halo windows, padding of each block's last batch,
    the rest of the blocks phase not hidden behind prediction (reading, cutting, blending,
    writing, and their contention with the model for the cores), the serial finishing stages,
    and the rest (planning, tissue, scheduling, records). They sum to the wall time.
    """
    rate = statistics.median(m["predictions_per_s"] for m in model)
    wall = statistics.median(e["wall_s"] for e in e2e)
    blocks = statistics.median(e["blocks_wall_s"] for e in e2e)
    finish = statistics.median(e["finish_s"] for e in e2e)
    pad = sum(-(-t.block.n_windows // batch_size) * batch_size - t.block.n_windows
              for t in job.tasks)
    terms = {
        "model_distinct_s": job.n_tiles / rate,
        "halo_duplicates_s": (job.n_tile_predictions - job.n_tiles) / rate,
        "batch_padding_s": pad / rate,
    }
    terms["blocks_not_hidden_s"] = blocks - sum(terms.values())
    terms["finish_s"] = finish
    terms["other_s"] = wall - blocks - finish
    return {"wall_s": round(wall, 3), "padded_predictions": pad,
            **{k: round(v, 3) for k, v in terms.items()},
            "shares": {k.removesuffix("_s"): round(v / wall, 4) for k, v in terms.items()}}


BLOCK_STAGES = ("load", "read", "cut", "predict", "blend", "write")
FINISH_STAGES = ("pyramid", "vectorize", "geojson", "score", "overlay")


def stage_table(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median stage seconds over repeated runs and their share of the median wall time."""
    wall = statistics.median(r["wall_s"] for r in runs)
    blocks_wall = statistics.median(r["blocks_wall_s"] for r in runs)
    keys = sorted({k for r in runs for k in r["stage_s"]},
                  key=lambda k: ((BLOCK_STAGES + FINISH_STAGES).index(k)
                                 if k in BLOCK_STAGES + FINISH_STAGES else 99, k))
    rows = {}
    for k in keys:
        total = statistics.median(r["stage_s"].get(k, 0.0) for r in runs)
        rows[k] = {"total_s": round(total, 3), "share_of_wall": round(total / wall, 4),
                   "kind": "block (task-thread seconds)" if k in BLOCK_STAGES
                   else "finish (serial)"}
    finish = sum(rows[k]["total_s"] for k in rows if k in FINISH_STAGES)
    other = max(0.0, wall - blocks_wall - finish)
    return {"wall_s": round(wall, 3), "blocks_wall_s": round(blocks_wall, 3),
            "finish_s": round(finish, 3), "other_s": round(other, 3),
            "other_share_of_wall": round(other / wall, 4), "stages": rows}


def seeds_way(slide: dict[str, Any], model_path: Path, job: Any, max_s: float
              ) -> dict[str, Any]:
    """The seeds' way: ``read_region`` + ``model.predict`` per tile, stitched into one array.

    Runs in this process over the same windows the plan predicts (row-major), until all are
    done or ``max_s`` has passed; tiles/s over the windows done.
    """
    import cv2
    import openslide

    from wsi_seg.stages.card import load_model
    from wsi_seg.stages.models import preprocess

    model, card = load_model(model_path)
    roi = card.input_size_px
    osr = openslide.OpenSlide(slide["path"])
    try:
        slide_mpp = float(osr.properties.get(openslide.PROPERTY_NAME_MPP_X, 0) or 0.5)
        f = card.mpp / slide_mpp
        level = osr.get_best_level_for_downsample(f)
        ds = float(osr.level_downsamples[level])
        side = max(1, round(roi * f / ds))
        h_w, w_w = job.geom.height_px, job.geom.width_px
        out = np.zeros((h_w, w_w), np.float32)  # the whole slide at the working resolution
        windows = [(int(y), int(x)) for t in job.tasks
                   for i, y in enumerate(t.starts_y) for j, x in enumerate(t.starts_x)
                   if t.keep[i, j]]
        windows = sorted(set(windows))
        x0 = np.zeros((1, roi, roi, 3), np.uint8)
        model.predict(preprocess(x0, card), verbose=0)  # load and build outside the clock
        done = 0
        t0 = time.perf_counter()
        for yw, xw in windows:
            region = osr.read_region((int(xw * f), int(yw * f)), level, (side, side))
            tile = np.asarray(region.convert("RGB"))
            if side != roi:
                tile = cv2.resize(tile, (roi, roi), interpolation=cv2.INTER_AREA)
            p = model.predict(preprocess(tile[None], card), verbose=0)
            ys, xs = max(0, yw), max(0, xw)
            h, w = min(roi, h_w - ys), min(roi, w_w - xs)
            if card.kind == "unet":
                out[ys : ys + h, xs : xs + w] = p[0, :h, :w, 0]
            else:
                out[ys : ys + h, xs : xs + w] = float(np.ravel(p)[0])
            done += 1
            if time.perf_counter() - t0 > max_s:
                break
        secs = time.perf_counter() - t0
    finally:
        osr.close()
    return {"tiles": done, "tiles_total": len(windows), "seconds": secs,
            "tiles_per_s": done / secs if secs > 0 else None,
            "complete": done == len(windows), "array_mib": _mib(out.nbytes)}


class GpuSampler:
    """Samples ``nvidia-smi`` GPU utilisation in a thread while a run goes on."""

    def __init__(self, period_s: float = 0.2) -> None:
        self.period_s = period_s
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.samples = []
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        exe = shutil.which("nvidia-smi")
        if not exe:
            return
        while not self._stop.is_set():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired, ValueError):
                out = subprocess.run([exe, "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True,
                                     text=True, timeout=5, check=False)
                vals = [float(v) for v in out.stdout.split()]
                if vals:
                    self.samples.append(statistics.mean(vals))
            self._stop.wait(self.period_s)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        s = self.samples
        return {"samples": len(s),
                "mean_utilisation": round(statistics.mean(s), 1) if s else None,
                "idle_share": round(sum(v < 5 for v in s) / len(s), 3) if s else None}


# -- the benchmark ------------------------------------------------------------------------------
class Benchmark:
    """Runs the parts of a :class:`BenchConfig` and assembles the record."""

    def __init__(self, cfg: BenchConfig, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.say = say or (lambda s: print(s, file=sys.stderr, flush=True))
        self.record: dict[str, Any] = {"format": FORMAT, "machine": machine_info(),
                                       "config": _jsonable(asdict(cfg)), "slides": {},
                                       "notes": []}
        self.runs_dir = cfg.out_dir / "runs"

    # helpers
    def slide(self, size: int) -> dict[str, Any]:
        key = str(size)
        if key not in self.record["slides"]:
            self.record["slides"][key] = ensure_slide(self.cfg.cache_dir, size, self.cfg.seed,
                                                      self.cfg.slide_mpp, self.say)
        return dict(self.record["slides"][key])

    def save(self) -> None:
        write_outputs(self.record, self.cfg.out_dir)

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        for size in sorted(set(cfg.sizes) | set(cfg.memory_sizes or ())
                           | {cfg.seeds_size or min(cfg.sizes),
                              cfg.scaling_size or min(cfg.sizes)}):
            if size in cfg.sizes or "memory" in cfg.parts:
                self.slide(size)
        for kind in cfg.models:
            cfg.model_path(kind)  # a missing model fails now, not after an hour
        if {"throughput", "seeds", "scaling"} & set(cfg.parts):
            with cluster_session(cfg.workers, cfg.threads_per_worker) as bench:
                self.record["cluster"] = {"workers": bench.workers,
                                          "threads_per_worker": bench.threads_per_worker,
                                          "tf_threads": bench.tf_threads, "gpus": bench.gpus}
                for kind in cfg.models:
                    warm(bench, cfg.model_path(kind), bench.infer(PROFILES[kind].batch_size))
                self.record["cluster"]["devices"] = bench.devices
                if "throughput" in cfg.parts or "seeds" in cfg.parts:
                    self.throughput(bench)
                    self.save()
                if "scaling" in cfg.parts:
                    self.scaling(bench)
                    self.save()
        if "memory" in cfg.parts:
            self.memory()
        self.record["machine"]["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        self.record["total_s"] = round(time.perf_counter() - t0, 1)
        if not cfg.keep_outputs:
            shutil.rmtree(self.runs_dir, ignore_errors=True)
        self.save()
        return self.record

    # (1)-(4)
    def throughput(self, bench: Bench) -> None:
        cfg = self.cfg
        seeds_size = cfg.seeds_size or min(cfg.sizes)
        sizes = list(cfg.sizes)
        if "seeds" in cfg.parts and seeds_size not in sizes:
            sizes.append(seeds_size)
        do_tp = "throughput" in cfg.parts
        entries: list[dict[str, Any]] = []
        seeds: list[dict[str, Any]] = []
        for size in sizes:
            slide = self.slide(size)
            jobs, run_cfgs = {}, {}
            for kind in cfg.models:
                infer = bench.infer(PROFILES[kind].batch_size)
                run_cfgs[kind] = run_config(cfg, kind, self.runs_dir / f"{kind}-{size}", infer,
                                            cfg.cache_dir)
                jobs[kind] = plan_of(slide, run_cfgs[kind])
            with_seeds = "seeds" in cfg.parts and size == seeds_size
            tp_here = do_tp and size in cfg.sizes
            items = []
            for kind in cfg.models:
                items.append(("e2e", kind))
                if tp_here:
                    items += [("model", kind), ("read", kind)]
                if with_seeds:
                    items.append(("seeds", kind))
            got: dict[tuple[str, str], list[dict[str, Any]]] = {it: [] for it in items}
            for r in range(cfg.repeats):
                for what, kind in rotate(items, r):
                    self.say(f"bench: {size} px, {kind}: {what} (round {r + 1}/{cfg.repeats})")
                    got[(what, kind)].append(self._measure(bench, what, kind, slide, jobs[kind],
                                                           run_cfgs[kind]))
            for kind in cfg.models:
                e2e = got[("e2e", kind)]
                job = jobs[kind]
                if tp_here:
                    entry = self._throughput_entry(kind, slide, job, e2e, got[("model", kind)],
                                                   got[("read", kind)])
                    if size == min(cfg.sizes):
                        self.say(f"bench: {size} px, {kind}: cold run (fresh cluster)")
                        cold = measure_cold(slide, run_cfgs[kind], cfg.workers,
                                            cfg.threads_per_worker)
                        entry["e2e"]["cold_wall_s"] = round(cold["wall_s"], 3)
                        entry["e2e"]["startup_s"] = round(
                            cold["wall_s"] - entry["e2e"]["wall_s"]["median"], 3)
                    entries.append(entry)
                if with_seeds:
                    sw = got[("seeds", kind)]
                    speed = [e["tiles_per_s"] / s["tiles_per_s"] for e, s in zip(e2e, sw,
                                                                                  strict=True)]
                    seeds.append({
                        "model": kind, "size_px": size, "tiles": job.n_tiles,
                        "seeds_tiles_per_s": summary([s["tiles_per_s"] for s in sw]),
                        "seeds_tiles_done": [s["tiles"] for s in sw],
                        "seeds_complete": all(s["complete"] for s in sw),
                        "seeds_array_mib": sw[0]["array_mib"],
                        "wsi_seg_tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
                        "speedup": summary(speed, 2),
                    })
            self.record["throughput"] = entries
            if seeds:
                self.record["seeds_way"] = seeds
            self.save()

    def _measure(self, bench: Bench, what: str, kind: str, slide: dict[str, Any], job: Any,
                 run_cfg: Any) -> dict[str, Any]:
        cfg = self.cfg
        if what == "e2e":
            return measure_e2e(bench, slide, run_cfg)
        if what == "model":
            return measure_model_only(bench, cfg.model_path(kind), run_cfg.infer,
                                      job.n_tile_predictions, cfg.model_seconds)
        if what == "read":
            return measure_read_only(bench, slide, job)
        return seeds_way(slide, cfg.model_path(kind), job, cfg.seeds_seconds)

    def _throughput_entry(self, kind: str, slide: dict[str, Any], job: Any,
                          e2e: list[dict[str, Any]], model: list[dict[str, Any]],
                          read: list[dict[str, Any]]) -> dict[str, Any]:
        dup = job.n_tile_predictions / job.n_tiles if job.n_tiles else 1.0
        limit_model = [m["predictions_per_s"] / dup for m in model]
        ratio, ratio_blocks, ratio_lit, limiting = [], [], [], []
        for e, lm, m, rd in zip(e2e, limit_model, model, read, strict=True):
            lim = min(lm, rd["tiles_per_s"])
            limiting.append("model" if lm <= rd["tiles_per_s"] else "read")
            ratio.append(e["tiles_per_s"] / lim)
            ratio_blocks.append(e["blocks_tiles_per_s"] / lim)
            ratio_lit.append(e["tiles_per_s"] / min(m["predictions_per_s"], rd["tiles_per_s"]))
        p = PROFILES[kind]
        return {
            "budget": time_budget(job, p.batch_size, e2e, model),
            "model": kind, "model_path": str(self.cfg.model_path(kind)),
            "size_px": slide["size_px"], "batch_size": p.batch_size,
            "tile_px": job.card.input_size_px, "step_px": job.spec.step_px, "mpp": job.mpp,
            "block_px": p.block_px, "blocks": job.n_blocks, "tiles": job.n_tiles,
            "tile_predictions": job.n_tile_predictions, "halo_factor": round(dup, 4),
            "tissue_fraction": round(job.tissue_fraction, 4),
            "e2e": {
                "tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
                "blocks_tiles_per_s": summary([e["blocks_tiles_per_s"] for e in e2e]),
                "predictions_per_s": summary([e["predictions_per_s"] for e in e2e]),
                "wall_s": summary([e["wall_s"] for e in e2e]),
                "blocks_wall_s": summary([e["blocks_wall_s"] for e in e2e]),
                "load_avg": [e["load_avg"] for e in e2e],
                "score": e2e[-1].get("score"),
            },
            "model_only": {
                "predictions_per_s": summary([m["predictions_per_s"] for m in model]),
                "limit_tiles_per_s": summary(limit_model),
                "predictions": [m["predictions"] for m in model],
                "device": model[0]["device"] if model else None,
                "load_avg": [m["load_avg"] for m in model],
            },
            "read_only": {
                "tiles_per_s": summary([r["tiles_per_s"] for r in read]),
                "predictions_per_s": summary([r["predictions_per_s"] for r in read]),
                "read_task_s": summary([r["read_task_s"] for r in read]),
                "load_avg": [r["load_avg"] for r in read],
            },
            "limited_by": max(set(limiting), key=limiting.count) if limiting else None,
            "ratio": summary(ratio),
            "ratio_blocks": summary(ratio_blocks),
            "ratio_literal": summary(ratio_lit),
            "stages": stage_table(e2e),
        }

    # (6)
    def scaling(self, bench: Bench) -> None:
        cfg = self.cfg
        size = cfg.scaling_size or min(cfg.sizes)
        slide = self.slide(size)
        out: dict[str, Any] = {"size_px": size}
        other = 2 if bench.workers == 1 else 1
        with cluster_session(other, cfg.threads_per_worker) as alt:
            for kind in cfg.models:
                warm(alt, cfg.model_path(kind), alt.infer(PROFILES[kind].batch_size))
            clusters = [bench, alt]
            items = [(c, kind, what) for c in range(2) for kind in cfg.models
                     for what in ("e2e", "model")]
            got: dict[tuple[int, str, str], list[dict[str, Any]]] = {it: [] for it in items}
            jobs = {}
            for r in range(cfg.repeats):
                for c, kind, what in rotate(items, r):
                    b = clusters[c]
                    infer = b.infer(PROFILES[kind].batch_size)
                    rc = run_config(cfg, kind, self.runs_dir / f"scale{c}-{kind}-{size}", infer,
                                    cfg.cache_dir)
                    if kind not in jobs:
                        jobs[kind] = plan_of(slide, rc)
                    self.say(f"bench: scaling, {b.workers} worker(s), {kind}: {what} "
                             f"(round {r + 1}/{cfg.repeats})")
                    if what == "e2e":
                        got[(c, kind, what)].append(measure_e2e(b, slide, rc))
                    else:
                        got[(c, kind, what)].append(measure_model_only(
                            b, cfg.model_path(kind), infer, jobs[kind].n_tile_predictions,
                            cfg.model_seconds))
            rows = []
            for c in range(2):
                b = clusters[c]
                for kind in cfg.models:
                    e2e = got[(c, kind, "e2e")]
                    rows.append({
                        "model": kind, "workers": b.workers,
                        "threads_per_worker": b.threads_per_worker, "tf_threads": b.tf_threads,
                        "e2e_tiles_per_s": summary([e["tiles_per_s"] for e in e2e]),
                        "model_only_predictions_per_s": summary(
                            [m["predictions_per_s"] for m in got[(c, kind, "model")]]),
                        "wall_s": summary([e["wall_s"] for e in e2e]),
                    })
            out["workers"] = rows
        out["batch_size"] = self._batch_sweep(bench, slide)
        out["mixed_precision"] = self._mixed_precision(bench, slide)
        out["gpu_idle_share"] = self._gpu_idle(bench, slide)
        self.record["scaling"] = out

    def _batch_sweep(self, bench: Bench, slide: dict[str, Any]) -> list[dict[str, Any]]:
        cfg = self.cfg
        items = [(kind, bs, what) for kind in cfg.models for bs in cfg.batch_sizes.get(kind, ())
                 for what in ("model", "e2e")]
        got: dict[tuple[str, int, str], list[dict[str, Any]]] = {it: [] for it in items}
        jobs = {}
        for r in range(cfg.repeats):
            for kind, bs, what in rotate(items, r):
                infer = bench.infer(bs)
                rc = run_config(cfg, kind, self.runs_dir / f"batch-{kind}-{bs}", infer,
                                cfg.cache_dir)
                if kind not in jobs:
                    jobs[kind] = plan_of(slide, rc)
                self.say(f"bench: batch {bs}, {kind}: {what} (round {r + 1}/{cfg.repeats})")
                if what == "model":
                    got[(kind, bs, what)].append(measure_model_only(
                        bench, cfg.model_path(kind), infer, jobs[kind].n_tile_predictions,
                        cfg.model_seconds))
                else:
                    got[(kind, bs, what)].append(measure_e2e(bench, slide, rc))
        rows = []
        for kind in cfg.models:
            for bs in cfg.batch_sizes.get(kind, ()):
                rows.append({
                    "model": kind, "batch_size": bs,
                    "model_only_predictions_per_s": summary(
                        [m["predictions_per_s"] for m in got[(kind, bs, "model")]]),
                    "e2e_tiles_per_s": summary(
                        [e["tiles_per_s"] for e in got[(kind, bs, "e2e")]]),
                })
        return rows

    def _mixed_precision(self, bench: Bench, slide: dict[str, Any]) -> dict[str, Any]:
        if not any(d.startswith("/GPU") for d in bench.devices):
            return {"measured": False, "note": NOT_MEASURED_GPU}
        cfg = self.cfg
        rows = []
        for kind in cfg.models:
            bs = PROFILES[kind].batch_size
            got: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            e2e: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
            for r in range(cfg.repeats):
                for mp in rotate([False, True], r):
                    infer = bench.infer(bs, mixed_precision=mp)
                    warm(bench, cfg.model_path(kind), infer)
                    rc = run_config(cfg, kind, self.runs_dir / f"mp-{kind}-{int(mp)}", infer,
                                    cfg.cache_dir)
                    job = plan_of(slide, rc)
                    got[mp].append(measure_model_only(bench, cfg.model_path(kind), infer,
                                                      job.n_tile_predictions,
                                                      cfg.model_seconds))
                    e2e[mp].append(measure_e2e(bench, slide, rc))
            for mp in (False, True):
                rows.append({"model": kind, "mixed_precision": mp,
                             "model_only_predictions_per_s": summary(
                                 [m["predictions_per_s"] for m in got[mp]]),
                             "e2e_tiles_per_s": summary([e["tiles_per_s"] for e in e2e[mp]])})
        return {"measured": True, "rows": rows}

    def _gpu_idle(self, bench: Bench, slide: dict[str, Any]) -> dict[str, Any]:
        if not any(d.startswith("/GPU") for d in bench.devices) or not nvidia_gpus():
            return {"measured": False, "note": NOT_MEASURED_GPU}
        cfg = self.cfg
        rows = []
        for kind in cfg.models:
            infer = bench.infer(PROFILES[kind].batch_size)
            rc = run_config(cfg, kind, self.runs_dir / f"gpu-{kind}", infer, cfg.cache_dir)
            samples = [measure_e2e(bench, slide, rc, GpuSampler())["gpu"]
                       for _ in range(cfg.repeats)]
            rows.append({"model": kind,
                         "idle_share": summary([s["idle_share"] or 0.0 for s in samples]),
                         "mean_utilisation": summary([s["mean_utilisation"] or 0.0
                                                      for s in samples])})
        return {"measured": True, "rows": rows}

    # (5)
    def memory(self) -> None:
        cfg = self.cfg
        rows = []
        for size in sorted(cfg.memory_sizes or cfg.sizes):
            slide = self.slide(size)
            for kind in cfg.models:
                self.say(f"bench: memory, {size} px, {kind} (fresh process and cluster)")
                args = {"slide": slide, "kind": kind, "model": str(cfg.model_path(kind)),
                        "out": str(self.runs_dir / f"mem-{kind}-{size}"),
                        "truth": str(cfg.cache_dir), "workers": cfg.workers,
                        "threads_per_worker": cfg.threads_per_worker}
                try:
                    rows.append(run_memory_child(args))
                except WsiSegError as exc:
                    rows.append({"model": kind, "size_px": size, "error": str(exc)})
                    self.record["notes"].append(f"memory {kind} {size}: {exc}")
                self.record["memory"] = memory_rows(rows)
                self.save()


def run_memory_child(args: dict[str, Any]) -> dict[str, Any]:
    """One e2e run in a fresh Python process; the peak RSS of its workers and of itself."""
    code = "import sys; from wsi_seg.tools.bench import _memory_child; _memory_child(sys.argv[1])"
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WsiSegError(f"memory run failed (exit {proc.returncode}): {tail[:400]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _memory_child(arg: str) -> None:
    args = json.loads(arg)
    kind = args["kind"]
    cfg = BenchConfig(out_dir=Path(args["out"]), cache_dir=Path(args["truth"]),
                      model_paths={kind: Path(args["model"])})
    with cluster_session(args["workers"], args["threads_per_worker"]) as bench:
        infer = bench.infer(PROFILES[kind].batch_size)
        rc = run_config(cfg, kind, Path(args["out"]), infer, Path(args["truth"]))
        warm(bench, cfg.model_path(kind), infer)
        after_warm = bench.client.run(_worker_peak)
        e2e = measure_e2e(bench, args["slide"], rc)
        peaks = bench.client.run(_worker_peak)
    shutil.rmtree(args["out"], ignore_errors=True)
    print(json.dumps({
        "model": kind, "size_px": args["slide"]["size_px"], "tiles": e2e["tiles"],
        "workers": len(peaks), "wall_s": round(e2e["wall_s"], 2),
        "tiles_per_s": round(e2e["tiles_per_s"], 2),
        "worker_peak_rss_mib": [_mib(v["peak_rss"]) for v in peaks.values()],
        "worker_rss_after_warm_mib": [_mib(v["rss"]) for v in after_warm.values()],
        "client_peak_rss_mib": _mib(peak_rss_bytes()),
    }), flush=True)


def memory_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each row's peak relative to the smallest slide of the same model."""
    base: dict[str, dict[str, Any]] = {}
    for r in sorted((r for r in rows if "error" not in r), key=lambda r: r["size_px"]):
        base.setdefault(r["model"], r)
    out = []
    for r in rows:
        r = dict(r)
        b = base.get(r["model"])
        if b is not None and "error" not in r:
            r["worker_peak_vs_smallest"] = round(max(r["worker_peak_rss_mib"])
                                                 / max(b["worker_peak_rss_mib"]), 3)
            r["client_peak_vs_smallest"] = round(r["client_peak_rss_mib"]
                                                 / b["client_peak_rss_mib"], 3)
        out.append(r)
    return out


# -- output -------------------------------------------------------------------------------------
def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_outputs(record: dict[str, Any], out_dir: Path,
                  markdown_fn: Callable[[dict[str, Any]], str] | None = None
                  ) -> tuple[Path, Path]:
    """Write ``bench.json`` and ``bench.md`` (atomically) into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    md = (markdown_fn or markdown)(record)
    for name, text in (("bench.json", json.dumps(_jsonable(record), indent=2) + "\n"),
                       ("bench.md", md)):
        paths.append(write_atomic(out_dir / name, text))
    return paths[0], paths[1]


def _s(x: dict[str, Any] | None, fmt: str = "{:.1f}") -> str:
    """``median (min-max)`` of a summary."""
    if not x or x.get("median") is None:
        return "n/a"
    med = fmt.format(x["median"])
    if x.get("n", 0) > 1:
        return f"{med} ({fmt.format(x['min'])}–{fmt.format(x['max'])})"
    return med


def _size(px: int) -> str:
    return f"{px // 1000}k" if px % 1000 == 0 else str(px)


def markdown(record: dict[str, Any]) -> str:
    """The record as markdown tables."""
    m = record.get("machine", {})
    v = m.get("versions", {})
    cl = record.get("cluster", {})
    lines = [
        "# wsi-seg bench",
        "",
        f"{m.get('date')} · {m.get('cores')} cores ({m.get('cpu')}), {m.get('ram_gib')} GiB RAM"
        f"{' · device ' + ', '.join(cl['devices']) if cl.get('devices') else ''}"
        f"{' · GPUs: ' + '; '.join(m['gpus']) if m.get('gpus') else ' · no GPU'}"
        f" · TF {v.get('tensorflow')}, wsi-seg {m.get('wsi_seg_version')}"
        f"{' (' + m['git_commit'] + ')' if m.get('git_commit') else ''}"
        f" · load avg {m.get('load_avg')} -> {m.get('load_avg_end')}",
        "",
        (f"Cluster: {cl.get('workers')} worker(s) x {cl.get('threads_per_worker')} task "
         f"threads, {cl.get('tf_threads')} TF thread(s) each. " if cl else "")
        + f"Figures: median (min–max) of {record.get('config', {}).get('repeats')} interleaved "
        f"rounds. Synthetic slides at {record.get('config', {}).get('slide_mpp')} µm/px, seed "
        f"{record.get('config', {}).get('seed')}.",
        "",
    ]
    tp = record.get("throughput") or []
    if tp:
        lines += [
            "## Throughput against the limits",
            "",
            "tiles = distinct windows predicted; predictions = model evaluations including "
            "halo duplicates. Limit = min(model-only as tiles of this plan, read-only).",
            "",
            "| model | slide | tiles (predictions) | e2e tiles/s | blocks-phase tiles/s | "
            "model-only predictions/s | model limit tiles/s | read-only tiles/s | limited by | "
            "ratio | ratio blocks | ratio literal |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for e in tp:
            lines.append(
                f"| {e['model']} (batch {e['batch_size']}) | {_size(e['size_px'])} | "
                f"{e['tiles']} ({e['tile_predictions']}) | {_s(e['e2e']['tiles_per_s'])} | "
                f"{_s(e['e2e']['blocks_tiles_per_s'])} | "
                f"{_s(e['model_only']['predictions_per_s'])} | "
                f"{_s(e['model_only']['limit_tiles_per_s'])} | "
                f"{_s(e['read_only']['tiles_per_s'])} | {e['limited_by']} | "
                f"{_s(e['ratio'], '{:.2f}')} | {_s(e['ratio_blocks'], '{:.2f}')} | "
                f"{_s(e['ratio_literal'], '{:.2f}')} |")
        lines += ["", "## Stage timings (median seconds; share of the run's wall time)", ""]
        lines += ["Block stages are task-thread seconds summed over blocks (they run in "
                  "parallel); finish stages run once, serially, after the blocks.", ""]
        keys: list[str] = []
        for e in tp:
            for k in e["stages"]["stages"]:
                if k not in keys:
                    keys.append(k)
        head = " | ".join(f"{e['model']} {_size(e['size_px'])}" for e in tp)
        lines += [f"| stage | {head} |", "|---|" + "---|" * len(tp)]
        for k in keys:
            cells = []
            for e in tp:
                row = e["stages"]["stages"].get(k)
                cells.append(f"{row['total_s']:.2f} s ({100 * row['share_of_wall']:.0f} %)"
                             if row else "–")
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("| other (prepare, scheduling) | " + " | ".join(
            f"{e['stages']['other_s']:.2f} s ({100 * e['stages']['other_share_of_wall']:.0f} %)"
            for e in tp) + " |")
        lines.append("| **run wall** | " + " | ".join(
            f"**{e['stages']['wall_s']:.2f} s** (blocks {e['stages']['blocks_wall_s']:.2f} s)"
            for e in tp) + " |")
        lines.append("")
    if tp:
        lines += ["## Where the wall time goes (against the model's own pace)", "",
                  "model (distinct windows) = tiles / model-only rate; the rest is what the run "
                  "adds to it. The ratio is about model / wall when the model is the limit.", "",
                  "| model | slide | wall s | model (distinct) | halo duplicates | batch padding "
                  "| blocks phase not hidden | finish (serial) | other | cold start |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for e in tp:
            b = e.get("budget") or {}
            sh = b.get("shares", {})

            def cell(k: str, b: dict[str, Any] = b, sh: dict[str, Any] = sh) -> str:
                return f"{b.get(k + '_s', 0):.2f} s ({100 * sh.get(k, 0):.0f} %)"

            startup = e["e2e"].get("startup_s")
            lines.append(
                f"| {e['model']} | {_size(e['size_px'])} | {b.get('wall_s')} | "
                f"{cell('model_distinct')} | {cell('halo_duplicates')} | "
                f"{cell('batch_padding')} | {cell('blocks_not_hidden')} | {cell('finish')} | "
                f"{cell('other')} | "
                f"{'+' + format(startup, '.1f') + ' s' if startup is not None else '–'} |")
        lines.append("")
    sw = record.get("seeds_way") or []
    if sw:
        lines += ["## The seeds' way (read_region + model.predict per tile + one numpy array)",
                  "", "| model | slide | seeds' tiles/s | wsi-seg tiles/s | speedup | "
                  "seeds' windows done | seeds' array |", "|---|---|---|---|---|---|---|"]
        for s in sw:
            lines.append(
                f"| {s['model']} | {_size(s['size_px'])} | {_s(s['seeds_tiles_per_s'], '{:.2f}')}"
                f" | {_s(s['wsi_seg_tiles_per_s'])} | {_s(s['speedup'], '{:.1f}')}x | "
                f"{min(s['seeds_tiles_done'])}–{max(s['seeds_tiles_done'])} of {s['tiles']}"
                f"{' (time-capped)' if not s['seeds_complete'] else ''} | "
                f"{s['seeds_array_mib']} MiB |")
        lines.append("")
    mem = record.get("memory") or []
    if mem:
        lines += ["## Peak memory (RSS, MiB; fresh processes per row)", "",
                  "| model | slide | tiles | workers' peak | client peak (+ scheduler) | "
                  "worker vs smallest | client vs smallest | tiles/s |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in mem:
            if "error" in r:
                lines.append(f"| {r['model']} | {_size(r['size_px'])} | failed: {r['error']} "
                             "| | | | | |")
                continue
            lines.append(
                f"| {r['model']} | {_size(r['size_px'])} | {r['tiles']} | "
                f"{', '.join(str(x) for x in r['worker_peak_rss_mib'])} | "
                f"{r['client_peak_rss_mib']} | {r.get('worker_peak_vs_smallest')}x | "
                f"{r.get('client_peak_vs_smallest')}x | {r['tiles_per_s']} |")
        lines.append("")
    sc = record.get("scaling")
    if sc:
        lines += [f"## Scaling ({_size(sc['size_px'])} slide)", "",
                  "| model | workers x task threads (TF threads) | e2e tiles/s | "
                  "model-only predictions/s |", "|---|---|---|---|"]
        for r in sc.get("workers", []):
            lines.append(f"| {r['model']} | {r['workers']} x {r['threads_per_worker']} "
                         f"({r['tf_threads']}) | {_s(r['e2e_tiles_per_s'])} | "
                         f"{_s(r['model_only_predictions_per_s'])} |")
        lines += ["", "| model | batch size | model-only predictions/s | e2e tiles/s |",
                  "|---|---|---|---|"]
        for r in sc.get("batch_size", []):
            lines.append(f"| {r['model']} | {r['batch_size']} | "
                         f"{_s(r['model_only_predictions_per_s'])} | "
                         f"{_s(r['e2e_tiles_per_s'])} |")
        lines.append("")
        for key, title in (("mixed_precision", "Mixed precision"),
                           ("gpu_idle_share", "GPU idle share")):
            part = sc.get(key) or {}
            if not part.get("measured"):
                lines.append(f"{title}: {part.get('note', NOT_MEASURED_GPU)}.")
            else:
                for r in part["rows"]:
                    lines.append(f"{title}: {json.dumps(_jsonable(r))}")
        lines.append("")
    return markdown_end(record, lines)


def markdown_end(record: dict[str, Any], lines: list[str]) -> str:
    """The record's notes and total time after ``lines``, as one markdown text."""
    lines = [*lines, *(f"Note: {note}" for note in record.get("notes") or [])]
    if record.get("total_s") is not None:
        lines.append(f"Benchmark took {record['total_s']} s.")
    return "\n".join(lines).rstrip() + "\n"
