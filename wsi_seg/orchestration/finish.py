"""A slide's finishing task, after its blocks: pyramid, polygons, GeoJSON, score, overlay,
report; then the work directory is published under its final name, so a slide's outputs
appear only when complete.

Each step is a small function; :func:`finish_slide` runs them in order and times each into the
report's ``stage_s`` (seconds).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wsi_seg import __version__
from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.files import read_output_text, write_json_atomic, write_json_output
from wsi_seg.core.locations import SlideLocation, SlideURL
from wsi_seg.core.naming import TRUTH_PATTERNS, truth_candidates
from wsi_seg.core.scores import format_score
from wsi_seg.core.stopwatch import lap
from wsi_seg.orchestration.handles import slide_handles
from wsi_seg.orchestration.job import MARKERS, PARTIAL_SUFFIX, RunConfig, SlideJob
from wsi_seg.orchestration.report import REPORT, ClassRecord, ModelRecord, SlideReport
from wsi_seg.stages.card import model_label
from wsi_seg.stages.mosaic import block_levels, build_pyramid, open_mosaic, record_threshold
from wsi_seg.stages.tissue import MIN_AREA_SLIDE_FRACTION, scaled_minimum

if TYPE_CHECKING:
    from wsi_seg.evaluation.metrics import OverlapScore

#: The polygons' area or IoU differing from the mosaic's by this fraction gets a note.
NOTABLE_CHANGE = 0.005
#: A multi-class model's per-class polygons, beside ``tumor.geojson``.
CLASSES_GEOJSON = "classes.geojson"


@dataclass(frozen=True)
class Polygons:
    """The slide's tumour regions as vectorized: the regions, the probability threshold and
    the smallest area kept (µm², scaled down on a small slide), and the level traced."""

    regions: list[Any]
    threshold: float
    min_area_um2: float
    level: int


@dataclass(frozen=True)
class ClassPolygons:
    """One class's regions (a multi-class model's), traced like the tumour's: output channel
    ``index``, QuPath name and colour."""

    index: int
    name: str
    color: tuple[int, int, int]
    regions: list[Any]


@dataclass(frozen=True)
class Scored:
    """The outcome of scoring: the score, the truth drawn on the scored level (a
    :class:`~wsi_seg.evaluation.truth.TruthRaster`, for the overlay), the truth file, or
    why no true score could be made (``error``); per class (by name) the scores of the
    classes the truth draws."""

    score: OverlapScore | None = None
    polygons_score: OverlapScore | None = None  # the exported regions', same level and truth
    truth_raster: Any = None
    truth_path: Path | None = None
    error: str | None = None
    class_scores: dict[str, OverlapScore] = field(default_factory=dict)


def _vectorize(job: SlideJob, config: RunConfig, mosaic: Any) -> Polygons:
    """Tumour polygons of the mosaic, at the configured level and threshold (the card's by
    default), written to ``tumor.geojson`` in the work directory."""
    from wsi_seg.stages.vectorize import vectorize_mosaic

    threshold = config.threshold if config.threshold is not None else job.card.threshold
    level = min(config.vectorize_level, mosaic.n_levels - 1)
    min_area_um2 = scaled_minimum(config.min_area_um2, job.slide_area_um2)
    regions = vectorize_mosaic(mosaic, level, threshold=threshold,
                               min_area_um2=min_area_um2, simplify_um=config.simplify_um)
    return Polygons(regions, threshold, min_area_um2, level)


def _vectorize_classes(job: SlideJob, config: RunConfig, mosaic: Any, polygons: Polygons
                       ) -> tuple[ClassPolygons, ...]:
    """Each non-background class's polygons (a multi-class mosaic's), at the tumour's level,
    threshold and minimum area: a pixel belongs to class c where ``p_c >= threshold``."""
    from wsi_seg.stages.vectorize import threshold_u8, vectorize_array

    if not mosaic.classes:
        return ()
    frame = mosaic.geom.frame(polygons.level)
    out = []
    for i in job.card.mapped_classes:
        c = mosaic.classes[i]
        regions = vectorize_array(mosaic.class_map(polygons.level, i), frame,
                                  fg_min=threshold_u8(polygons.threshold),
                                  min_area_um2=polygons.min_area_um2,
                                  simplify_um=config.simplify_um)
        out.append(ClassPolygons(i, c.name, c.color, regions))
    return tuple(out)


def _notes(job: SlideJob, config: RunConfig, polygons: Polygons,
           scored: Scored | None = None) -> tuple[str, ...]:
    """What the report says about rules that shaped this slide's outputs, and by how much."""
    notes: list[str] = []
    if not job.n_blocks:
        notes.append("no tissue found: the mosaic is all zero")
    if job.tissue_note and job.tissue_note != "no tissue found":
        notes.append(job.tissue_note)  # what was found, and what the minimum dropped
    if polygons.min_area_um2 < config.min_area_um2:
        notes.append(f"tumour regions under {polygons.min_area_um2:,.1f} µm² dropped and "
                     "holes under it filled: the "
                     f"minimum of {config.min_area_um2:,.0f} µm² is scaled to "
                     f"{MIN_AREA_SLIDE_FRACTION:.0%} of this {job.slide_area_um2 / 1e6:.4f} mm² "
                     "slide")
    if scored is not None and (note := polygons_note(scored, polygons, config)):
        notes.append(note)
    return tuple(notes)


def polygons_note(scored: Scored, polygons: Polygons, config: RunConfig) -> str | None:
    """What the polygon rules changed against the mosaic, when that is visible (area or IoU
    differing by :data:`NOTABLE_CHANGE` or more; simplification alone moves them less):
    ``tumor.geojson covers 1.2% less than the mosaic above 0.50 (regions under ... dropped,
    holes under it filled, outlines simplified by 1 µm): IoU 0.737 for the polygons, 0.884
    for the mosaic``."""
    mosaic, polys = scored.score, scored.polygons_score
    if mosaic is None or polys is None:
        return None
    change = (polys.pred_px - mosaic.pred_px) / max(mosaic.pred_px, 1)
    iou_change = abs((polys.iou or 0.0) - (mosaic.iou or 0.0))
    if abs(change) < NOTABLE_CHANGE and iou_change < NOTABLE_CHANGE:
        return None
    more = "more" if change > 0 else "less"
    simplified = (f", outlines simplified by {config.simplify_um:g} µm"
                  if config.simplify_um > 0 else "")

    return (f"tumor.geojson covers {abs(change):.1%} {more} than the mosaic above "
            f"{polygons.threshold:.2f} (regions under {polygons.min_area_um2:,.1f} µm² "
            f"dropped, holes under it filled{simplified}): IoU {format_score(polys.iou, '.3f')} "
            f"for the polygons, {format_score(mosaic.iou, '.3f')} for the mosaic")


def find_truth(truth: Path, slide_path: SlideLocation, name: str | None = None,
               patterns: tuple[str, ...] = TRUTH_PATTERNS) -> Path | None:
    """The truth file of a slide: ``truth`` itself, or the first of
    :func:`naming.truth_candidates` in the folder ``truth``."""
    if truth.is_file():
        return truth
    return next((c for c in truth_candidates(truth, slide_path, name, patterns)
                 if c.is_file()), None)


def _score(job: SlideJob, config: RunConfig, mosaic: Any, polygons: Polygons) -> Scored:
    """The mosaic scored against the slide's truth at the vectorized level and threshold;
    a truth that is missing or unusable gives the reason instead."""
    from wsi_seg.evaluation.metrics import score_geometries, score_slide
    from wsi_seg.evaluation.truth import rasterize_truth
    from wsi_seg.stages.vectorize import regions_geometry

    truth_path = (find_truth(config.truth, job.slide_path, job.stem, config.truth_patterns)
                  if config.truth else None)
    if truth_path is None:
        tried = ", ".join(p.name for p in truth_candidates(
            config.truth or Path("."), job.slide_path, job.stem, config.truth_patterns))
        return Scored(error=f"no ground truth found in {config.truth} (tried {tried})")
    frame = mosaic.geom.frame(polygons.level)
    try:
        # Drawn on the scored level as it is read: memory is that raster (compressed) and a
        # batch of polygons, however many the truth holds.
        truth = rasterize_truth(truth_path, frame, job.slide_size_x0, config.truth_classes)
    except WsiSegError as exc:
        return Scored(truth_path=truth_path, error=f"truth not usable: {exc}")
    except Exception as exc:  # a reader's own bug must not cost the slide its outputs
        return Scored(truth_path=truth_path, error=f"truth not usable: {truth_path}: "
                      f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    score = score_slide(mosaic, truth, polygons.level, threshold=polygons.threshold)
    # Users score tumor.geojson as often as the mosaic: the same truth, level and frame.
    polygons_score = score_geometries(regions_geometry(polygons.regions), truth, frame)
    scored = Scored(score, polygons_score, truth, truth_path)
    if mosaic.classes:
        scored = _score_classes(job, config, mosaic, polygons, scored)
    return scored


def _score_classes(job: SlideJob, config: RunConfig, mosaic: Any, polygons: Polygons,
                   scored: Scored) -> Scored:
    """Per-class IoU/Dice of a multi-class mosaic, for the classes the truth draws (a class
    the truth never names is not scored: undrawn is not "absent")."""
    import shapely

    from wsi_seg.evaluation.annotations import parse_class_map, read_class_truths
    from wsi_seg.evaluation.metrics import score_array
    from wsi_seg.stages.vectorize import threshold_u8

    assert scored.truth_path is not None
    names = [mosaic.classes[i].name for i in job.card.mapped_classes]
    try:
        truths = read_class_truths(scored.truth_path, names,
                                   parse_class_map(config.class_map or ()))
    except WsiSegError as exc:
        return replace(scored, error=f"per-class truth not usable: {exc}")
    w, h = job.slide_size_x0
    frame = mosaic.geom.frame(polygons.level)
    out = {}
    for i in job.card.mapped_classes:
        name = mosaic.classes[i].name
        if truths[name].is_empty:
            continue
        truth_x0 = shapely.clip_by_rect(truths[name], 0, 0, w, h)
        out[name] = score_array(mosaic.class_map(polygons.level, i), truth_x0, frame,
                                fg_min=threshold_u8(polygons.threshold))
    return replace(scored, class_scores=out)


def _overlay(job: SlideJob, config: RunConfig, polygons: Polygons, scored: Scored) -> None:
    """The thumbnail with tissue, prediction and truth; a slide that cannot be read for it
    only goes without (its outputs are complete without the picture)."""
    from wsi_seg.evaluation.overlay import draw_overlay

    with contextlib.suppress(WsiSegError), \
            slide_handles.hold(job.slide_path, job.mpp_override) as slide:
        draw_overlay(slide, list(job.tissue_polygons), polygons.regions,
                     scored.truth_raster, job.work_dir / "overlay.png")


def _rate(count: int, seconds: float) -> float | None:
    return round(count / seconds, 2) if seconds > 0 else None


def _class_records(classes: tuple[ClassPolygons, ...], scored: Scored
                   ) -> tuple[ClassRecord, ...]:
    return tuple(ClassRecord(c.name, c.color,
                             round(sum(r.area_um2 for r in c.regions) / 1e6, 4),
                             len(c.regions), scored.class_scores.get(c.name))
                 for c in classes)


def _report(job: SlideJob, polygons: Polygons, scored: Scored, notes: tuple[str, ...],
            times: dict[str, float], blocks_wall_s: float, finish_s: float,
            classes: tuple[ClassPolygons, ...] = ()) -> SlideReport:
    """The slide's report, its figures rounded as ``report.json`` records them."""
    wall_s = blocks_wall_s + finish_s
    return SlideReport(
        slide=str(job.slide_path), slide_identity=job.slide_identity, output_name=job.stem,
        status="ok", wsi_seg_version=__version__,
        model=ModelRecord(model_label(job.model_path), job.model_sha256, job.card.kind,
                          job.card.name),
        mpp=job.mpp, slide_mpp=job.slide_mpp,
        mosaic_shape_px=(job.geom.height_px, job.geom.width_px),
        blocks=job.n_blocks, tiles=job.n_tiles, tile_predictions=job.n_tile_predictions,
        tissue_fraction=round(job.tissue_fraction, 5), tissue_mm2=round(job.tissue_mm2, 4),
        tumour_mm2=round(sum(r.area_um2 for r in polygons.regions) / 1e6, 4),
        tumour_regions=len(polygons.regions), threshold=polygons.threshold,
        min_area_um2=polygons.min_area_um2,
        wall_s=round(wall_s, 3), tiles_per_s=_rate(job.n_tiles, wall_s),
        blocks_wall_s=round(blocks_wall_s, 3),
        blocks_tiles_per_s=_rate(job.n_tiles, blocks_wall_s), finish_s=round(finish_s, 3),
        predict_tiles_per_thread_s=_rate(job.n_tile_predictions, times.get("predict", 0.0)),
        stage_s={k: round(v, 4) for k, v in sorted(times.items())},
        truth=str(scored.truth_path) if scored.truth_path else None,
        score=scored.score, polygons_score=scored.polygons_score, score_error=scored.error,
        notes=notes,
        classes=_class_records(classes, scored),
    )


def finish_slide(job: SlideJob, config: RunConfig, block_times: dict[str, float],
                 blocks_wall_s: float) -> SlideReport:
    """Pyramid, polygons, GeoJSON, scores, overlay and report; then publish the slide.

    ``block_times`` are the blocks' seconds per stage; ``blocks_wall_s`` is the wall time of
    the slide's blocks phase (its first block submitted to its last done); the report's
    ``wall_s`` and ``tiles_per_s`` add this finishing to it.
    """
    from wsi_seg.stages.geojson import write_class_geojson, write_geojson

    times = dict(block_times)
    t = t_finish = time.perf_counter()
    check_work_dir(job)
    mosaic = open_mosaic(job.mosaic_path, mode="r+")
    build_pyramid(mosaic, start_level=block_levels(mosaic.geom, mosaic.n_levels,
                                                   config.block_px) + 1)
    t = lap(times, "pyramid", t)
    polygons = _vectorize(job, config, mosaic)
    record_threshold(mosaic, polygons.threshold)  # `wsi-seg score` then uses the same
    t = lap(times, "vectorize", t)
    write_geojson(polygons.regions, job.work_dir / "tumor.geojson",
                  id_seed=_id_seed(job, "tumor.geojson"))
    t = lap(times, "geojson", t)
    classes = _vectorize_classes(job, config, mosaic, polygons)
    if classes:
        t = lap(times, "vectorize_classes", t)
        write_class_geojson([(c.name, c.color, c.regions) for c in classes],
                            job.work_dir / CLASSES_GEOJSON,
                            id_seed=_id_seed(job, CLASSES_GEOJSON))
        t = lap(times, "geojson_classes", t)
    scored = Scored()
    if config.truth is not None:
        scored = _score(job, config, mosaic, polygons)
        t = lap(times, "score", t)
    _overlay(job, config, polygons, scored)
    t = lap(times, "overlay", t)
    report = _report(job, polygons, scored, _notes(job, config, polygons, scored), times,
                     blocks_wall_s, t - t_finish, classes)
    if isinstance(job.work_dir, SlideURL):
        _publish_in_store(job, job.work_dir, report.to_json())
    else:
        write_json_atomic(job.work_dir / REPORT, report.to_json())
        _publish(job)
    return report


def _id_seed(job: SlideJob, name: str) -> str | None:
    """What a GeoJSON's feature ids are derived from: the file's folder and name where it is
    written (None: the writer's default), which is the local work folder's
    (``.<stem>.partial/<name>``) even in a store, where the file is written in place, so the
    feature ids, and the bytes, are those of a local run."""
    if isinstance(job.work_dir, SlideURL):
        return f".{job.stem}{PARTIAL_SUFFIX}/{name}"
    return None


def check_work_dir(job: SlideJob) -> None:
    """The work folder is still the one this slide's blocks wrote: its ``config.json`` stamp
    holds the job's digest. A folder deleted under the run and made again by a write in
    flight (stores create missing parents) holds chunks from nowhere, and zarr reads the
    missing ones as zeros: it must never be published as finished."""
    stamp = job.work_dir / "config.json"
    try:
        text = read_output_text(stamp)
        same = text is not None and json.loads(text).get("digest") == job.config_digest
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        raise WsiSegError("work folder lost while the slide was in flight (deleted with the "
                          "output folder?): nothing published", job.work_dir)


def _publish_in_store(job: SlideJob, work_dir: SlideURL, report: dict[str, Any]) -> None:
    """Publish a slide written in place in a store, which has no rename: drop the work
    objects (block markers, then the stamp), then write ``report.json``, the completion
    marker, last. Killed before the marker, the slide is unfinished: without its stamp it is
    redone from scratch, never taken for finished."""
    from wsi_seg.stages import result_store

    check_work_dir(job)  # again: the finishing took a while
    result_store.remove_tree(work_dir / MARKERS)
    result_store.delete(work_dir / "config.json")
    write_json_output(work_dir / REPORT, report)


def _publish(job: SlideJob) -> None:
    """Rename the finished work directory to its final name (atomic on one filesystem)."""
    assert isinstance(job.work_dir, Path) and isinstance(job.final_dir, Path)
    check_work_dir(job)  # again: the finishing took a while
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
