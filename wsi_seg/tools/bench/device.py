"""The device profiles' runner: every step under a time limit, the record saved after each,
one warm cluster shared by the steps (see :mod:`wsi_seg.tools.bench`)."""

from __future__ import annotations

import contextlib
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench.cluster import Bench, start_device_cluster
from wsi_seg.tools.bench.config import DEVICE_PROFILES, DeviceBenchConfig
from wsi_seg.tools.bench.machine import backend_versions
from wsi_seg.tools.bench.record import close_record, new_record, write_outputs
from wsi_seg.tools.bench.synthetic import ensure_slides

FORMAT = "wsi-seg-bench-device/1"


def _say(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


class DeviceBenchmark:
    """Runs a device profile (see the package docstring) and assembles its record."""

    def __init__(self, cfg: DeviceBenchConfig, say: Callable[[str], None] | None = None
                 ) -> None:
        if cfg.profile not in DEVICE_PROFILES:
            raise WsiSegError(f"unknown profile {cfg.profile!r}; use "
                              f"{', '.join(DEVICE_PROFILES)}")
        self.cfg = cfg
        self.say = say or _say
        self.record: dict[str, Any] = new_record(FORMAT, cfg, head={"profile": cfg.profile},
                                                 steps={}, slides=[], models={})
        self.record["machine"]["backend"] = backend_versions()
        self.runs_dir = cfg.scratch_dir or cfg.out_dir / "runs"
        self._bench: Bench | None = None
        self.t0 = time.perf_counter()

    # -- plumbing ----------------------------------------------------------------------------
    def save(self) -> None:
        """Write ``bench.json`` and ``bench.md`` as they stand (a killed run leaves them)."""
        from wsi_seg.tools.bench.device_report import device_markdown

        self.record["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        write_outputs(self.record, self.cfg.out_dir, markdown_fn=device_markdown)

    def step(self, name: str, fn: Callable[[], Any], timeout_s: float | None = None) -> Any:
        """Run ``fn`` within the step time limit (s); record its status and save the record.
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
        """The warm cluster (started on first use; the simulated profile's is one worker with
        cores + 1 task threads, as a GPU worker)."""
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
        on the simulated device; ``cold``: the framework threads a fresh cluster picks)."""
        from wsi_seg.stages.infer import InferConfig

        if simulate_batch_s is None:
            simulate_batch_s = (self.cfg.simulate_batch_s or 0.0) if self.cfg.profile == "gpu" \
                else 0.0
        threads = None if cold else self.bench().tf_threads
        return InferConfig(batch_size=self.cfg.batch_size, threads=threads,
                           simulate_batch_s=simulate_batch_s, precision=self.cfg.precision)

    # -- the run -----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """The profile's steps; the record (also in ``bench.json`` and ``bench.md``)."""
        from wsi_seg.tools.bench.gpu import run_gpu
        from wsi_seg.tools.bench.simulated import run_simulated

        cfg = self.cfg
        cfg.out_dir.mkdir(parents=True, exist_ok=True)
        self.save()
        try:
            (run_gpu if cfg.profile == "gpu" else run_simulated)(self)
        finally:
            self._drop_cluster()
            if not cfg.keep_outputs:
                shutil.rmtree(self.runs_dir, ignore_errors=True)
            close_record(self.record, self.t0)
            self.save()
        return self.record

    def slides(self, noisy: bool = False) -> list[dict[str, Any]]:
        """The main slides (given, or synthetic) and, with ``noisy``, the noisy step's; each
        with its ``roles``."""
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
