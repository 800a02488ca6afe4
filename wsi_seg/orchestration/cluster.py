"""Where the block tasks run: a local Dask cluster by default, or an existing one by address.

* ``scheduler=None``: a local cluster of worker **processes** on this machine, listening on
  localhost only. On a GPU workstation there is one worker per GPU, pinned to its card by
  ``CUDA_VISIBLE_DEVICES`` (dask-cuda's convention: the worker sees its card as device 0),
  declaring the worker resource ``GPU=1`` and running one task thread more than the
  machine has cores per card: many blocks are read, cut and blended at once while the
  worker's one predictor (:class:`wsi_seg.stages.infer.Predictor`) batches their windows on the
  card.
  On a CPU machine the cores are shared between workers and TensorFlow's thread pools are sized
  to match.
* ``scheduler="tcp://host:port"``: an existing dask.distributed cluster (``dask scheduler`` +
  ``dask worker``, dask-jobqueue, Kubernetes). Workers must see the same paths (slides, model,
  output folder). Start one worker process per GPU, each with its own card, e.g.
  ``CUDA_VISIBLE_DEVICES=1 dask worker ADDR --nthreads 16 --resources GPU=1``, and pass
  ``--gpu-resource`` so block tasks go only to GPU workers. A block asks for
  :data:`BLOCK_GPU_SHARE` of a card, so a card's worker runs many blocks at once.

Every worker loads the model when it starts, through :class:`ModelPlugin`, so workers that join
later are warmed too, and the model never travels with a task.
* ``scheduler="threads"``: workers as threads in this process (no start-up cost; for small
  jobs, debugging and tests).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from wsi_seg.core.errors import WsiSegError
from wsi_seg.core.params import Limits, Rule, check_params, param

log = logging.getLogger(__name__)


def scheduler_problem(value: str) -> str | None:
    """What is wrong with a scheduler address, or None (``threads``, or ``tcp://HOST:PORT``)."""
    if not value.strip() or any(c.isspace() for c in value):
        return "must be 'threads' or a scheduler address such as tcp://HOST:8786"
    return None


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

    scheduler: str | None = param(None, Rule("str", check=scheduler_problem))
    workers: int | None = param(None, Rule("int", Limits(1, 1024)))
    threads_per_worker: int | None = param(None, Rule("int", Limits(1, 1024)))
    gpu_resource: bool | None = param(None, Rule("bool"))
    dashboard: bool = param(True, Rule("bool"))

    def __post_init__(self) -> None:
        check_params(self)


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


#: The share of a worker's ``GPU`` resource one block task asks for: a power of two (exact in
#: floating point), small enough that a card's worker runs as many blocks as it has threads.
#: The resource only routes blocks to GPU workers; the predictor, not the resource, owns the card.
BLOCK_GPU_SHARE = 1 / 64


@dataclass(frozen=True)
class WorkerPlan:
    """The sizing of a local cluster."""

    workers: int
    threads_per_worker: int
    tf_threads: int
    gpus: int


def device_worker_threads(cores: int) -> int:
    """Task threads of a worker that feeds one device: one more than its cores, at least 3.

    Blocks end together now and then, each blending and writing its last rows while queuing
    nothing; with as many threads as cores the device then waits (a simulated device on two
    cores was busy 82-87 % of the blocks phase with two threads, 96 % with three). The extra
    thread mostly waits for predictions, so it costs memory (one block), not cores.
    """
    return max(3, cores + 1)


def plan_local_workers(config: ClusterConfig, cpus: int | None = None, gpus: int | None = None
                       ) -> WorkerPlan:
    """Size a local cluster: one worker per GPU, else one per two cores (at least one).

    A GPU worker runs one task thread more than it has cores per card
    (:func:`device_worker_threads`): its blocks read, cut, blend and write on the CPU while
    its predictor keeps the card busy. A
    CPU worker runs two task threads, so blocks are read and blended while the model computes,
    and TensorFlow gets the worker's share of the cores for its intra-op pool.
    """
    cpus = cpu_count() if cpus is None else cpus
    gpus = local_gpu_count() if gpus is None else gpus
    workers = config.workers or (gpus if gpus else max(1, cpus // 2))
    per_worker = max(1, cpus // workers)
    threads = config.threads_per_worker or (device_worker_threads(per_worker) if gpus else 2)
    return WorkerPlan(workers, threads, per_worker, gpus)


def visible_gpus(count: int) -> list[str]:
    """The card ids local workers are pinned to: those ``CUDA_VISIBLE_DEVICES`` already lists
    (a user may reserve cards for us), else ``0 .. count-1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [c.strip() for c in listed.split(",") if c.strip()][:count]
    return [str(i) for i in range(count)]


def worker_specs(plan: WorkerPlan, silence: int) -> dict[str, dict[str, Any]]:
    """Local worker processes (Nannies on localhost), each GPU worker pinned to one card."""
    from distributed import Nanny

    cards = visible_gpus(plan.gpus) if plan.gpus else []
    specs: dict[str, dict[str, Any]] = {}
    for i in range(plan.workers):
        options: dict[str, Any] = {"nthreads": plan.threads_per_worker, "host": "127.0.0.1",
                                   "silence_logs": silence}
        if cards:
            # Workers beyond the cards (an explicit --workers) share them round-robin.
            options["env"] = {"CUDA_VISIBLE_DEVICES": cards[i % len(cards)]}
            options["resources"] = {"GPU": 1}
        specs[f"wsi-seg-{i}"] = {"cls": Nanny, "options": options}
    return specs


class ModelPlugin(WorkerPlugin):
    """Worker state: loads the model on every worker, including workers that join later.

    ``setup`` starts the load in a background thread and returns at once, so the worker keeps
    answering the scheduler while the framework imports and the model compiles; block tasks
    that arrive early wait for the same load (:func:`wsi_seg.stages.infer.cached_predictor`).
    Registered with ``client.register_plugin``.
    """

    name = "wsi-seg-model"

    def __init__(self, model_path: Any, infer: Any) -> None:
        self.model_path = model_path
        self.infer = infer

    def setup(self, worker: Any = None) -> None:
        def load() -> None:
            from wsi_seg.stages.infer import warm_predictor

            try:
                warm_predictor(self.model_path, self.infer)
            except Exception as exc:  # the warm-up task reports it in one line
                log.debug("model warm-up failed: %s", exc)

        threading.Thread(target=load, daemon=True, name="wsi-seg-warm-up").start()




def start_local_cluster(config: ClusterConfig, plan: WorkerPlan) -> Any:
    """A local cluster sized by ``plan``: worker processes (GPU workers pinned to their
    cards), or one thread worker in this process for ``scheduler="threads"``."""
    from distributed import LocalCluster, Scheduler, SpecCluster

    silence = logging.DEBUG if os.environ.get("WSI_SEG_DEBUG") else logging.CRITICAL
    cluster: Any
    if config.scheduler == "threads":
        # Workers as threads in this process: no start-up cost, no GPU pinning.
        cluster = LocalCluster(n_workers=1, threads_per_worker=plan.threads_per_worker,
                               processes=False,
                               dashboard_address="127.0.0.1:0" if config.dashboard else None,
                               silence_logs=silence)
        if not os.environ.get("WSI_SEG_DEBUG"):
            logging.getLogger("distributed.worker").setLevel(logging.CRITICAL)
    else:
        # Processes listen on localhost only (never on the network by accident). Task failures
        # are caught and reported per slide in one line; distributed's own tracebacks for them
        # would only bury that line (WSI_SEG_DEBUG=1 shows them).
        import dask

        # distributed's Nanny sets MALLOC_TRIM_THRESHOLD_ in its workers (to hand freed memory
        # back to the OS); setting it also freezes glibc's mmap threshold, so every array over
        # 128 KiB is a fresh mmap with page faults. Tracing a noisy map's polygons took 4.2-4.9 s
        # in such a worker against 3.5-3.6 s without it. Our tasks hold bounded, block-sized
        # arrays, so the default allocator is kept.
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_":
                              None}):
            cluster = SpecCluster(
                workers=worker_specs(plan, silence),
                scheduler={"cls": Scheduler, "options": {
                    "host": "127.0.0.1", "dashboard": config.dashboard,
                    "dashboard_address": "127.0.0.1:0"}},
                silence_logs=silence,
            )
    return cluster


#: Seconds a scheduler's address may take to accept a connection and greet.
PROBE_TIMEOUT_S = 10.0


def probe_scheduler(address: str, timeout_s: float | None = None) -> None:
    """WsiSegError in one line unless ``tcp://HOST:PORT`` greets like a Dask scheduler.

    A Dask comm sends its handshake as soon as it accepts a connection: an 8-byte length,
    an 8-byte frame count, then the frames. Reading those 16 bytes with a deadline, before
    distributed's client does, tells apart what is not a scheduler without trusting it: a
    server that accepts and stays silent (an HTTP server waits for a request) and one that
    answers with other bytes. distributed's own client would wait, or take those bytes for a
    frame length and try to allocate exabytes. Other schemes (``tls://``, ...) are left to the
    client.
    """
    import socket
    import struct
    from urllib.parse import urlsplit

    if not address.startswith("tcp://"):
        return
    timeout_s = PROBE_TIMEOUT_S if timeout_s is None else timeout_s
    url = urlsplit(address)
    if url.hostname is None or url.port is None:
        raise WsiSegError("a scheduler address is tcp://HOST:PORT", address)
    try:
        with socket.create_connection((url.hostname, url.port), timeout=timeout_s) as sock:
            sock.settimeout(timeout_s)
            head = b""
            while len(head) < 16:
                data = sock.recv(16 - len(head))
                if not data:
                    raise WsiSegError("closed the connection without a word: not a Dask "
                                      "scheduler", address)
                head += data
    except TimeoutError:
        raise WsiSegError(f"accepts connections but said nothing in {timeout_s:g} s: not a "
                          "Dask scheduler (an HTTP or other server?)", address) from None
    except OSError as exc:
        raise WsiSegError(f"cannot reach the Dask scheduler ({exc.strerror or exc})",
                          address) from None
    total, n_frames = struct.unpack("<QQ", head)
    if not (0 < total < (1 << 20) and 0 < n_frames < 64):
        shown = head[:12].decode("ascii", "replace")
        raise WsiSegError(f"answers, but not in Dask's protocol (first bytes {shown!r}): not "
                          "a Dask scheduler", address)


@contextmanager
def connect(config: ClusterConfig) -> Iterator[tuple[object, WorkerPlan | None]]:
    """Yield ``(client, plan)``: a dask.distributed Client and the local sizing (None remote).

    A local cluster is shut down on exit; a remote one is only disconnected from.
    """
    from distributed import Client

    if config.scheduler and config.scheduler not in ("threads", "local"):
        probe_scheduler(config.scheduler)
        try:
            client = Client(config.scheduler, timeout="20s")
        except Exception as exc:  # distributed's own errors are many kinds: one line each
            cause = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise WsiSegError(f"cannot connect to the Dask scheduler ({cause})",
                              config.scheduler) from None
        try:
            yield client, None
        finally:
            client.close()
        return
    plan = plan_local_workers(config)
    try:
        cluster = start_local_cluster(config, plan)
    except (RuntimeError, OSError, TimeoutError) as exc:
        # A worker killed while starting (out of memory, say): one line, not a traceback.
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise WsiSegError(f"could not start the local Dask workers ({cause})") from None
    client = Client(cluster)
    try:
        yield client, plan
    finally:
        client.close()
        cluster.close()
