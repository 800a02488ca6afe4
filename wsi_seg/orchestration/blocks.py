"""The worker side of a slide: one block task.

:func:`run_block` (one Dask task per block, on any worker) reads the block's halo at the
model's µm/px, predicts and blends its windows, writes the Zarr chunks the block alone owns,
then drops a completion marker, so a resumed run redoes only blocks without one.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from wsi_seg.core.files import write_json_output
from wsi_seg.orchestration.handles import slide_handles
from wsi_seg.orchestration.job import MARKERS, BlockContext, BlockTask
from wsi_seg.stages.blend import blend_block, kept_extent
from wsi_seg.stages.infer import InferConfig, cached_predictor
from wsi_seg.stages.mosaic import block_levels, open_mosaic, write_block


@dataclass(frozen=True)
class BlockResult:
    """What a block task reports back: its work and where the time went (seconds)."""

    stem: str
    key: str
    n_windows: int
    n_tiles: int
    times: dict[str, float]


def run_block(ctx: BlockContext, task: BlockTask, infer: InferConfig) -> BlockResult:
    """Read, predict, blend and write one block; then mark it done. Runs on a worker."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    predictor = cached_predictor(ctx.model_path, infer)
    times["load"] = time.perf_counter() - t0
    b = task.block
    # Only the box of the windows that are predicted is read, not the whole halo.
    xw, yw, w_px, h_px = kept_extent(task.starts_y, task.starts_x, task.keep, ctx.spec.roi_px)
    with slide_handles.hold(ctx.slide_path, ctx.slide_mpp) as slide:
        # Read in bands as the windows need them: the first windows reach the device while
        # the rest of the block is read (the same pixels as one read).
        rows = slide.read_w_rows(xw, yw, w_px, h_px, ctx.mpp)
        values = blend_block(rows.image, xw, yw, b, task.starts_y, task.starts_x, task.keep,
                           predictor, ctx.spec, times, rows.ensure)
    times["read"] = rows.read_s
    t = time.perf_counter()
    mosaic = open_mosaic(ctx.mosaic_path, mode="r+")
    # The block also writes its share of the coarser levels it alone owns: that work runs in
    # parallel here instead of serially when the slide is finished.
    write_block(mosaic, b.yw, b.xw, values,
                block_levels(mosaic.geom, mosaic.n_levels, ctx.block_px))
    times["write"] = time.perf_counter() - t
    result = BlockResult(ctx.stem, b.key, b.n_windows, b.n_owned, times)
    # The marker is written last: a block without one is redone on resume, and redoing it
    # rewrites its own chunks completely, so a half-written chunk never survives. (In a
    # store the marker is an object of the slide's prefix, as its chunks are.)
    write_json_output(ctx.work_dir / MARKERS / f"{b.key}.json", asdict(result))
    return result


def sum_times(results: list[BlockResult]) -> dict[str, float]:
    """Total seconds per stage over block results."""
    total: dict[str, float] = {}
    for r in results:
        for k, v in r.times.items():
            total[k] = total.get(k, 0.0) + v
    return total
