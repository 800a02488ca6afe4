"""Reproducible speed and memory measurements on synthetic slides (``wsi-seg bench``).

**The standard profile** (``wsi-seg bench``)

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
      as task threads, all workers at once: ``predictions_per_s`` (over the callers' joint
      span, as in the device profiles). ``limit_tiles_per_s``
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

**Device profiles**: a GPU workstation, and a simulated accelerator.

Both profiles write ``bench.json`` and ``bench.md`` into the output folder after **every** step
(a run that is killed leaves what it measured so far), and every step runs under a time limit
(``step_timeout_s``): a step that overruns is recorded as timed out, its cluster is replaced
(and processes it started itself are ended), and the next step goes on.

``gpu`` (``wsi-seg bench --profile gpu``): a folder of slides on a GPU workstation, in one run.

* slides: the given ones, else four synthetic 20,000 x 20,000 px slides (``wsi-seg synth
  --seed 11..14``), written in parallel child processes and cached;
* ``cold``: ``run_slides`` exactly as ``wsi-seg run`` does it, with a fresh default local
  cluster, so the worker start-up (framework import, model load, compile) is inside the wall:
  tiles/s over the whole wall and after the start-up line of ``run.json``; one cold run per
  round of each model entry below, so its ratio to the model-only rate is taken in the same
  rounds (``ratio_cold``; with neither entry asked for, the bundled model's cold runs alone);
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

They run in that order after the slides and models (bundled, heavy, each with its cold runs,
then noisy). With ``simulate_batch_s`` set the gpu profile is a dry run: every model runs
on the simulated device (tests; a machine without a GPU or framework).

``simulated`` (``wsi-seg bench --profile simulated``): does the CPU side keep a device busy?
No model runs: :class:`~wsi_seg.stages.backends.SimulatedEngine` holds one device lock for ``S``
seconds per batch. One worker (one "card") with one task thread more than cores, as on a GPU
workstation. First the CPU side is measured (a run with a tiny ``S``: seconds of blocks phase
per batch of windows); then ``S`` is set ``simulate_margin`` times slower than that, so the
device is the limit, and the runs report the device's busy share = device busy seconds /
blocks-phase wall (goal >= 90 %), and the work share = the device time the windows need in
full batches / that wall (the busy share without padded slots). A dry run (any ``S``) also
reports what the CPU can feed a device: blocks-phase and read-only tiles/s per task thread
and the block stages' thread-ms per tile (:func:`~wsi_seg.tools.bench.device_report.host_feed`).

The modules, in the order a record is made:

* :mod:`~wsi_seg.tools.bench.config`: what to measure (:class:`BenchConfig`,
  :class:`DeviceBenchConfig`, the random-weight :class:`UNetSpec`);
* :mod:`~wsi_seg.tools.bench.synthetic`: synthetic slides and random-weight models, cached;
* :mod:`~wsi_seg.tools.bench.cluster`, :mod:`~wsi_seg.tools.bench.worker`: the local clusters
  and the tasks that run on their workers;
* :mod:`~wsi_seg.tools.bench.measure`: what every profile measures (plan, timed run, model-only,
  read-only); :mod:`~wsi_seg.tools.bench.sampler`: how busy the device was;
* the standard profile: :mod:`~wsi_seg.tools.bench.standard` (its parts),
  :mod:`~wsi_seg.tools.bench.standard_measures`, :mod:`~wsi_seg.tools.bench.figures`,
  :mod:`~wsi_seg.tools.bench.memory`;
* the device profiles: :mod:`~wsi_seg.tools.bench.device` (steps under time limits),
  :mod:`~wsi_seg.tools.bench.device_runs`, :mod:`~wsi_seg.tools.bench.gpu`,
  :mod:`~wsi_seg.tools.bench.simulated`;
* the record: :mod:`~wsi_seg.tools.bench.machine`, :mod:`~wsi_seg.tools.bench.record`
  (``bench.json``), :mod:`~wsi_seg.tools.bench.report` and
  :mod:`~wsi_seg.tools.bench.device_report` (``bench.md``).
"""

from wsi_seg.tools.bench.config import (
    DEVICE_PROFILES,
    GPU_STEPS,
    HEAVY,
    NOISY,
    NOT_MEASURED_GPU,
    PARTS,
    PROFILES,
    SIM_STEPS,
    BenchConfig,
    DeviceBenchConfig,
    Profile,
    UNetSpec,
    quick_config,
    simulated_config,
)
from wsi_seg.tools.bench.device import DeviceBenchmark
from wsi_seg.tools.bench.device_report import device_markdown
from wsi_seg.tools.bench.figures import memory_rows, stage_table, time_budget
from wsi_seg.tools.bench.machine import machine_info, nvidia_gpus
from wsi_seg.tools.bench.measure import plan_of
from wsi_seg.tools.bench.record import rotate, summary, write_outputs
from wsi_seg.tools.bench.report import markdown
from wsi_seg.tools.bench.sampler import (
    NOT_SAMPLED,
    DeviceSampler,
    busy_between,
    simulated_busy,
    stats_delta,
)
from wsi_seg.tools.bench.standard import Benchmark
from wsi_seg.tools.bench.standard_measures import run_config

__all__ = [
    "DEVICE_PROFILES", "GPU_STEPS", "HEAVY", "NOISY", "NOT_MEASURED_GPU", "NOT_SAMPLED", "PARTS",
    "PROFILES", "SIM_STEPS", "BenchConfig", "Benchmark", "DeviceBenchConfig", "DeviceBenchmark",
    "DeviceSampler", "Profile", "UNetSpec", "busy_between", "device_markdown", "machine_info",
    "markdown", "memory_rows", "nvidia_gpus", "plan_of", "quick_config", "rotate", "run_config",
    "simulated_busy", "simulated_config", "stage_table", "stats_delta", "summary",
    "time_budget", "write_outputs",
]
