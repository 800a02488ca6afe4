"""How busy the device was: ``nvidia-smi`` utilisation sampled in a thread, the predictors'
own batch statistics, and the simulated device's busy seconds in a run's blocks phase."""

from __future__ import annotations

import contextlib
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import Any

NOT_SAMPLED = "not sampled: no nvidia-smi"


class DeviceSampler:
    """``nvidia-smi`` GPU utilisation (%, the mean over GPUs) with timestamps, polled in a
    thread every ``period_s`` s.

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
        """Stop sampling; the ``(perf_counter time, utilisation %)`` samples."""
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        return list(self.samples)


def busy_between(samples: Sequence[tuple[float, float]], t0: float, t1: float
                 ) -> dict[str, Any]:
    """The samples taken in ``[t0, t1]`` (perf_counter s): their count, mean utilisation (%),
    busy share (mean / 100) and the share of samples with any kernel running."""
    vals = [u for t, u in samples if t0 <= t <= t1]
    if not vals:
        return {"samples": 0, "mean_utilisation": None, "busy_share": None,
                "nonidle_share": None}
    mean = statistics.mean(vals)
    return {"samples": len(vals), "mean_utilisation": round(mean, 1),
            "busy_share": round(mean / 100, 4),
            "nonidle_share": round(sum(v > 0 for v in vals) / len(vals), 4)}


def idle_share(samples: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """All samples: their count, mean utilisation (%) and the share under 5 % (idle)."""
    vals = [u for _, u in samples]
    return {"samples": len(vals),
            "mean_utilisation": round(statistics.mean(vals), 1) if vals else None,
            "idle_share": round(sum(v < 5 for v in vals) / len(vals), 3) if vals else None}


def stats_delta(before: dict[str, list[dict[str, Any]]],
                after: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """What the workers' predictors did between two
    :func:`~wsi_seg.tools.bench.worker.predictor_stats` snapshots (summed over workers and
    predictors; device seconds)."""
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


def _timeline_block_batches(timeline: list[tuple[float, float, int, int]], windows: int,
                            warm_windows: int) -> int | None:
    """Batches after the last sample at which no more than the warm-up windows were done
    (None: the timeline does not cover the run's windows)."""
    first, last = timeline[0], timeline[-1]
    warm = [x for x in timeline if x[3] - first[3] <= warm_windows]
    if warm and last[3] - first[3] == windows:
        return last[2] - warm[-1][2]
    return None


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
    method = "warm batches"
    if timelines and len(timelines) == 1:
        (tl,) = timelines.values()
        found = _timeline_block_batches(tl, p["windows"], warm_windows)
        if found is not None:
            # Batches and windows are counted together when a batch completes; the device's
            # busy clock ticks a moment earlier, so it is taken per batch, not from the sample.
            block_batches, method = found, "timeline"
    busy_blocks = busy * block_batches / batches if batches else 0.0
    wall = rec["blocks_wall_s"]
    bs = p.get("batch_size")
    return {"device_busy_s": round(busy_blocks, 3), "block_batches": block_batches,
            "blocks_fill": (round(rec["tile_predictions"] / (block_batches * bs), 4)
                            if bs and block_batches else None),
            "warm_windows": warm_windows, "busy_method": method,
            "busy_share": round(busy_blocks / wall, 4) if wall > 0 else None}
