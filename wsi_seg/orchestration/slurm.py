"""Workers as SLURM jobs, through dask-jobqueue's ``SLURMCluster``.

The scheduler runs in the client's process (on the login node); each SLURM job runs one
``dask worker`` process per GPU it asks for (one process when it asks for none), each pinned
to its own card by :func:`dask_setup` (a ``--preload-nanny``), declaring ``GPU=1`` as the
local cluster's GPU workers do. The cluster adapts between one job and ``slurm_jobs`` jobs to
the blocks waiting, and every job is cancelled when the run ends.

A job that ends (its walltime, ``scancel``, a node lost) takes only its in-flight blocks with
it: the scheduler gives them to the other workers, finished blocks are on disk (a rerun
resumes from them), and the adaptive loop submits a job in its place while work is left.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
from typing import TYPE_CHECKING, Any

from wsi_seg.core.errors import WsiSegError

if TYPE_CHECKING:
    from wsi_seg.orchestration.cluster import ClusterConfig, WorkerPlan

#: SLURM's time formats: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS.
_WALLTIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")


def walltime_problem(value: str) -> str | None:
    """What is wrong with a SLURM walltime, or None."""
    if not _WALLTIME.match(value.strip()):
        return "must be a SLURM time limit: MINUTES, HH:MM:SS or D-HH:MM:SS"
    return None


def walltime_s(value: str) -> int:
    """Seconds of a SLURM time limit (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM``,
    ``D-HH:MM:SS``, as sbatch reads them).

    >>> [walltime_s(v) for v in ("30", "30:15", "04:00:00", "1-12", "1-12:30", "2-00:00:05")]
    [1800, 1815, 14400, 129600, 131400, 172805]
    """
    value = value.strip()
    days, _, rest = value.rpartition("-")
    parts = [int(x) for x in rest.split(":")]
    if days:  # after a day count: hours, then minutes and seconds
        h, m, sec = [*parts, 0, 0][:3]
        return ((int(days) * 24 + h) * 60 + m) * 60 + sec
    if len(parts) == 3:
        return (parts[0] * 60 + parts[1]) * 60 + parts[2]
    return parts[0] * 60 + (parts[1] if len(parts) == 2 else 0)


def lifetime_args(walltime: str | None) -> list[str]:
    """Worker arguments that retire a job's workers before SLURM kills it at its walltime:
    the scheduler then moves their queued blocks to the others and the cluster submits a
    fresh job, instead of the blocks being lost at the kill. The margin is 5 % of the
    walltime (at least 2 min, at most 15), staggered by as much again so that jobs started
    together do not all leave at once."""
    if walltime is None or walltime_problem(walltime):
        return []
    total = walltime_s(walltime)
    margin = min(900, max(120, total // 20))
    if total <= 2 * margin:
        return []  # too short to leave early and still do work
    return ["--lifetime", f"{total - 2 * margin}s", "--lifetime-stagger", f"{margin}s"]


def memory_problem(value: str) -> str | None:
    """What is wrong with a job's memory (``16GB``, ``64 GiB``), or None."""
    from dask.utils import parse_bytes

    try:
        size_bytes = parse_bytes(value)
    except (ValueError, TypeError):
        return "must be a size such as 16GB or 64GiB"
    return None if size_bytes > 0 else "must be more than 0 bytes"


def threads_per_slurm_worker(config: ClusterConfig) -> int:
    """Task threads of each worker process of a job: its share of the job's cores, and, for a
    GPU worker, one more (:func:`~wsi_seg.orchestration.cluster.device_worker_threads`)."""
    from wsi_seg.orchestration.cluster import device_worker_threads

    if config.threads_per_worker:
        return config.threads_per_worker
    per_worker = max(1, config.slurm_cores // max(1, config.slurm_gpus))
    return device_worker_threads(per_worker) if config.slurm_gpus else max(2, per_worker)


def slurm_plan(config: ClusterConfig) -> WorkerPlan:
    """The sizing at full scale (``slurm_jobs`` jobs): what run.json and the start line say."""
    from wsi_seg.orchestration.cluster import WorkerPlan

    per_job = max(1, config.slurm_gpus)
    return WorkerPlan(workers=config.slurm_jobs * per_job,
                      threads_per_worker=threads_per_slurm_worker(config),
                      tf_threads=max(1, config.slurm_cores // per_job),
                      gpus=config.slurm_jobs * config.slurm_gpus)


def slurm_job_kwargs(config: ClusterConfig) -> dict[str, Any]:
    """The keyword arguments of ``dask_jobqueue.SLURMCluster`` for this configuration.

    ``cores`` there is the dask threads of a job (``processes`` workers sharing them), while
    ``job_cpu`` is what SLURM reserves (``--cpus-per-task``): a GPU worker runs a thread more
    than its cores (it mostly waits for the card), so the two differ.
    """
    processes = max(1, config.slurm_gpus)
    threads = threads_per_slurm_worker(config)
    worker_args = ["--preload-nanny", __name__, *lifetime_args(config.slurm_walltime)]
    directives: list[str] = []
    if config.slurm_gpus:
        worker_args += ["--resources", "GPU=1"]
        directives.append(f"--gres=gpu:{config.slurm_gpus}")
    kwargs: dict[str, Any] = {
        "cores": threads * processes,
        "job_cpu": config.slurm_cores,
        "processes": processes,
        "memory": config.slurm_memory,
        "walltime": config.slurm_walltime,
        "queue": config.slurm_queue,
        "account": config.slurm_account,
        "job_extra_directives": directives,
        "job_script_prologue": list(config.slurm_prologue),
        "worker_extra_args": worker_args,
        # The workers run this very interpreter (a shared filesystem, or the same path in the
        # container the prologue enters), so client and workers run the same versions.
        "python": sys.executable,
        "job_name": "wsi-seg",
        "interface": config.slurm_interface,
        # The dashboard listens on the login node's loopback (reach it through ssh -L), as
        # the local cluster's does; never on the network by accident.
        "scheduler_options": {"dashboard_address": "127.0.0.1:0" if config.dashboard
                              else None},
    }
    if config.slurm_log_dir is not None:
        kwargs["log_directory"] = str(config.slurm_log_dir)
    return kwargs


def start_slurm_cluster(config: ClusterConfig) -> Any:
    """A ``SLURMCluster`` with its first job submitted, adapting up to ``slurm_jobs`` jobs.

    The first job is submitted synchronously so that a refused submission (a wrong account or
    partition, a walltime over the partition's limit) is one line now, not a wait.
    """
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise WsiSegError("--cluster slurm needs dask-jobqueue: pip install "
                          "'wsi-seg[slurm]'") from None
    if shutil.which("sbatch") is None:
        raise WsiSegError("--cluster slurm: sbatch is not on PATH (run on a SLURM login node, "
                          "or load SLURM's module)")
    if config.slurm_log_dir is not None:
        config.slurm_log_dir.mkdir(parents=True, exist_ok=True)
    try:
        cluster = SLURMCluster(**slurm_job_kwargs(config))
    except (ValueError, OSError, RuntimeError) as exc:
        raise WsiSegError(f"--cluster slurm: cannot start the Dask scheduler ({_short(exc)})"
                          ) from None
    try:
        cluster.scale(jobs=1)
        cluster.adapt(minimum_jobs=1, maximum_jobs=config.slurm_jobs)
    except Exception as exc:  # sbatch's refusal, in whatever type the loop raises it
        cluster.close()
        raise WsiSegError(f"--cluster slurm: sbatch refused the worker job ({_short(exc)})"
                          ) from None
    return cluster


def _short(exc: BaseException) -> str:
    """An exception in one line of at most 300 characters (sbatch's stderr is multi-line)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


# -- on the worker job: the nanny preload -----------------------------------------------------

#: Nannies of this process pinned so far: the i-th nanny ``dask worker --nworkers N`` starts
#: gets the i-th card of the job.
_pinned = itertools.count()


def job_cards() -> list[str]:
    """The cards SLURM gave this job: ``CUDA_VISIBLE_DEVICES`` (what gres sets), else
    ``SLURM_JOB_GPUS``/``SLURM_STEP_GPUS``; empty when it has none."""
    for name in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
        listed = os.environ.get(name, "")
        cards = [c.strip() for c in listed.split(",") if c.strip()]
        if cards:
            return cards
    return []


def dask_setup(nanny: Any) -> None:
    """Nanny preload (``--preload-nanny wsi_seg.orchestration.slurm``): before the worker
    process spawns, pin it to one of the job's cards and keep glibc's allocator as the local
    cluster does (see :func:`wsi_seg.orchestration.cluster.start_local_cluster`)."""
    for env in (nanny.env, nanny.pre_spawn_env):
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    cards = job_cards()
    if cards:
        nanny.env["CUDA_VISIBLE_DEVICES"] = cards[next(_pinned) % len(cards)]
