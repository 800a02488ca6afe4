"""How busy does the CPU side keep an accelerator? A simulated device, for either design.

The device is simulated: no model runs, and each batch holds one device lock for ``S`` seconds
(sleeping, so the GIL is free, as during a real kernel) and returns zeros. The slides go through
``run_slides`` exactly as ``wsi-seg run`` sends them (tissue, plan, block tasks, finishing) on a
local cluster of **one** worker process (one device) with ``--threads`` task threads (default:
max(2, cores), as a GPU worker gets). Reported per run: the device's busy share = device busy
seconds during the blocks phase / the blocks phase's wall (all slides' blocks are submitted at
once, so the phase is the longest slide's ``wall_s`` in ``run.json``); tiles/s; batches.

It runs against whichever ``wsi_seg`` is on ``PYTHONPATH``:

* the current design (``InferConfig.simulate_batch_s`` exists): the worker's own ``Predictor``
  with :class:`wsi_seg.stages.backends.SimulatedEngine` (one consumer thread packs windows of all
  blocks into fixed batches);
* the design before it (commit a051260: every block task calls the predictor itself, one
  batch per call): a WorkerPlugin replaces ``cached_predictor`` in the worker with a stand-in
  that does what that predictor did on the host (pad the batch to the fixed size, convert to
  float32 with ``wsi_seg.stages.models.preprocess``), then holds the same device lock for ``S`` per
  batch and returns zeros.

Usage::

    # one design, one S (prints one JSON line per run)
    PYTHONPATH=/tmp/wt0 .venv/bin/python benchmarks/simulated_device.py one --batch-s 0.3 \\
        --batch-size 32 SLIDE.svs ...
    # both designs on the same slides: the CPU side of each measured first (S = 1 ms), then
    # S = --margin x the slower CPU side, runs interleaved; writes OUT/simulated_device.json/.md
    .venv/bin/python benchmarks/simulated_device.py compare --old /tmp/wt0 --new /tmp/wtc \\
        --out benchmarks/results/sim SLIDE.svs ...

The old tree is a worktree of the commit (``git worktree add /tmp/wt0 a051260``); both trees
run with this virtualenv's packages.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

TINY_S = 0.001
POLL_S = 0.01


# -- the old design's stand-in predictor (runs in the worker) ----------------------------------
class StandInDevice:
    """One simulated device per worker process: a lock held ``seconds`` per batch."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.lock = threading.Lock()
        self.stats_lock = threading.Lock()
        self.busy_s = 0.0
        self.batches = 0
        self.windows = 0
        self.padded = 0
        self.predictors: dict[tuple[str, Any], StandInPredictor] = {}

    def compute(self, n: int, batch: int) -> None:
        with self.lock:
            t = time.perf_counter()
            time.sleep(self.seconds)
            dt = time.perf_counter() - t
        with self.stats_lock:
            self.busy_s += dt
            self.batches += 1
            self.windows += n
            self.padded += batch - n

    def stats(self) -> dict[str, Any]:
        with self.stats_lock:
            return {"batches": self.batches, "windows": self.windows,
                    "padded_slots": self.padded, "device_busy_s": self.busy_s}


class StandInPredictor:
    """The old ``Predictor`` contract (``predict(tiles) -> probabilities``), no model."""

    device = "simulated:0"

    def __init__(self, dev: StandInDevice, model_path: Any, batch_size: int) -> None:
        from wsi_seg.stages.card import bundled_model_path, read_card

        self.dev = dev
        self.card = read_card(Path(model_path) if model_path else bundled_model_path("unet"))
        self._batch = batch_size

    @property
    def roi_px(self) -> int:
        return int(self.card.input_size_px)

    @property
    def batch_size(self) -> int:
        return self._batch

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        from wsi_seg.stages.models import preprocess

        n, roi, bs = len(tiles), self.roi_px, self._batch
        for i in range(0, n, bs):
            chunk = tiles[i : i + bs]
            batch = np.full((bs, *tiles.shape[1:]), 255, np.uint8)  # the old fixed shape
            batch[: len(chunk)] = chunk
            preprocess(batch, self.card)  # the old host-side float32 input
            self.dev.compute(len(chunk), bs)
        out = np.zeros((n, roi, roi), np.float32)
        if self.card.kind == "unet":
            return out
        return np.broadcast_to(np.zeros((n, 1, 1), np.float32), (n, roi, roi))


class StandInPlugin(WorkerPlugin):
    """Replaces the worker's ``cached_predictor`` (old design) with the stand-in."""

    name = "bench-simulated-device"

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def setup(self, worker: Any = None) -> None:
        import wsi_seg.orchestration.pipeline
        import wsi_seg.stages.infer

        dev = StandInDevice(self.seconds)

        def cached_predictor(model_path: Any, config: Any) -> StandInPredictor:
            key = (str(model_path), config)
            with dev.stats_lock:
                pred = dev.predictors.get(key)
                if pred is None:
                    pred = dev.predictors[key] = StandInPredictor(dev, model_path,
                                                                  config.batch_size)
            return pred

        setattr(wsi_seg.orchestration.pipeline, "cached_predictor", cached_predictor)  # noqa: B010
        setattr(wsi_seg.stages.infer, "cached_predictor", cached_predictor)  # noqa: B010
        setattr(wsi_seg.orchestration.pipeline, "_bench_standin", dev)  # noqa: B010


def collect() -> dict[str, Any]:
    """Device statistics of this worker (either design)."""
    pipe = sys.modules.get("wsi_seg.orchestration.pipeline")
    dev = getattr(pipe, "_bench_standin", None)
    if dev is not None:
        return dict(dev.stats())
    from wsi_seg.stages.infer import cached_predictors

    tot = {"batches": 0, "windows": 0, "padded_slots": 0, "device_busy_s": 0.0}
    for p in cached_predictors():
        s = p.stats()
        tot["batches"] += s.batches
        tot["windows"] += s.windows
        tot["padded_slots"] += s.padded_slots
        tot["device_busy_s"] += s.device_busy_s or 0.0
    return tot


def poll_start(period_s: float) -> bool:
    """Sample this worker's device totals every ``period_s`` until :func:`poll_stop`."""
    import wsi_seg.orchestration.pipeline

    stop = threading.Event()
    samples: list[tuple[float, float, int, int]] = []

    def snap() -> None:
        s = collect()
        samples.append((time.perf_counter(), s["device_busy_s"], s["batches"], s["windows"]))

    def loop() -> None:
        while not stop.wait(period_s):
            snap()

    snap()
    th = threading.Thread(target=loop, daemon=True)
    th.start()
    setattr(wsi_seg.orchestration.pipeline, "_bench_poll", (stop, th, samples, snap))  # noqa: B010
    return True


def poll_stop() -> list[tuple[float, float, int, int]]:
    stop, th, samples, snap = sys.modules["wsi_seg.orchestration.pipeline"]._bench_poll
    stop.set()
    th.join()
    snap()
    return list(samples)


def blocks_busy(timeline: list[tuple[float, float, int, int]], preds: int) -> dict[str, Any]:
    """Device busy seconds and batches of the blocks phase, from one worker's timeline of
    ``(time, busy s, batches, windows)``: the warm-up sends single windows before any block
    starts (the runner waits for it), so the blocks' work is what came after the last sample
    at which no more than the warm-up windows (``windows - preds`` of them) were done; a
    warm-up window that shared a batch with block windows counts with the blocks, as that
    batch ran in the blocks phase."""
    first, last = timeline[0], timeline[-1]
    warm = last[3] - first[3] - preds
    at = [x for x in timeline if x[3] - first[3] <= warm][-1]
    # Batches and windows are counted together when a batch completes; the device's busy
    # clock may tick a moment earlier, so busy time is taken per batch, not from the sample.
    batches, busy = last[2] - first[2], last[1] - first[1]
    block = last[2] - at[2]
    return {"busy_s": busy * block / batches if batches else 0.0, "batches": block,
            "warm_windows": warm, "method": "timeline"}


# -- one design -------------------------------------------------------------------------------
def new_design() -> bool:
    from wsi_seg.stages.infer import InferConfig

    return "simulate_batch_s" in {f.name for f in fields(InferConfig)}


def git_rev(path: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def measure(slides: list[Path], seconds: float, batch: int, threads: int, repeats: int,
            model: Path | None, scratch: Path) -> list[dict[str, Any]]:
    """``repeats`` runs of the slides on one fresh one-worker cluster; a record per run."""
    from distributed import Client, LocalCluster

    import wsi_seg
    from wsi_seg.orchestration.cluster import ClusterConfig
    from wsi_seg.orchestration.pipeline import RunConfig
    from wsi_seg.orchestration.runner import run_slides
    from wsi_seg.stages.infer import InferConfig

    new = new_design()
    kw: dict[str, Any] = {"simulate_batch_s": seconds} if new else {}
    infer = InferConfig(batch_size=batch, **kw)
    tree = Path(wsi_seg.__file__).resolve().parents[1]
    cluster = LocalCluster(n_workers=1, threads_per_worker=threads, processes=True,
                           host="127.0.0.1", dashboard_address=None, silence_logs=50)
    client = Client(cluster)
    out: list[dict[str, Any]] = []
    try:
        if not new:
            client.register_plugin(StandInPlugin(seconds))
        for _ in range(repeats):
            run_dir = scratch / "run"
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = RunConfig(out_dir=run_dir, model_path=model, infer=infer, overwrite=True)
            client.run(poll_start, POLL_S)
            load0 = os.getloadavg()[0]
            t0 = time.perf_counter()
            try:
                result = run_slides(slides, cfg,
                                    ClusterConfig(scheduler=cluster.scheduler_address),
                                    quiet=True)
                wall = time.perf_counter() - t0
            finally:
                timeline = next(iter(client.run(poll_stop).values()))
            if not result.ok:
                raise SystemExit(f"run failed: {result.slides}")
            run = json.loads((run_dir / "run.json").read_text())
            ok = [s for s in run["slides"] if s["status"] == "ok"]
            preds = sum(json.loads(Path(s["report"]).read_text())["tile_predictions"]
                        for s in ok)
            # The blocks phase: its own key since 58300ab, the slide's wall_s before.
            blocks = max(s.get("blocks_wall_s") or s["wall_s"] for s in ok)
            b = blocks_busy(timeline, preds)
            busy, block_batches = b["busy_s"], b["batches"]
            out.append({
                "design": "new" if new else "old", "tree": str(tree), "rev": git_rev(tree),
                "batch_s": seconds, "batch_size": batch, "threads": threads,
                "tiles": run["tiles"], "tile_predictions": preds, "wall_s": round(wall, 3),
                "blocks_wall_s": blocks, "tiles_per_s": round(run["tiles"] / wall, 2),
                "blocks_tiles_per_s": round(run["tiles"] / blocks, 2),
                "batches": block_batches, "warm_windows": b["warm_windows"],
                "busy_method": b["method"],
                # Windows per batch slot in the blocks phase.
                "fill": round(preds / (block_batches * batch), 4) if block_batches else None,
                "device_busy_s": round(busy, 3), "busy_share": round(busy / blocks, 4),
                # The device time the windows need in full batches / the blocks phase: what
                # the busy share would be without padded slots.
                "work_share": round(preds / batch * seconds / blocks, 4),
                "cpu_side_s_per_batch": round(blocks * batch / preds, 4),
                "load_avg": [round(load0, 2), round(os.getloadavg()[0], 2)],
            })
    finally:
        client.close()
        cluster.close()
    return out


def cmd_one(args: argparse.Namespace) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="wsi-seg-simdev-"))
    try:
        for rec in measure(args.slides, args.batch_s, args.batch_size, args.threads,
                           args.repeats, args.model, scratch):
            print(json.dumps(rec), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


# -- both designs -----------------------------------------------------------------------------
def child(tree: Path, args: argparse.Namespace, seconds: float) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    cmd = [sys.executable, __file__, "one", "--batch-s", str(seconds), "--batch-size",
           str(args.batch_size), "--threads", str(args.threads), "--repeats", "1",
           *(["--model", str(args.model)] if args.model else []), *map(str, args.slides)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout,
                          check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        raise SystemExit(f"{tree}: exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    rec: dict[str, Any] = json.loads(lines[-1])
    return rec


def med(vals: list[float]) -> str:
    if not vals:
        return "n/a"
    m = statistics.median(vals)
    return f"{m:.3f} ({min(vals):.3f}–{max(vals):.3f})" if len(vals) > 1 else f"{m:.3f}"


def cmd_compare(args: argparse.Namespace) -> int:
    trees = {"old": Path(args.old).resolve(), "new": Path(args.new).resolve()}
    record: dict[str, Any] = {
        "what": "simulated device busy share, old vs new design",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": len(os.sched_getaffinity(0)), "slides": [str(s) for s in args.slides],
        "batch_size": args.batch_size, "threads": args.threads, "margin": args.margin,
        "trees": {k: {"path": str(v), "rev": git_rev(v)} for k, v in trees.items()},
        "calibration": {}, "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        (args.out / "simulated_device.json").write_text(json.dumps(record, indent=2) + "\n")
        (args.out / "simulated_device.md").write_text(table(record))

    seconds = args.batch_s
    if seconds is None:
        for name, tree in trees.items():
            print(f"calibrating {name} design ({tree}): S = {TINY_S} s", file=sys.stderr)
            record["calibration"][name] = child(tree, args, TINY_S)
            save()
        cpu = max(c["cpu_side_s_per_batch"] for c in record["calibration"].values())
        seconds = round(args.margin * cpu, 4)
    record["batch_s"] = seconds
    for r in range(args.repeats):
        order = list(trees.items())
        order = order[r % 2 :] + order[: r % 2]
        for name, tree in order:
            print(f"round {r + 1}/{args.repeats}: {name} design, S = {seconds} s",
                  file=sys.stderr)
            record["runs"].append(child(tree, args, seconds))
            save()
    print(table(record), end="")
    return 0


def table(record: dict[str, Any]) -> str:
    lines = [f"Simulated device, S = {record.get('batch_s')} s per batch of "
             f"{record['batch_size']} windows, 1 worker x {record['threads']} task threads, "
             f"{record['cores']} cores, {record['date']}; slides: "
             + ", ".join(Path(s).name for s in record["slides"]) + ".", ""]
    cal = record.get("calibration") or {}
    if cal:
        lines.append("CPU side (S = 1 ms): " + "; ".join(
            f"{k} {v['blocks_wall_s']:.2f} s blocks phase = {v['cpu_side_s_per_batch']} s per "
            f"batch" for k, v in cal.items()) + f"; S = {record['margin']} x the slower.")
        lines.append("")
    lines += ["| design | rev | runs | device busy share | work share | blocks-phase tiles/s | "
              "e2e tiles/s | batches | fill | blocks phase s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("old", "new"):
        runs = [r for r in record["runs"] if r["design"] == name]
        if not runs:
            continue
        lines.append(
            f"| {name} | {runs[0]['rev']} | {len(runs)} | "
            f"{med([r['busy_share'] for r in runs])} | "
            f"{med([r['work_share'] for r in runs if 'work_share' in r])} | "
            f"{med([r['blocks_tiles_per_s'] for r in runs])} | "
            f"{med([r['tiles_per_s'] for r in runs])} | {runs[0]['batches']} | "
            f"{runs[0]['fill']} | {med([r['blocks_wall_s'] for r in runs])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("one", "compare"):
        s = sub.add_parser(name)
        s.add_argument("slides", nargs="+", type=Path)
        s.add_argument("--batch-size", type=int, default=32)
        s.add_argument("--threads", type=int, default=max(2, len(os.sched_getaffinity(0))))
        s.add_argument("--repeats", type=int, default=1 if name == "one" else 3)
        s.add_argument("--model", type=Path, default=None,
                       help="model file (only its card is read) [bundled UNet]")
    one, cmp_ = sub.choices["one"], sub.choices["compare"]
    one.add_argument("--batch-s", type=float, required=True)
    cmp_.add_argument("--batch-s", type=float, default=None,
                      help="device seconds per batch [calibrated: --margin x the slower CPU "
                      "side]")
    cmp_.add_argument("--old", type=Path, required=True, help="checkout of the old design")
    cmp_.add_argument("--new", type=Path, required=True, help="checkout of the new design")
    cmp_.add_argument("--margin", type=float, default=1.5)
    cmp_.add_argument("--out", type=Path, required=True)
    cmp_.add_argument("--timeout", type=float, default=1800, help="per child run, seconds")
    args = p.parse_args(argv)
    return cmd_one(args) if args.cmd == "one" else cmd_compare(args)


if __name__ == "__main__":
    sys.exit(main())
