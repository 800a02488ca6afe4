"""Where the block tasks run: a local Dask cluster by default, or an existing one by address.

* ``scheduler=None``: a ``LocalCluster`` of worker **processes** on this machine, listening on
  localhost only. On a GPU workstation there is one worker per GPU, each declaring the worker
  resource ``GPU=1`` so inference never oversubscribes a card; on a CPU machine the cores are
  shared between workers and TensorFlow's thread pools are sized to match.
* ``scheduler="tcp://host:port"``: an existing dask.distributed cluster (``dask scheduler`` +
  ``dask worker``, dask-jobqueue, Kubernetes). Workers must see the same paths (slides, model,
  output folder). Start GPU workers with ``--resources GPU=1`` and pass ``--gpu-resource``.
* ``scheduler="threads"``: workers as threads in this process (no start-up cost; for small
  jobs, debugging and tests).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from wsi_seg.errors import WsiSegError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterConfig:
    """How to get workers.

    Attributes:
        scheduler: None (local processes), ``threads`` or a scheduler address.
        workers: local worker processes (default: one per GPU, else one per two cores).
        threads_per_worker: task threads per worker (2 lets reading overlap prediction).
        gpu_resource: require the ``GPU`` worker resource for block tasks (default: when the
            local machine has GPUs; for a remote cluster, pass it explicitly).
        dashboard: serve the Dask dashboard (localhost only) for local clusters.
    """

    scheduler: str | None = None
    workers: int | None = None
    threads_per_worker: int | None = None
    gpu_resource: bool | None = None
    dashboard: bool = True


def cpu_count() -> int:
    """CPUs this process may use (respects affinity masks and containers' cpusets)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def local_gpu_count() -> int:
    """GPUs on this machine, asked of ``nvidia-smi`` (importing TensorFlow here would cost
    seconds in the client and grab the cards)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    exe = shutil.which("nvidia-smi")
    if not exe:
        return 0
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


@dataclass(frozen=True)
class WorkerPlan:
    """The sizing of a local cluster."""

    workers: int
    threads_per_worker: int
    tf_threads: int
    gpus: int


def plan_local_workers(config: ClusterConfig, cpus: int | None = None, gpus: int | None = None
                       ) -> WorkerPlan:
    """Size a local cluster: one worker per GPU, else one per two cores (at least one).

    Each worker runs two task threads, so one block is read while another is predicted, and
    TensorFlow gets the worker's share of the cores for its intra-op pool.
    """
    cpus = cpu_count() if cpus is None else cpus
    gpus = local_gpu_count() if gpus is None else gpus
    workers = config.workers or (gpus if gpus else max(1, cpus // 2))
    threads = config.threads_per_worker or 2
    tf_threads = max(1, cpus // workers)
    return WorkerPlan(workers, threads, tf_threads, gpus)


@contextmanager
def connect(config: ClusterConfig) -> Iterator[tuple[object, WorkerPlan | None]]:
    """Yield ``(client, plan)``: a dask.distributed Client and the local sizing (None remote).

    A local cluster is shut down on exit; a remote one is only disconnected from.
    """
    from distributed import Client, LocalCluster

    if config.scheduler and config.scheduler not in ("threads", "local"):
        try:
            client = Client(config.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise WsiSegError(f"cannot reach the Dask scheduler ({exc})",
                              config.scheduler) from None
        try:
            yield client, None
        finally:
            client.close()
        return
    plan = plan_local_workers(config)
    processes = config.scheduler != "threads"
    resources = {"GPU": 1} if plan.gpus and processes else None
    # Processes listen on localhost only (never on the network by accident); thread workers
    # talk in-process and take no host.
    network = {"host": "127.0.0.1"} if processes else {}
    cluster = LocalCluster(
        n_workers=plan.workers if processes else 1,
        threads_per_worker=plan.threads_per_worker,
        processes=processes,
        dashboard_address="127.0.0.1:0" if config.dashboard else None,
        resources=resources,
        # Task failures are caught and reported per slide in one line; distributed's own
        # tracebacks for them would only bury that line (WSI_SEG_DEBUG=1 shows them).
        silence_logs=logging.DEBUG if os.environ.get("WSI_SEG_DEBUG") else logging.CRITICAL,
        **network,
    )
    if not processes and not os.environ.get("WSI_SEG_DEBUG"):
        logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    client = Client(cluster)
    try:
        yield client, plan
    finally:
        client.close()
        cluster.close()
