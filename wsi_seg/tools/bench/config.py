"""What a benchmark measures and where: the standard profile's :class:`BenchConfig` and the
device profiles' :class:`DeviceBenchConfig`, with the random-weight UNets they build."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

#: Parts of the standard profile (``--only``).
PARTS = ("throughput", "seeds", "memory", "scaling")
NOT_MEASURED_GPU = "not measured: no GPU"
#: The device profiles (``--profile``).
DEVICE_PROFILES = ("gpu", "simulated")
#: Steps of the gpu profile (the slides and models they need are made first, each a step too).
GPU_STEPS = ("cold", "bundled", "heavy", "noisy")
SIM_STEPS = ("simulated",)


# -- the standard profile -----------------------------------------------------------------------
@dataclass(frozen=True)
class Profile:
    """How a model kind is run: the settings of ``pipelines/unet-10x-gaussian.toml`` and
    ``pipelines/patch-idc-50px.toml`` (overlap as a share of the tile, sizes in px, areas in
    µm², simplification tolerance in µm)."""

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
    """What the standard profile measures and where.

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
        model_seconds: cap on one model-only measurement, s.
        seeds_seconds: cap on one seeds'-way measurement, s.
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
        """The model file of ``kind``: the given one, else the bundled demo model."""
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


# -- the device profiles ------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetSpec:
    """A random-weight UNet built at bench time (:func:`wsi_seg.stages.models.build_unet`):
    tiles of ``tile_px`` px at ``mpp`` µm/px."""

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
        synth_size, synth_seeds, slide_mpp: the synthetic slides (edge px, seeds, µm/px).
        model_path: the main model (None: the bundled UNet).
        batch_size: predictor batch (None: the device's default; simulated: 32).
        workers, threads_per_worker: local cluster (None: as ``wsi-seg run`` sizes it; the
            simulated profile: one worker with cores + 1 task threads, as a GPU worker).
        repeats: interleaved rounds.
        model_seconds: length of one model-only measurement, s.
        step_timeout_s: limit on one step or measurement, s.
        sample_period_s: ``nvidia-smi`` sampling period, s.
        heavy, noisy: the random-weight UNets of the ``heavy`` and ``noisy`` steps.
        noisy_size, noisy_seed: the noisy step's synthetic slide (edge px, seed).
        steps: which of :data:`GPU_STEPS` (or :data:`SIM_STEPS`) to run.
        simulate_batch_s: the simulated device's seconds per batch (None: calibrated).
        simulate_margin: calibrated ``S`` = margin x the CPU side's seconds per batch.
        calibrate_batch_s: ``S`` of the calibration run (a device that is never the limit).
        scratch_dir: the runs' outputs (default ``out_dir/runs``), removed at the end.
        keep_outputs: keep the runs' outputs.
        precision: what the models compute in (``InferConfig.precision``).
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
    precision: str = "float32"

    def main_model(self) -> Path:
        """The main model file: the given one, else the bundled UNet."""
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
