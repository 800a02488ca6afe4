"""Peak memory of one end-to-end run, in a fresh Python process with a fresh cluster (so the
peaks are this slide's, not an earlier one's)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from wsi_seg.core.errors import WsiSegError
from wsi_seg.tools.bench import worker
from wsi_seg.tools.bench.cluster import cluster_session, warm
from wsi_seg.tools.bench.config import PROFILES, BenchConfig
from wsi_seg.tools.bench.machine import mib, peak_rss_bytes
from wsi_seg.tools.bench.standard_measures import measure_e2e, run_config


def run_memory_child(args: dict[str, Any]) -> dict[str, Any]:
    """One e2e run in a fresh Python process; the peak RSS (MiB) of its workers and of itself.

    ``args``: the slide record, the model ``kind`` and its ``model`` path, the scratch ``out``
    folder, the ``truth`` folder, ``workers`` and ``threads_per_worker``."""
    code = ("import sys; from wsi_seg.tools.bench.memory import _memory_child; "
            "_memory_child(sys.argv[1])")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                          text=True, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise WsiSegError(f"memory run failed (exit {proc.returncode}): {tail[:400]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def _memory_child(arg: str) -> None:
    args = json.loads(arg)
    kind = args["kind"]
    cfg = BenchConfig(out_dir=Path(args["out"]), cache_dir=Path(args["truth"]),
                      model_paths={kind: Path(args["model"])})
    with cluster_session(args["workers"], args["threads_per_worker"]) as bench:
        infer = bench.infer(PROFILES[kind].batch_size)
        rc = run_config(cfg, kind, Path(args["out"]), infer, Path(args["truth"]))
        warm(bench, cfg.model_path(kind), infer)
        after_warm = bench.client.run(worker.memory)
        e2e = measure_e2e(bench, args["slide"], rc)
        peaks = bench.client.run(worker.memory)
    shutil.rmtree(args["out"], ignore_errors=True)
    print(json.dumps({
        "model": kind, "size_px": args["slide"]["size_px"], "tiles": e2e["tiles"],
        "workers": len(peaks), "wall_s": round(e2e["wall_s"], 2),
        "tiles_per_s": round(e2e["tiles_per_s"], 2),
        "worker_peak_rss_mib": [mib(v["peak_rss"]) for v in peaks.values()],
        "worker_rss_after_warm_mib": [mib(v["rss"]) for v in after_warm.values()],
        "client_peak_rss_mib": mib(peak_rss_bytes()),
    }), flush=True)
