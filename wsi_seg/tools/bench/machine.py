"""The machine a record was measured on, and a process's memory (RSS), through psutil."""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_seg import __version__

#: Environment variables that change TensorFlow's or OpenMP's speed, recorded with the machine.
ENV_PREFIXES = ("TF_ENABLE_", "TF_CPP_", "TF_NUM_", "TF_XLA_", "TF_GPU_", "TF_FORCE_",
                "TF_INTRA_", "TF_INTER_", "OMP_", "KMP_", "MKL_", "CUDA_VISIBLE_DEVICES")


def _cpu_model() -> str:
    """The CPU's model name (psutil has none: Linux's ``/proc/cpuinfo``, else platform's)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def nvidia_gpus() -> list[str]:
    """GPU names from ``nvidia-smi -L`` (empty without NVIDIA GPUs)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10,
                             check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]


def _git_commit() -> str | None:
    repo = Path(__file__).resolve().parents[3]  # wsi_seg/tools/bench/machine.py
    if not (repo / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def machine_info() -> dict[str, Any]:
    """The machine and software a record was measured on (RAM in GiB)."""
    import psutil

    from wsi_seg.orchestration.cluster import cpu_count
    from wsi_seg.orchestration.runner import versions

    total = psutil.virtual_memory().total
    return {
        "date": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cores": cpu_count(),
        "cores_total": os.cpu_count(),
        "ram_gib": round(total / 2**30, 1) if total else None,
        "gpus": nvidia_gpus(),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "wsi_seg_version": __version__,
        "git_commit": _git_commit(),
        "versions": versions(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIXES)},
    }


def backend_versions() -> dict[str, Any]:
    """The Keras backend and the versions of the frameworks installed."""
    import importlib.metadata as md

    from wsi_seg.stages.backends import keras_backend

    out: dict[str, Any] = {"keras_backend": keras_backend()}
    for pkg in ("jax", "jaxlib", "torch", "tensorflow", "keras"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def load_1min() -> float:
    """The 1-minute load average, to 2 decimals."""
    return round(os.getloadavg()[0], 2)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process since start, bytes."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kb) * (1 if sys.platform == "darwin" else 1024)  # macOS counts bytes


def rss_bytes() -> int:
    """Resident set size of this process now, bytes."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def mib(n: float | int | None) -> float | None:
    """Bytes as MiB to 0.1."""
    return None if n is None else round(n / 2**20, 1)
