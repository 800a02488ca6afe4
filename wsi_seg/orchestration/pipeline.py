"""One slide, end to end, as block tasks plus a finishing task.

:func:`~wsi_seg.orchestration.job.prepare_slide` (cheap, on the client) opens the slide, finds
tissue, plans blocks and creates (or reopens, to resume) the slide's work directory
``OUT/.<stem>.partial/``. :func:`~wsi_seg.orchestration.blocks.run_block` (one Dask task per
block, on any worker) reads the block's halo at the model's MPP, predicts and blends its
windows, and writes the Zarr chunks the block alone owns, then drops a completion marker.
:func:`~wsi_seg.orchestration.finish.finish_slide` builds the pyramid, vectorizes, writes
GeoJSON, the overlay and ``report.json``, and renames the work directory to ``OUT/<stem>/``,
so a slide's outputs appear only when complete. A rerun skips finished slides and, in an
unfinished one, redoes only the blocks without a marker.

Functions here take and return small picklable values (paths, frozen dataclasses), never a
model or a slide handle: workers keep those in per-process caches
(:mod:`~wsi_seg.orchestration.handles`, :func:`wsi_seg.stages.infer.cached_predictor`).

This module runs one slide in this process (:func:`process_slide_inline`) and gathers the
names of the modules above, which callers import from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from wsi_seg.core.locations import SlideLocation
from wsi_seg.core.naming import slide_stem
from wsi_seg.orchestration.blocks import BlockResult, run_block, sum_times
from wsi_seg.orchestration.finish import find_truth, finish_slide
from wsi_seg.orchestration.handles import OPEN_SLIDES, slide_handles
from wsi_seg.orchestration.job import (
    CHUNK_WINDOWS,
    MARKERS,
    PARTIAL_SUFFIX,
    BlockContext,
    BlockTask,
    OutputTaken,
    RunConfig,
    SlideJob,
    check_writable,
    final_dir_for,
    finished_report,
    folder_identity,
    is_finished,
    out_dir_problem,
    prepare_slide,
)
from wsi_seg.orchestration.report import REPORT, REPORT_KEYS, SlideReport
from wsi_seg.orchestration.warmup import WarmResult, warm_worker

__all__ = [
    "CHUNK_WINDOWS", "MARKERS", "OPEN_SLIDES", "PARTIAL_SUFFIX", "REPORT", "REPORT_KEYS",
    "BlockContext", "BlockResult", "BlockTask", "OutputTaken", "RunConfig", "SlideJob",
    "SlideReport", "WarmResult", "check_writable", "final_dir_for", "find_truth",
    "finish_slide", "finished_report", "folder_identity", "is_finished", "out_dir_problem",
    "prepare_slide", "process_slide_inline", "run_block", "slide_handles", "slide_stem",
    "sum_times", "warm_worker",
]


def process_slide_inline(slide_path: SlideLocation, config: RunConfig,
                         on_block: Callable[[BlockResult], None] | None = None
                         ) -> SlideReport:
    """Run one slide in this process, block after block (no Dask; tests and debugging)."""
    start = time.perf_counter()
    job = prepare_slide(slide_path, config)
    results = []
    ctx = job.context()
    for task in job.tasks:
        r = run_block(ctx, task, config.infer)
        results.append(r)
        if on_block:
            on_block(r)
    return finish_slide(job, config, sum_times(results), time.perf_counter() - start)
