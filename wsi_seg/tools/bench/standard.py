"""The standard profile of ``wsi-seg bench``: throughput against the limits, the seeds' way,
memory and scaling, on synthetic slides (see :mod:`wsi_seg.tools.bench`)."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench.cluster import Bench, cluster_session, warm
from wsi_seg.tools.bench.config import PROFILES, BenchConfig
from wsi_seg.tools.bench.figures import memory_rows, seeds_entry, throughput_entry
from wsi_seg.tools.bench.measure import measure_model_only, measure_read_only, plan_of
from wsi_seg.tools.bench.memory import run_memory_child
from wsi_seg.tools.bench.record import (
    close_record,
    interleaved,
    new_record,
    write_outputs,
)
from wsi_seg.tools.bench.report import markdown
from wsi_seg.tools.bench.standard_measures import (
    measure_cold,
    measure_e2e,
    run_config,
    seeds_way,
)
from wsi_seg.tools.bench.synthetic import ensure_slide

FORMAT = "wsi-seg-bench/1"


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


class Benchmark:
    """Runs the parts of a :class:`BenchConfig` and assembles the record."""

    def __init__(self, cfg: BenchConfig, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.say = say or _say
        self.record: dict[str, Any] = new_record(FORMAT, cfg, slides={})
        self.runs_dir = cfg.out_dir / "runs"

    # -- helpers -----------------------------------------------------------------------------
    def slide(self, size: int) -> dict[str, Any]:
        """The synthetic slide of ``size`` px (written into the cache on first use)."""
        key = str(size)
        if key not in self.record["slides"]:
            self.record["slides"][key] = ensure_slide(self.cfg.cache_dir, size, self.cfg.seed,
                                                      self.cfg.slide_mpp, self.say)
        return dict(self.record["slides"][key])

    def save(self) -> None:
        write_outputs(self.record, self.cfg.out_dir, markdown_fn=markdown)

    def run_cfg(self, kind: str, bench: Bench, name: str, batch_size: int | None = None,
                    mixed_precision: bool = False) -> Any:
        """The RunConfig of model ``kind`` on ``bench`` into ``runs/<name>``."""
        infer = bench.infer(batch_size or PROFILES[kind].batch_size, mixed_precision)
        return run_config(self.cfg, kind, self.runs_dir / name, infer, self.cfg.cache_dir)

    def model_only(self, bench: Bench, kind: str, run_cfg: Any, job: Any) -> dict[str, Any]:
        """Model-only on ``bench`` with ``run_cfg``'s InferConfig, capped at the plan's
        predictions."""
        return measure_model_only(bench, self.cfg.model_path(kind), run_cfg.infer,
                                  self.cfg.model_seconds, job.n_tile_predictions)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Every part of ``cfg.parts``; the record (also in ``bench.json`` and ``bench.md``)."""
        cfg = self.cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        self._prepare()
        if {"throughput", "seeds", "scaling"} & set(cfg.parts):
            with cluster_session(cfg.workers, cfg.threads_per_worker) as bench:
                self._start(bench)
                if "throughput" in cfg.parts or "seeds" in cfg.parts:
                    self.throughput(bench)
                    self.save()
                if "scaling" in cfg.parts:
                    self.scaling(bench)
                    self.save()
        if "memory" in cfg.parts:
            self.memory()
        close_record(self.record, t0)
        if not cfg.keep_outputs:
            shutil.rmtree(self.runs_dir, ignore_errors=True)
        self.save()
        return self.record

    def _prepare(self) -> None:
        """The slides first and the models checked: a missing model fails now, not after an
        hour."""
        cfg = self.cfg
        for size in sorted(set(cfg.sizes) | set(cfg.memory_sizes or ())
                           | {cfg.seeds_size or min(cfg.sizes),
                              cfg.scaling_size or min(cfg.sizes)}):
            if size in cfg.sizes or "memory" in cfg.parts:
                self.slide(size)
        for kind in cfg.models:
            cfg.model_path(kind)

    def _start(self, bench: Bench) -> None:
        """Record the cluster and warm every model on it."""
        self.record["cluster"] = {"workers": bench.workers,
                                  "threads_per_worker": bench.threads_per_worker,
                                  "tf_threads": bench.tf_threads, "gpus": bench.gpus}
        for kind in self.cfg.models:
            warm(bench, self.cfg.model_path(kind), bench.infer(PROFILES[kind].batch_size))
        self.record["cluster"]["devices"] = bench.devices

    # -- (1)-(4) throughput and the seeds' way -------------------------------------------------
    def throughput(self, bench: Bench) -> None:
        """Throughput entries for every size and model, and the seeds' way on its size."""
        cfg = self.cfg
        seeds_size = cfg.seeds_size or min(cfg.sizes)
        sizes = list(cfg.sizes)
        if "seeds" in cfg.parts and seeds_size not in sizes:
            sizes.append(seeds_size)
        entries: list[dict[str, Any]] = []
        seeds: list[dict[str, Any]] = []
        for size in sizes:
            self._throughput_at(bench, size, size == seeds_size, entries, seeds)
            self.record["throughput"] = entries
            if seeds:
                self.record["seeds_way"] = seeds
            self.save()

    def _throughput_at(self, bench: Bench, size: int, seeds_here: bool,
                       entries: list[dict[str, Any]], seeds: list[dict[str, Any]]) -> None:
        cfg = self.cfg
        slide = self.slide(size)
        run_cfgs = {kind: self.run_cfg(kind, bench, f"{kind}-{size}") for kind in cfg.models}
        jobs = {kind: plan_of(slide, run_cfgs[kind]) for kind in cfg.models}
        with_seeds = "seeds" in cfg.parts and seeds_here
        tp_here = "throughput" in cfg.parts and size in cfg.sizes
        whats = ["e2e", *(["model", "read"] if tp_here else []),
                 *(["seeds"] if with_seeds else [])]
        items = [(what, kind) for kind in cfg.models for what in whats]

        def measure(item: tuple[str, str], r: int) -> dict[str, Any]:
            what, kind = item
            self.say(f"bench: {size} px, {kind}: {what} (round {r + 1}/{cfg.repeats})")
            return self._measure(bench, what, kind, slide, jobs[kind], run_cfgs[kind])

        got = interleaved(items, cfg.repeats, measure)
        for kind in cfg.models:
            if tp_here:
                entry = throughput_entry(kind, str(cfg.model_path(kind)), slide, jobs[kind],
                                         got[("e2e", kind)], got[("model", kind)],
                                         got[("read", kind)])
                if size == min(cfg.sizes):
                    self._add_cold(entry, slide, run_cfgs[kind])
                entries.append(entry)
            if with_seeds:
                seeds.append(seeds_entry(kind, size, jobs[kind], got[("e2e", kind)],
                                         got[("seeds", kind)]))

    def _measure(self, bench: Bench, what: str, kind: str, slide: dict[str, Any], job: Any,
                 run_cfg: Any) -> dict[str, Any]:
        if what == "e2e":
            return measure_e2e(bench, slide, run_cfg)
        if what == "model":
            return self.model_only(bench, kind, run_cfg, job)
        if what == "read":
            return measure_read_only(bench, [job])
        return seeds_way(slide, self.cfg.model_path(kind), job, self.cfg.seeds_seconds)

    def _add_cold(self, entry: dict[str, Any], slide: dict[str, Any], run_cfg: Any) -> None:
        """The smallest slide also runs as ``wsi-seg run`` runs it: the start-up's seconds."""
        self.say(f"bench: {slide['size_px']} px, {entry['model']}: cold run (fresh cluster)")
        cold = measure_cold(slide, run_cfg, self.cfg.workers, self.cfg.threads_per_worker)
        entry["e2e"]["cold_wall_s"] = round(cold["wall_s"], 3)
        entry["e2e"]["startup_s"] = round(cold["wall_s"] - entry["e2e"]["wall_s"]["median"], 3)

    # -- (6) scaling ---------------------------------------------------------------------------
    def scaling(self, bench: Bench) -> None:
        """Workers 1 vs 2, the batch size sweep, mixed precision and the GPU's idle share."""
        from wsi_seg.tools.bench.scaling import scaling

        self.record["scaling"] = scaling(self, bench)

    # -- (5) memory ----------------------------------------------------------------------------
    def memory(self) -> None:
        """Peak memory of every size and model, each in a fresh process and cluster."""
        cfg = self.cfg
        rows: list[dict[str, Any]] = []
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
