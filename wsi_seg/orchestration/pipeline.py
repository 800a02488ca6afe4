"""One slide, end to end, as block tasks plus a finishing task.

:func:`prepare_slide` (cheap, on the client) opens the slide, finds tissue, plans blocks and
creates (or reopens, to resume) the slide's work directory ``OUT/.<stem>.partial/``.
:func:`run_block` (one Dask task per block, on any worker) reads the block's halo at the model's
MPP, predicts and blends its windows, and writes the Zarr chunks the block alone owns, then drops
a completion marker. :func:`finish_slide` builds the pyramid, vectorizes, writes GeoJSON, the
overlay and ``report.json``, and renames the work directory to ``OUT/<stem>/``, so a slide's
outputs appear only when complete. A rerun skips finished slides and, in an unfinished one,
redoes only the blocks without a marker.

Functions here take and return small picklable values (paths, frozen dataclasses), never a
model or a slide handle: workers keep those in per-process caches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import decode_json, write_json_atomic
from wsi_seg.core.naming import TRUTH_PATTERNS, slide_identity, slide_stem, truth_candidates
from wsi_seg.stages.blend import BlendSpec, blend_block, blend_mode, kept_extent, to_uint8
from wsi_seg.stages.card import ModelCard, bundled_model_path, read_card, sha256_file
from wsi_seg.stages.infer import InferConfig, cached_predictor, warm_predictor
from wsi_seg.stages.mosaic import (
    MosaicGeometry,
    block_levels,
    build_pyramid,
    create_mosaic,
    open_mosaic,
    write_block,
)
from wsi_seg.stages.slide import Slide, open_slide
from wsi_seg.stages.tiling import Block, plan_blocks, step_for
from wsi_seg.stages.tissue import MIN_AREA_SLIDE_FRACTION, TissueConfig, find_tissue, scaled_minimum

PARTIAL_SUFFIX = ".partial"
#: Windows a block hands the predictor at a time when the batch size is left to the device.
CHUNK_WINDOWS = 64
MARKERS = "blocks"
REPORT = "report.json"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides a run's outputs, plus how to execute it.

    Attributes:
        out_dir: output folder (``OUT``).
        model_path: ``MODEL.keras`` with its card; None for the bundled demo UNet.
        slide_mpp: level-0 µm/px overriding slide metadata (needed when it is missing).
        overlap: window overlap fraction (MONAI's step rule).
        stride_px: window step in working pixels, overriding ``overlap`` (patch models).
        blend: ``gaussian``, ``hann`` or ``constant``; None: gaussian for a UNet, constant
            (box footprint) for a patch classifier.
        sigma_scale: Gaussian sigma as a fraction of the window.
        block_px, chunk_px: block and mosaic chunk edges, working pixels.
        infer: model execution (batch size, device, mixed precision, threads).
        threshold: tumour probability threshold; None: the model card's.
        min_area_um2: smallest tumour region kept in the GeoJSON, µm².
        simplify_um: polygon simplification tolerance, µm.
        vectorize_level: mosaic pyramid level traced into polygons (0 = working MPP).
        truth: ground-truth file, or a folder searched for the slide's truth file.
        truth_patterns: file names tried in a truth folder, in order; ``{stem}`` is the
            slide's output name, then its stem (:func:`naming.truth_candidates`), ``{name}`` its
            file name.
        truth_classes: class names counted as tumour (None: the reader's default set).
        tissue: tissue detection settings.
        overwrite: redo finished slides.
    """

    out_dir: Path
    model_path: Path | None = None
    slide_mpp: float | None = None
    overlap: float = 0.25
    stride_px: int | None = None
    blend: str | None = None
    sigma_scale: float = 0.125
    block_px: int = 4096
    chunk_px: int = 1024
    infer: InferConfig = field(default_factory=InferConfig)
    threshold: float | None = None
    min_area_um2: float = 1000.0
    simplify_um: float = 1.0
    vectorize_level: int = 0
    truth: Path | None = None
    truth_patterns: tuple[str, ...] = TRUTH_PATTERNS
    truth_classes: tuple[str, ...] | None = None
    tissue: TissueConfig = field(default_factory=TissueConfig)
    overwrite: bool = False

    def resolved_model(self) -> Path:
        return self.model_path if self.model_path is not None else bundled_model_path("unet")


@dataclass(frozen=True)
class BlockTask:
    """One block and its windows: everything a worker needs besides cached handles."""

    block: Block
    starts_y: np.ndarray
    starts_x: np.ndarray
    keep: np.ndarray


@dataclass(frozen=True)
class BlockContext:
    """The slide-level facts a block task needs: small, so every task can carry it."""

    slide_path: Path
    slide_mpp: float | None
    stem: str
    work_dir: Path
    mpp: float
    spec: BlendSpec
    model_path: Path
    block_px: int

    @property
    def mosaic_path(self) -> Path:
        return self.work_dir / "mask.zarr"


@dataclass(frozen=True)
class SlideJob:
    """A prepared slide: where it goes, how it is read, and the blocks still to do."""

    slide_path: Path
    stem: str
    final_dir: Path
    work_dir: Path
    slide_mpp: float
    mpp: float
    geom: MosaicGeometry
    spec: BlendSpec
    model_path: Path
    card: ModelCard
    model_sha256: str
    tasks: tuple[BlockTask, ...]
    n_blocks: int
    n_blocks_done: int
    n_tiles: int
    n_tile_predictions: int
    tissue_fraction: float
    tissue_mm2: float
    tissue_polygons: tuple[Any, ...]
    slide_identity: dict[str, Any]
    tissue_note: str
    slide_area_um2: float
    config_digest: str
    block_px: int
    slide_size_x0: tuple[int, int]

    @property
    def mosaic_path(self) -> Path:
        return self.work_dir / "mask.zarr"

    @property
    def tiles_todo(self) -> int:
        """Tiles the remaining blocks own (counted as the report counts tiles)."""
        return sum(t.block.n_owned for t in self.tasks)

    def context(self, slide_mpp_override: float | None) -> BlockContext:
        return BlockContext(self.slide_path, slide_mpp_override, self.stem, self.work_dir,
                            self.mpp, self.spec, self.model_path, self.block_px)


@dataclass(frozen=True)
class BlockResult:
    """What a block task reports back: its work and where the time went (seconds)."""

    stem: str
    key: str
    n_windows: int
    n_tiles: int
    times: dict[str, float]


def final_dir_for(out_dir: Path, slide_path: Path, name: str | None = None) -> Path:
    """A slide's output folder: ``OUT/<name>``, the name from :func:`naming.output_names`
    (the slide's stem when no other slide of the run shares it)."""
    return out_dir / (name or slide_stem(slide_path))


class OutputTaken(WsiSegError):
    """The output folder a slide would use holds another slide's results."""


def is_finished(out_dir: Path, slide_path: Path, name: str | None = None) -> bool:
    """Whether this slide's final outputs exist, for this very file (outputs only ever
    appear complete). Raises :class:`OutputTaken` when the folder holds another slide's."""
    report = final_dir_for(out_dir, slide_path, name) / REPORT
    if not report.is_file():
        return False
    try:
        done = decode_json(report.read_text(encoding="utf-8"), report)
        same_file = Path(done["slide"]).resolve() == slide_path.resolve()
    except (OSError, WsiSegError, KeyError, TypeError):
        return False  # an unreadable report is redone
    if not same_file:
        raise OutputTaken(f"{report.parent} already holds the results of {done['slide']}; "
                          "use another --out, or --overwrite to replace them", slide_path)
    # A file replaced since (another scan under the same name) is redone.
    return bool(done.get("slide_identity") == slide_identity(slide_path))


def check_writable(out_dir: Path) -> None:
    """Create ``out_dir`` and prove it is writable, or raise a one-line error."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".wsi-seg-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WsiSegError(f"output folder is not writable ({exc.strerror or exc})",
                          out_dir) from None


def _digest(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare_slide(slide_path: Path, config: RunConfig, name: str | None = None) -> SlideJob:
    """Open, find tissue, plan and create (or reopen, to resume) the slide's work directory.

    ``name`` is the slide's output folder name (:func:`naming.output_names`; its stem by
    default). A work directory is resumed only if the configuration and the slide file's
    identity (size, modification time, a hash of its head) are unchanged.

    Raises WsiSegError (one line, naming the file) for anything wrong with the slide or model.
    """
    identity = slide_identity(slide_path)
    model_path = config.resolved_model()
    card = read_card(model_path)
    model_sha = sha256_file(model_path)
    with open_slide(slide_path, mpp=config.slide_mpp) as slide:
        mpp = card.mpp
        slide.choose_level(mpp)  # a model the slide cannot serve fails here, before any work
        tissue = find_tissue(slide, config.tissue)
        w_px, h_px = slide.size_w(mpp)
        f = slide.level0_px_per_px(mpp)
        roi = card.input_size_px
        step = config.stride_px or step_for(roi, config.overlap)
        try:
            blend = blend_mode(card.kind, config.blend)
        except ValueError as exc:
            raise WsiSegError(str(exc)) from None
        spec = BlendSpec(roi, step, blend, config.sigma_scale,
                         config.infer.batch_size or CHUNK_WINDOWS)
        plan = plan_blocks(w_px, h_px, roi, step, config.block_px, config.chunk_px,
                           tissue.keep_windows(f))
        geom = MosaicGeometry(h_px, w_px, mpp, float(slide.origin_x0), float(slide.origin_y0),
                              f, config.chunk_px)
        stem = name or slide_stem(slide_path)
        provenance = {
            "wsi_seg_version": __version__,
            "slide": slide_path.name,
            "slide_mpp": slide.mpp,
            "model": {"sha256": model_sha, "card": card.to_dict()},
            "mpp": mpp,
            "tile_px": roi,
            "step_px": step,
            "overlap": 1 - step / roi,
            "blend": blend,
            "sigma_scale": config.sigma_scale,
            "block_px": config.block_px,
            "origin_x0": geom.origin_x0,
            "origin_y0": geom.origin_y0,
            "level0_px_per_px": f,
            "value": "tumour probability * 255 (uint8)",
        }
        # The slide's identity is in the digest, so a replaced file never resumes from another
        # file's blocks (it is kept out of the mosaic's own metadata: a copy of a slide gives
        # the same bytes).
        digest = _digest({"provenance": provenance, "tissue": asdict(config.tissue),
                          "slide_size": slide.dimensions, "batch": config.infer.batch_size,
                          "slide_identity": identity})
        tissue_fraction, tissue_mm2, slide_mpp = tissue.fraction, tissue.area_mm2, slide.mpp
        tissue_note = tissue.note() if tissue.n_dropped or tissue.empty else ""
        _, _, bw, bh = slide.bounds_x0
        slide_area_um2 = bw * bh * slide.mpp * slide.mpp
        slide_size_x0 = slide.dimensions
        tissue_polys = tuple(tissue.polygons)
    final_dir = final_dir_for(config.out_dir, slide_path, stem)
    work_dir = config.out_dir / f".{stem}{PARTIAL_SUFFIX}"
    done = _open_work_dir(work_dir, digest, geom, provenance)
    tasks = []
    for block in plan.blocks:
        if block.key in done:
            continue
        tasks.append(BlockTask(block, *plan.windows_of(block)))
    return SlideJob(
        slide_path=slide_path, stem=stem, final_dir=final_dir, work_dir=work_dir,
        slide_mpp=slide_mpp, mpp=mpp, geom=geom, spec=spec,
        model_path=model_path, card=card, model_sha256=model_sha, tasks=tuple(tasks),
        n_blocks=len(plan.blocks), n_blocks_done=len(plan.blocks) - len(tasks),
        n_tiles=plan.n_tiles, n_tile_predictions=plan.n_tile_predictions,
        tissue_fraction=tissue_fraction, tissue_mm2=tissue_mm2, tissue_polygons=tissue_polys,
        slide_identity=identity, tissue_note=tissue_note, slide_area_um2=slide_area_um2,
        config_digest=digest, block_px=config.block_px,
        slide_size_x0=slide_size_x0,
    )


def _open_work_dir(work_dir: Path, digest: str, geom: MosaicGeometry,
                   provenance: dict[str, Any]) -> set[str]:
    """Reuse a matching work directory (returning its finished blocks) or start a fresh one."""
    stamp = work_dir / "config.json"
    if stamp.is_file():
        try:
            same = decode_json(stamp.read_text(encoding="utf-8"), stamp).get("digest") == digest
        except (OSError, WsiSegError, AttributeError):
            same = False
        if same and (work_dir / "mask.zarr" / "zarr.json").is_file():
            markers = work_dir / MARKERS
            return {p.stem for p in markers.glob("*.json")} if markers.is_dir() else set()
    if work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True)
    (work_dir / MARKERS).mkdir()
    create_mosaic(work_dir / "mask.zarr", geom, provenance=provenance)
    write_json_atomic(stamp, {"digest": digest})
    return set()


# -- worker side ----------------------------------------------------------------------------
#: Idle slide handles a worker process keeps open (a handle in use is never closed).
OPEN_SLIDES = 8


class _SlideHandles:
    """Open slides of this process, shared by its task threads (OpenSlide handles are
    thread-safe). A handle is counted while a task holds it; only idle handles are closed, the
    least recently used first, when more than :data:`OPEN_SLIDES` are open."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, float | None], Slide] = {}
        self._users: dict[tuple[str, float | None], int] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def hold(self, path: Path, mpp: float | None) -> Iterator[Slide]:
        key = (str(path), mpp)
        with self._lock:
            slide = self._open.pop(key, None)
            if slide is None:
                slide = open_slide(path, mpp=mpp)
            self._open[key] = slide  # re-inserted: most recently used last
            self._users[key] = self._users.get(key, 0) + 1
            self._close_idle()
        try:
            yield slide
        finally:
            with self._lock:
                self._users[key] -= 1
                if not self._users[key]:
                    del self._users[key]
                self._close_idle()

    def _close_idle(self) -> None:
        excess = len(self._open) - OPEN_SLIDES
        for key in [k for k in self._open if k not in self._users][:max(0, excess)]:
            self._open.pop(key).close()

    def is_open(self, path: Path, mpp: float | None) -> bool:
        with self._lock:
            return (str(path), mpp) in self._open


slide_handles = _SlideHandles()


def run_block(ctx: BlockContext, task: BlockTask, infer: InferConfig) -> BlockResult:
    """Read, predict, blend and write one block; then mark it done. Runs on a worker."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    predictor = cached_predictor(ctx.model_path, infer)
    times["load"] = time.perf_counter() - t0
    b = task.block
    # Only the box of the windows that are predicted is read, not the whole halo.
    yw, xw, h_px, w_px = kept_extent(task.starts_y, task.starts_x, task.keep, ctx.spec.roi_px)
    with slide_handles.hold(ctx.slide_path, ctx.slide_mpp) as slide:
        # Read in bands as the windows need them: the first windows reach the device while
        # the rest of the block is read (the same pixels as one read).
        rows = slide.read_w_rows(xw, yw, w_px, h_px, ctx.mpp)
        prob = blend_block(rows.image, yw, xw, b, task.starts_y, task.starts_x, task.keep,
                           predictor, ctx.spec, times, rows.ensure)
    times["read"] = rows.read_s
    t = time.perf_counter()
    mosaic = open_mosaic(ctx.mosaic_path, mode="r+")
    # The block also writes its share of the coarser levels it alone owns: that work runs in
    # parallel here instead of serially when the slide is finished.
    write_block(mosaic, b.yw, b.xw, to_uint8(prob),
                block_levels(mosaic.geom, mosaic.n_levels, ctx.block_px))
    times["write"] = time.perf_counter() - t
    result = BlockResult(ctx.stem, b.key, b.n_windows, b.n_owned, times)
    # The marker is written last: a block without one is redone on resume, and redoing it
    # rewrites its own chunks completely, so a half-written chunk never survives.
    write_json_atomic(ctx.work_dir / MARKERS / f"{b.key}.json", asdict(result))
    return result


@dataclass(frozen=True)
class WarmResult:
    """A worker's start-up: where its model runs and how long loading and compiling took."""

    device: str
    backend: str
    load_s: float
    pid: int


def warm_worker(model_path: Path, infer: InferConfig) -> WarmResult:
    """Load the model and compile its forward pass on a worker ahead of the first block.

    Run while the client is still finding tissue and planning, so the framework's import, the
    model load and the compile overlap with that work instead of delaying the first block
    (a worker that already warmed, e.g. through :class:`wsi_seg.orchestration.cluster.ModelPlugin`,
    answers
    at once).
    """
    from wsi_seg.stages.backends import keras_backend

    load_s = warm_predictor(model_path, infer)
    return WarmResult(cached_predictor(model_path, infer).device, keras_backend(), load_s,
                      os.getpid())


def finish_slide(job: SlideJob, config: RunConfig, block_times: dict[str, float],
                 blocks_wall_s: float) -> dict[str, Any]:
    """Pyramid, polygons, GeoJSON, overlay, scores and report; then publish the slide.

    ``blocks_wall_s`` is the wall time of the slide's blocks phase (its first block submitted
    to its last done); the report's ``wall_s`` and ``tiles_per_s`` add this finishing to it.
    """
    from wsi_seg.evaluation.overlay import draw_overlay
    from wsi_seg.stages.geojson import write_geojson
    from wsi_seg.stages.vectorize import vectorize_mosaic

    times = dict(block_times)
    t = t_finish = time.perf_counter()
    mosaic = open_mosaic(job.mosaic_path, mode="r+")
    build_pyramid(mosaic, start_level=block_levels(mosaic.geom, mosaic.n_levels,
                                                   config.block_px) + 1)
    t = _lap(times, "pyramid", t)
    threshold = config.threshold if config.threshold is not None else job.card.threshold
    level = min(config.vectorize_level, mosaic.n_levels - 1)
    min_area_um2 = scaled_minimum(config.min_area_um2, job.slide_area_um2)
    regions = vectorize_mosaic(mosaic, level, threshold=threshold,
                               min_area_um2=min_area_um2, simplify_um=config.simplify_um)
    t = _lap(times, "vectorize", t)
    write_geojson(regions, job.work_dir / "tumor.geojson")
    t = _lap(times, "geojson", t)
    tumour_mm2 = sum(r.area_um2 for r in regions) / 1e6
    notes: list[str] = []
    if not job.n_blocks:
        notes.append("no tissue found: the mosaic is all zero")
    if job.tissue_note and job.tissue_note != "no tissue found":
        notes.append(job.tissue_note)  # what was found, and what the minimum dropped
    if min_area_um2 < config.min_area_um2:
        notes.append(f"tumour regions under {min_area_um2:,.1f} µm² dropped: the minimum of "
                     f"{config.min_area_um2:,.0f} µm² is scaled to "
                     f"{MIN_AREA_SLIDE_FRACTION:.0%} of this {job.slide_area_um2 / 1e6:.4f} mm² "
                     "slide")

    score, truth_geom, truth_path, score_error = None, None, None, None
    if config.truth is not None:
        score, truth_geom, truth_path, score_error = _score(job, config, mosaic, level,
                                                            threshold)
        t = _lap(times, "score", t)
    with contextlib.suppress(WsiSegError), \
            slide_handles.hold(job.slide_path, config.slide_mpp) as slide:
        draw_overlay(slide, list(job.tissue_polygons), regions, truth_geom,
                     job.work_dir / "overlay.png")
    t = _lap(times, "overlay", t)
    predict_s = times.get("predict", 0.0)
    finish_s = t - t_finish
    wall_s = blocks_wall_s + finish_s
    report: dict[str, Any] = {
        "slide": str(job.slide_path),
        "slide_identity": job.slide_identity,
        "output_name": job.stem,
        "status": "ok",
        "wsi_seg_version": __version__,
        "model": {"path": str(job.model_path), "sha256": job.model_sha256,
                  "kind": job.card.kind, "name": job.card.name},
        "mpp": job.mpp,
        "slide_mpp": job.slide_mpp,
        "mosaic_shape_px": [job.geom.height_px, job.geom.width_px],
        "blocks": job.n_blocks,
        "tiles": job.n_tiles,
        "tile_predictions": job.n_tile_predictions,
        "tissue_fraction": round(job.tissue_fraction, 5),
        "tissue_mm2": round(job.tissue_mm2, 4),
        "tumour_mm2": round(tumour_mm2, 4),
        "tumour_regions": len(regions),
        "threshold": threshold,
        "min_area_um2": min_area_um2,
        # The slide's whole time (blocks, then pyramid, polygons, scores, overlay), and the
        # blocks phase alone beside it, named as such.
        "wall_s": round(wall_s, 3),
        "tiles_per_s": round(job.n_tiles / wall_s, 2) if wall_s > 0 else None,
        "blocks_wall_s": round(blocks_wall_s, 3),
        "blocks_tiles_per_s": (round(job.n_tiles / blocks_wall_s, 2) if blocks_wall_s > 0
                               else None),
        "finish_s": round(finish_s, 3),
        # Predictions per second of one task thread while it predicts. Task threads predict
        # concurrently (and share the cores), so this is not the model's throughput alone:
        # `wsi-seg bench` measures that in isolation.
        "predict_tiles_per_thread_s": (round(job.n_tile_predictions / predict_s, 2)
                                       if predict_s > 0 else None),
        "stage_s": {k: round(v, 4) for k, v in sorted(times.items())},
        "truth": str(truth_path) if truth_path else None,
        "score": score.as_dict() if score is not None else None,
        # Set when a score was asked for (--truth) and none could be made truthfully: the
        # run reports the slide as failed (its outputs are still published).
        "score_error": score_error,
        "notes": notes,
    }
    write_json_atomic(job.work_dir / REPORT, report)
    _publish(job)
    return report


def _score(job: SlideJob, config: RunConfig, mosaic: Any, level: int, threshold: float
           ) -> tuple[Any, Any, Path | None, str | None]:
    """``(score, truth geometry, truth path, error)``; the error says why no true score."""
    from wsi_seg.evaluation.annotations import check_truth_fits, read_truth
    from wsi_seg.evaluation.metrics import score_slide

    truth_path = (find_truth(config.truth, job.slide_path, job.stem, config.truth_patterns)
                  if config.truth else None)
    if truth_path is None:
        tried = ", ".join(p.name for p in truth_candidates(
            config.truth or Path("."), job.slide_path, job.stem, config.truth_patterns))
        return None, None, None, f"no ground truth found in {config.truth} (tried {tried})"
    try:
        truth = check_truth_fits(read_truth(truth_path, config.truth_classes),
                                 job.slide_size_x0)
    except WsiSegError as exc:
        return None, None, truth_path, f"truth not usable: {exc}"
    score = score_slide(mosaic, truth.geometry, level, threshold=threshold)
    return score, truth.geometry, truth_path, None


def find_truth(truth: Path, slide_path: Path, name: str | None = None,
               patterns: tuple[str, ...] = TRUTH_PATTERNS) -> Path | None:
    """The truth file of a slide: ``truth`` itself, or the first of
    :func:`naming.truth_candidates` in the folder ``truth``."""
    if truth.is_file():
        return truth
    return next((c for c in truth_candidates(truth, slide_path, name, patterns)
                 if c.is_file()), None)


def _publish(job: SlideJob) -> None:
    """Rename the finished work directory to its final name (atomic on one filesystem)."""
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(job.work_dir / MARKERS)
    with contextlib.suppress(FileNotFoundError):
        (job.work_dir / "config.json").unlink()
    if job.final_dir.exists():
        trash = job.final_dir.with_name(f".{job.final_dir.name}.old")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(job.final_dir, trash)
        os.replace(job.work_dir, job.final_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(job.work_dir, job.final_dir)


def _lap(times: MutableMapping[str, float], key: str, since: float) -> float:
    now = time.perf_counter()
    times[key] = times.get(key, 0.0) + now - since
    return now


def sum_times(results: list[BlockResult]) -> dict[str, float]:
    """Total seconds per stage over block results."""
    total: dict[str, float] = {}
    for r in results:
        for k, v in r.times.items():
            total[k] = total.get(k, 0.0) + v
    return total


def process_slide_inline(slide_path: Path, config: RunConfig,
                         on_block: Callable[[BlockResult], None] | None = None
                         ) -> dict[str, Any]:
    """Run one slide in this process, block after block (no Dask; tests and debugging)."""
    start = time.perf_counter()
    job = prepare_slide(slide_path, config)
    results = []
    ctx = job.context(config.slide_mpp)
    for task in job.tasks:
        r = run_block(ctx, task, config.infer)
        results.append(r)
        if on_block:
            on_block(r)
    return finish_slide(job, config, sum_times(results), time.perf_counter() - start)
